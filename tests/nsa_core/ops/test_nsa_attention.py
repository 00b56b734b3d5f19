"""The composed operator: oracle parity, causality, varlen, gradients, dense limit, overrides."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nsa_core import NSAConfig, nsa_attention
from tests.nsa_core.ops import oracle

SMALL = NSAConfig(compress_block=8, compress_stride=8, select_block=8, num_selected=4, window=12)


def _inputs(B, T, HQ, HKV, D, dtype=torch.float64, requires_grad=False):
    tensors = (
        torch.randn(B, T, HQ, D, dtype=dtype),
        torch.randn(B, T, HKV, D, dtype=dtype),
        torch.randn(B, T, HKV, D, dtype=dtype),
        torch.rand(B, T, HQ, 3, dtype=dtype),
    )
    return tuple(t.requires_grad_(requires_grad) for t in tensors)


@pytest.mark.parametrize(
    ("G", "D", "T", "branches"),
    [
        pytest.param(1, 16, 63, ("cmp", "slc", "swd"), id="G1"),
        pytest.param(2, 64, 65, ("cmp", "slc", "swd"), id="G2"),
        pytest.param(4, 16, 1, ("cmp", "slc", "swd"), id="G4-T1"),
        pytest.param(7, 128, 90, ("cmp", "slc", "swd"), id="G7-D128"),
        pytest.param(8, 16, 77, ("slc",), id="G8-slc-only"),
        pytest.param(16, 16, 50, ("cmp", "swd"), id="G16-no-slc"),
    ],
)
def test_gated_output_matches_oracle(G, D, T, branches):
    config = SMALL.model_copy(update={"branches": branches})
    q, k, v, gates = _inputs(2, T, 2 * G, 2, D)
    o = nsa_attention(q, k, v, gates, config)
    expected = oracle.nsa_oracle(q, k, v, gates, 8, 8, 8, 4, 12, branches=branches)["o"]
    torch.testing.assert_close(o, expected, atol=1e-10, rtol=1e-9)


def test_aux_holds_branches_lse_indices_and_scores():
    q, k, v, gates = _inputs(1, 40, 14, 2, 16)
    o, aux = nsa_attention(q, k, v, gates, SMALL, return_aux=True)
    assert set(aux.outputs) == set(aux.lse) == {"cmp", "slc", "swd"}
    assert aux.block_indices.shape == (1, 40, 2, 4)
    assert aux.block_scores.shape == (1, 40, 2, 5)
    recombined = sum(gates[..., i, None] * aux.outputs[b] for i, b in enumerate(("cmp", "slc", "swd")))
    torch.testing.assert_close(o, recombined)


@pytest.mark.parametrize("t", [0, 7, 8, 31, 58])
def test_causality_future_tokens_do_not_change_the_past(t):
    T = 60
    q, k, v, gates = _inputs(1, T, 14, 2, 16)
    o, aux = nsa_attention(q, k, v, gates, SMALL, return_aux=True)
    q2, k2, v2, gates2 = (x.clone() for x in (q, k, v, gates))
    for x in (q2, k2, v2, gates2):
        x[:, t + 1 :] = torch.randn_like(x[:, t + 1 :]) * 5
    o2, aux2 = nsa_attention(q2, k2, v2, gates2, SMALL, return_aux=True)
    torch.testing.assert_close(o2[:, : t + 1], o[:, : t + 1], atol=1e-12, rtol=0)
    for branch in ("cmp", "slc", "swd"):
        torch.testing.assert_close(
            aux2.outputs[branch][:, : t + 1], aux.outputs[branch][:, : t + 1], atol=1e-12, rtol=0
        )
    assert torch.equal(aux2.block_indices[:, : t + 1], aux.block_indices[:, : t + 1])


def test_varlen_packed_equals_each_sequence_alone():
    lengths = [5, 0, 33, 64, 17]
    q, k, v, gates = _inputs(1, sum(lengths), 7, 1, 16)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    packed, aux = nsa_attention(q, k, v, gates, SMALL, cu_seqlens=cu_seqlens, return_aux=True)
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True):
        if start == end:
            continue
        alone, aux_alone = nsa_attention(
            q[:, start:end], k[:, start:end], v[:, start:end], gates[:, start:end], SMALL, return_aux=True
        )
        torch.testing.assert_close(packed[:, start:end], alone, atol=1e-12, rtol=0)
        assert torch.equal(aux.block_indices[:, start:end], aux_alone.block_indices)


@pytest.mark.parametrize("branches", [("cmp",), ("slc",), ("swd",), ("cmp", "slc", "swd")], ids="-".join)
def test_gradcheck_float64(branches):
    config = NSAConfig(compress_block=4, compress_stride=4, select_block=4, num_selected=3, window=5, branches=branches)
    q, k, v, gates = _inputs(1, 18, 4, 2, 8, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *xs: nsa_attention(*xs, config), (q, k, v, gates), atol=1e-7)


@pytest.mark.parametrize(("T", "G"), [pytest.param(33, 7, id="G7"), pytest.param(64, 1, id="G1")])
def test_window_covering_the_sequence_is_dense_causal_attention(T, G):
    config = NSAConfig(window=T, branches=("swd",))
    q, k, v, gates = _inputs(1, T, 2 * G, 2, 32)
    gates = torch.ones_like(gates)
    o = nsa_attention(q, k, v, gates, config)
    dense = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)
    torch.testing.assert_close(o, dense, atol=1e-12, rtol=1e-10)


def test_explicit_block_indices_override_the_selection():
    q, k, v, gates = _inputs(1, 48, 7, 1, 16)
    _, aux = nsa_attention(q, k, v, gates, SMALL, return_aux=True)
    same = nsa_attention(q, k, v, gates, SMALL, block_indices=aux.block_indices)
    torch.testing.assert_close(same, nsa_attention(q, k, v, gates, SMALL))
    only_first = torch.full_like(aux.block_indices, -1)
    only_first[..., 0] = 0
    config = SMALL.model_copy(update={"branches": ("slc",)})
    o, aux_forced = nsa_attention(q, k, v, gates, config, block_indices=only_first, return_aux=True)
    assert aux_forced.block_scores is None
    first_block_attention = F.scaled_dot_product_attention(
        q[:, :8].transpose(1, 2), k[:, :8].transpose(1, 2), v[:, :8].transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)
    torch.testing.assert_close(o[:, :8], gates[:, :8, :, 1, None] * first_block_attention)


def test_float32_and_bfloat16_inputs_keep_their_dtype():
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v, gates = _inputs(1, 20, 4, 2, 16, dtype=dtype)
        o = nsa_attention(q, k, v, gates, SMALL, backend="reference")
        assert o.dtype == dtype
        expected = nsa_attention(*(x.double() for x in (q, k, v, gates)), SMALL)
        torch.testing.assert_close(o.double(), expected, atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)

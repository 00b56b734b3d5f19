"""Hybrid attention against a per-sample brute-force reference: NSA on the vision subsequence, dense text rows.

Shape legend: B batch, TQ query rows, TK keys, HQ query heads, HKV KV heads (G = 7), D head dim, C hidden.
"""

from __future__ import annotations

import pytest
import torch

from nsa_core import NSAConfig, nsa_attention
from nsa_core.layers import NSAGate, TokenRouting, gather_text_rows, hybrid_attention, pack_vision

HQ, HKV, D, C = 14, 2, 16, 32
SMALL = NSAConfig(
    compress_block=4, compress_stride=4, select_block=4, num_selected=3, forced_initial=1, forced_local=1, window=6
)


def _reference(q, k, v, gate_input, gate, routing, config):
    """Loop over samples and rows: NSA over each sample's full vision subsequence, naive dense text rows."""
    B, TQ = q.shape[:2]
    TK = k.shape[1]
    offset = TK - TQ
    out = torch.zeros_like(q)
    valid = routing.valid
    for b in range(B):
        vis = (routing.key_is_vision[b] & valid[b]).nonzero().flatten().tolist()
        query_vis = [p for p in vis if p >= offset]
        if query_vis:
            qs = torch.zeros(len(vis), HQ, D, dtype=q.dtype)
            gs = torch.zeros(len(vis), HQ, 3, dtype=q.dtype)
            for i, p in enumerate(vis):
                if p >= offset:
                    qs[i] = q[b, p - offset]
                    gs[i] = gate(gate_input[b, p - offset])
            o = nsa_attention(qs[None], k[b, vis][None], v[b, vis][None], gs[None], config)[0]
            for i, p in enumerate(vis):
                if p >= offset:
                    out[b, p - offset] = o[i]
        for i in range(TQ):
            p = offset + i
            if routing.key_is_vision[b, p] or not valid[b, p]:
                continue
            keys = [j for j in range(p + 1) if valid[b, j]]
            kk = k[b, keys].repeat_interleave(HQ // HKV, 1)  # [K, HQ, D]
            vv = v[b, keys].repeat_interleave(HQ // HKV, 1)
            p_attn = torch.einsum("hd,khd->hk", q[b, i], kk).mul(D**-0.5).softmax(-1)
            out[b, i] = torch.einsum("hk,khd->hd", p_attn, vv)
    return out


def _case(seed, B, TQ, TK, vision_spans, pad_left):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, TQ, HQ, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, TK, HKV, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, TK, HKV, D, generator=g, dtype=torch.float64)
    gate_input = torch.randn(B, TQ, C, generator=g, dtype=torch.float64)
    is_vision = torch.zeros(B, TK, dtype=torch.bool)
    for b, start, end in vision_spans:
        is_vision[b, start:end] = True
    valid = None
    if any(pad_left):
        valid = torch.ones(B, TK, dtype=torch.bool)
        for b, n in enumerate(pad_left):
            valid[b, :n] = False
    return q, k, v, gate_input, TokenRouting(is_vision, valid)


CASES = [
    pytest.param(1, 1, 40, 40, [(0, 5, 30)], [0], id="one-video"),
    pytest.param(2, 2, 37, 37, [(0, 3, 20), (0, 24, 33), (1, 10, 36)], [0, 6], id="two-videos-left-padding"),
    pytest.param(3, 2, 9, 45, [(0, 2, 40), (1, 5, 44)], [0, 4], id="cached-prefix"),
    pytest.param(4, 2, 20, 20, [], [0, 3], id="text-only"),
    pytest.param(5, 1, 25, 25, [(0, 0, 25)], [0], id="vision-only"),
    pytest.param(6, 1, 1, 30, [(0, 2, 20)], [0], id="decode-text-row"),
]


@pytest.mark.parametrize(("seed", "B", "TQ", "TK", "spans", "pad_left"), CASES)
def test_hybrid_matches_reference(seed, B, TQ, TK, spans, pad_left):
    torch.manual_seed(seed)
    q, k, v, gate_input, routing = _case(seed, B, TQ, TK, spans, pad_left)
    gate = NSAGate(C, HQ).double()
    out = hybrid_attention(q, k, v, gate_input, gate, routing, SMALL)
    expected = _reference(q, k, v, gate_input, gate, routing, SMALL)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    pad = ~routing.valid[:, -TQ:]
    assert (out[pad] == 0).all()


def test_vision_rows_ignore_text_keys_and_text_rows_see_vision():
    q, k, v, gate_input, routing = _case(7, 1, 30, 30, [(0, 10, 25)], [0])
    gate = NSAGate(C, HQ).double()
    base = hybrid_attention(q, k, v, gate_input, gate, routing, SMALL)
    k2, v2 = k.clone(), v.clone()
    k2[0, :10] += 1.0
    v2[0, :10] += 1.0
    moved = hybrid_attention(q, k2, v2, gate_input, gate, routing, SMALL)
    torch.testing.assert_close(moved[0, 10:25], base[0, 10:25], rtol=0, atol=0)
    assert (moved[0, 25:] - base[0, 25:]).abs().min() > 0
    k3 = k.clone()
    k3[0, 12] += 1.0
    assert not torch.allclose(hybrid_attention(q, k3, v, gate_input, gate, routing, SMALL)[0, 25:], base[0, 25:])


def test_window_reduced_nsa_equals_dense_causal_attention():
    q, k, v, gate_input, routing = _case(8, 1, 24, 24, [(0, 0, 24)], [0])
    dense = NSAConfig(window=64, branches=("swd",))
    out = hybrid_attention(q, k, v, gate_input, lambda h: torch.ones(h.shape[0], HQ, 3, dtype=h.dtype), routing, dense)
    all_text = TokenRouting(torch.zeros_like(routing.key_is_vision))
    expected = hybrid_attention(q, k, v, gate_input, lambda h: h, all_text, dense)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_packing_indices():
    routing = TokenRouting(
        torch.tensor([[False, True, True, False, True], [True, True, False, False, False]]),
        torch.tensor([[True, True, True, True, True], [False, True, True, True, True]]),
    )
    packing = pack_vision(routing, num_queries=2)
    assert packing.cu_seqlens.tolist() == [0, 3, 4]
    assert packing.key_pos.tolist() == [1, 2, 4, 1]
    assert packing.query_slot.tolist() == [2]
    assert packing.query_row.tolist() == [1]
    rows, row_valid = gather_text_rows(routing.query_is_text(5))
    assert rows.tolist() == [[0, 3, 0], [2, 3, 4]]
    assert row_valid.tolist() == [[True, True, False], [True, True, True]]


@pytest.mark.parametrize(
    ("field", "change", "match"),
    [
        pytest.param("k", lambda t: t[:, :3], "keys must include the queries", id="short-keys"),
        pytest.param("k", lambda t: t[..., :8], "k and v must be", id="head-dim"),
        pytest.param("gate_input", lambda t: t[:, :2], "gate_input must be", id="gate-input"),
    ],
)
def test_bad_inputs_raise(field, change, match):
    q, k, v, gate_input, routing = _case(9, 1, 10, 10, [(0, 2, 6)], [0])
    args = {"q": q, "k": k, "v": v, "gate_input": gate_input}
    args[field] = change(args[field])
    if field == "k":
        args["v"] = change(v)
    with pytest.raises(ValueError, match=match):
        hybrid_attention(args["q"], args["k"], args["v"], args["gate_input"], NSAGate(C, HQ).double(), routing, SMALL)


def test_routing_rejects_non_bool_masks():
    with pytest.raises(ValueError, match="key_is_vision"):
        TokenRouting(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="key_valid"):
        TokenRouting(torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool))

"""Each reference branch against the independent brute-force oracle, in float64."""

from __future__ import annotations

import pytest
import torch

from nsa_core import NSAConfig
from nsa_core.ops import (
    compress_kv,
    compression_attention,
    compression_to_selection_weights,
    num_compressed_blocks,
    select_blocks,
    selection_attention,
    selection_scores,
    window_attention,
)
from tests.nsa_core.ops import oracle

# (B, T, HQ, HKV, D, l, d, s, n, w)
SHAPES = [
    pytest.param(1, 1, 7, 1, 16, 4, 4, 4, 3, 8, id="T1-G7"),
    pytest.param(2, 63, 4, 4, 16, 8, 8, 8, 3, 5, id="T63-G1"),
    pytest.param(1, 65, 14, 2, 64, 16, 16, 16, 2, 70, id="T65-G7-w>T"),
    pytest.param(2, 111, 8, 2, 16, 8, 4, 16, 5, 17, id="T111-G4-overlap"),
    pytest.param(1, 200, 16, 1, 128, 16, 16, 16, 35, 33, id="T200-G16-n>blocks"),
    pytest.param(1, 137, 16, 2, 16, 32, 16, 64, 2, 9, id="T137-G8-paper-geometry"),
    pytest.param(1, 1000, 2, 1, 16, 32, 32, 32, 7, 100, marks=pytest.mark.slow, id="T1000-G2"),
]


def _inputs(B, T, HQ, HKV, D):
    q = torch.randn(B, T, HQ, D, dtype=torch.float64)
    k = torch.randn(B, T, HKV, D, dtype=torch.float64)
    v = torch.randn(B, T, HKV, D, dtype=torch.float64)
    return q, k, v


def _close(actual, expected, atol=1e-10):
    both_inf = torch.isinf(actual) & torch.isinf(expected) & (actual.sign() == expected.sign())
    torch.testing.assert_close(
        torch.where(both_inf, 0, actual), torch.where(both_inf, 0, expected), atol=atol, rtol=1e-9
    )


@pytest.mark.parametrize(("B", "T", "HQ", "HKV", "D", "l", "d", "s", "n", "w"), SHAPES)
def test_branches_match_oracle(B, T, HQ, HKV, D, l, d, s, n, w):
    forced_local = min(2, n - 1)
    config = NSAConfig(
        compress_block=l, compress_stride=d, select_block=s, num_selected=n, window=w, forced_local=forced_local
    )
    q, k, v = _inputs(B, T, HQ, HKV, D)
    expected = oracle.nsa_oracle(q, k, v, torch.ones(B, T, HQ, 3), l, d, s, n, w, forced_local=forced_local)

    k_cmp, v_cmp = compress_kv(k, v, config)
    _close(k_cmp, oracle.compress(k, l, d))
    _close(v_cmp, oracle.compress(v, l, d))
    o_cmp, lse_cmp = compression_attention(q, k_cmp, v_cmp, config)
    _close(o_cmp, expected["outputs"]["cmp"])
    _close(lse_cmp, expected["lse"]["cmp"])

    scores = selection_scores(q, k_cmp, lse_cmp, config)
    _close(scores, expected["scores"])
    indices = select_blocks(scores, config)
    assert indices.shape == (B, T, HKV, n)
    assert indices.dtype == torch.int32
    chosen = [[[[j for j in row if j >= 0] for row in per_t] for per_t in per_b] for per_b in indices.tolist()]
    assert chosen == expected["blocks"]

    o_slc, lse_slc = selection_attention(q, k, v, indices, config)
    _close(o_slc, expected["outputs"]["slc"])
    _close(lse_slc, expected["lse"]["slc"])
    o_swd, lse_swd = window_attention(q, k, v, config)
    _close(o_swd, expected["outputs"]["swd"])
    _close(lse_swd, expected["lse"]["swd"])


@pytest.mark.parametrize(
    ("l", "d", "s"),
    [
        pytest.param(32, 16, 64, id="paper"),
        pytest.param(64, 64, 64, id="videonsa"),
        pytest.param(24, 8, 16, id="odd"),
        pytest.param(16, 16, 64, id="l<s"),
        pytest.param(64, 32, 32, id="l>s"),
    ],
)
def test_overlap_weights_match_token_count(l, d, s):
    config = NSAConfig(compress_block=l, compress_stride=d, select_block=s, num_selected=4, forced_local=1)
    nc, ns = num_compressed_blocks(500, config), -(-500 // s)
    weights = compression_to_selection_weights(nc, ns, config)
    torch.testing.assert_close(weights, oracle.overlap_weights(nc, ns, l, d, s))


def test_paper_geometry_weights_are_1_2_2_2_1():
    config = NSAConfig(compress_block=32, compress_stride=16, select_block=64, num_selected=4)
    weights = compression_to_selection_weights(40, 10, config)
    j = 3
    column = weights[:, j]
    assert column.nonzero().flatten().tolist() == [4 * j - 1, 4 * j, 4 * j + 1, 4 * j + 2, 4 * j + 3]
    assert column[4 * j - 1 : 4 * j + 4].tolist() == [1, 2, 2, 2, 1]


def test_non_power_of_two_count_selects_exactly_n():
    config = NSAConfig(select_block=4, num_selected=35, compress_block=4, compress_stride=4)
    T = 4 * 60
    scores = torch.rand(1, T, 2, 60, dtype=torch.float64)
    indices = select_blocks(scores, config)
    last = indices[0, -1]
    assert ((last >= 0).sum(-1) == 35).all()
    assert indices.shape[-1] == 35


def test_forced_blocks_always_present_and_fewer_visible_takes_all():
    config = NSAConfig(
        select_block=8, num_selected=5, compress_block=8, compress_stride=8, forced_initial=1, forced_local=2
    )
    T, ns = 8 * 40, 40
    scores = torch.rand(2, T, 3, ns, dtype=torch.float64)
    scores[..., 0] = -1.0
    indices = select_blocks(scores, config)
    for t in range(T):
        row = indices[0, t, 0].tolist()
        current = t // 8
        visible = current + 1
        assert 0 in row
        assert current in row
        if current >= 1:
            assert current - 1 in row
        assert sum(j >= 0 for j in row) == min(5, visible)
        assert all(j <= current for j in row)


def test_selection_ignores_future_blocks_even_with_high_scores():
    config = NSAConfig(select_block=4, num_selected=3, compress_block=4, compress_stride=4, forced_local=1)
    scores = torch.zeros(1, 40, 1, 10, dtype=torch.float64)
    scores[..., 9] = 100.0
    indices = select_blocks(scores, config)
    assert (indices[0, :36] != 9).all()

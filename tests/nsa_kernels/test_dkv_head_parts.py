"""The head parts of the TMA dK/dV rows (:mod:`nsa_kernels.dkv_async`): host-side plan, no GPU."""

from __future__ import annotations

import pytest
import torch

from nsa_kernels import dkv_async


@pytest.mark.parametrize("G", range(1, 40))
def test_head_parts_are_powers_of_two_that_sum_to_g(G):
    parts = dkv_async.head_parts(G)
    if bin(G).count("1") > dkv_async.MAX_PARTS:
        assert parts == []
        return
    assert len(parts) == dkv_async.MAX_PARTS
    used = [p for p in parts if p]
    assert sum(used) == G
    assert all(p & (p - 1) == 0 for p in used)
    assert used == sorted(set(used), reverse=True)
    assert parts[len(used) :] == [0] * (dkv_async.MAX_PARTS - len(used))


@pytest.mark.parametrize(
    ("G", "block_m", "boxes"),
    [
        (7, 128, [[32, 4, 64], [64, 2, 64], [128, 1, 64]]),
        (16, 128, [[8, 16, 64]] * 3),
        (3, 64, [[32, 2, 64], [64, 1, 64], [32, 2, 64]]),
    ],
)
def test_descriptors_take_one_step_of_rows_per_part(G, block_m, boxes):
    q = torch.zeros(50, 4 * G, 128, dtype=torch.bfloat16)
    descs = dkv_async.head_part_descriptors(q, G, block_m)
    assert [d.block_shape for d in descs] == boxes
    for d in descs:
        assert d.block_shape[0] * d.block_shape[1] == block_m
        assert d.shape == [50, 4 * G, 128]
        assert d.strides == [4 * G * 128, 128, 1]


def test_rows_by_tma_needs_few_parts_and_contiguous_rows():
    q = torch.zeros(50, 28, 128, dtype=torch.bfloat16)
    assert dkv_async.rows_by_tma(q, q, 7, 128)
    assert not dkv_async.rows_by_tma(q, q.transpose(0, 1).contiguous().transpose(0, 1), 7, 128)
    assert not dkv_async.rows_by_tma(q[:0], q[:0], 7, 128)
    wide = torch.zeros(50, 60, 128, dtype=torch.bfloat16)
    assert not dkv_async.rows_by_tma(wide, wide, 15, 128)

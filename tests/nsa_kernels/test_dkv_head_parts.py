"""The TMA rows of the dK/dV kernels (:mod:`nsa_kernels.dkv_async` head parts, :mod:`nsa_kernels.dkv_keyrows` one-head
steps): host-side plans, no GPU."""

from __future__ import annotations

import pytest
import torch

from nsa_kernels import dkv_async, dkv_keyrows


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


def test_keyrows_descriptor_takes_one_head_of_a_token_block_per_box():
    q = torch.zeros(50, 28, 128, dtype=torch.bfloat16)
    desc = dkv_keyrows.row_descriptor(q)
    assert desc.block_shape == [dkv_keyrows.ROWS, 1, 64]
    assert desc.shape == [50, 28, 128]
    assert desc.strides == [28 * 128, 128, 1]


def test_keyrows_applies_to_contiguous_rows_only(monkeypatch):
    monkeypatch.setattr(dkv_keyrows, "MIN_WAVES", 0)
    q = torch.zeros(50, 28, 128, dtype=torch.bfloat16)
    assert dkv_keyrows.applies(q, q, 1)
    assert not dkv_keyrows.applies(q, q.transpose(0, 1).contiguous().transpose(0, 1), 1)
    assert not dkv_keyrows.applies(q[:0], q[:0], 1)

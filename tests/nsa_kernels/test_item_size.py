"""The backward's work-item size (:func:`nsa_kernels.selection._item_size`): longer items only while a launch still
fills the GPU's SMs with them, and never off CUDA (the interpreter runs the configured size)."""

from __future__ import annotations

import types

import pytest
import torch

from nsa_kernels import selection

SMS = 132


@pytest.fixture
def h200(monkeypatch):
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(multi_processor_count=SMS)
    )
    return torch.device("cuda")


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param(8192 * 4 * 32, 1152, id="8K-one-range-of-4-heads"),
        pytest.param(32768 * 4 * 32, 4608, id="32K-one-range-of-4-heads"),
        pytest.param(74898 * 32, 2304, id="128K-ranges-of-1-head"),
    ],
)
def test_items_grow_while_four_waves_remain(h200, entries, expected):
    size = selection._item_size(1152, entries, h200, waves=4)
    assert size == expected
    assert size == 1152 or entries // size >= 4 * SMS
    assert size == 4 * 1152 or entries // (2 * size) < 4 * SMS


def test_items_stay_put_off_cuda_or_without_waves(h200):
    assert selection._item_size(1152, 131072 * 32, torch.device("cpu"), waves=4) == 1152
    assert selection._item_size(1152, 131072 * 32, h200, waves=0) == 1152

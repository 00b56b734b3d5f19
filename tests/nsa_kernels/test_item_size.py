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
    ("tokens", "expected"),
    [(8192, 1152), (32768, 2304), (65536, 4608), (131072, 4608)],
)
def test_items_grow_while_two_waves_remain(h200, tokens, expected):
    entries = tokens * 32
    size = selection._item_size(1152, entries, h200, waves=2)
    assert size == expected
    assert size == 1152 or entries // size >= 2 * SMS
    assert size == 4 * 1152 or entries // (2 * size) < 2 * SMS


def test_items_stay_put_off_cuda_or_without_waves(h200):
    assert selection._item_size(1152, 131072 * 32, torch.device("cpu"), waves=2) == 1152
    assert selection._item_size(1152, 131072 * 32, h200, waves=0) == 1152

"""Bad input fails early with a ValueError naming the argument; config and backend errors name the fix."""

from __future__ import annotations

import pydantic
import pytest
import torch

from nsa_core import NSAConfig, nsa_attention
from nsa_core.ops import available_backends, resolve_backend


def _good(T=16):
    return torch.randn(1, T, 4, 8), torch.randn(1, T, 2, 8), torch.randn(1, T, 2, 8), torch.rand(1, T, 4, 3)


def _replace(index, value):
    args = list(_good())
    args[index] = value
    return args


BAD_INPUTS = [
    pytest.param(_replace(0, torch.randn(16, 4, 8)), {}, "q must have shape", id="q-rank"),
    pytest.param(_replace(1, torch.randn(1, 16, 2, 8, 1)), {}, "k must have shape", id="k-rank"),
    pytest.param(_replace(2, torch.randn(1, 16, 1, 8)), {}, "k and v must have the same shape", id="kv-mismatch"),
    pytest.param(_replace(0, torch.randn(1, 16, 3, 8)), {}, "multiple of the KV heads", id="heads-not-divisible"),
    pytest.param(
        [_good()[0], torch.randn(1, 15, 2, 8), torch.randn(1, 15, 2, 8), _good()[3]], {}, "k/v shape", id="kv-length"
    ),
    pytest.param(_replace(1, torch.randn(1, 16, 2, 8, dtype=torch.float64)), {}, "k has dtype", id="k-dtype"),
    pytest.param(_replace(3, torch.rand(1, 16, 4, 2)), {}, "gates must have shape", id="gates-shape"),
    pytest.param(_replace(3, torch.rand(1, 16, 4)), {}, "gates must have shape", id="gates-rank"),
    pytest.param(_good(), {"cu_seqlens": torch.tensor([0, 9, 5, 16])}, "non-decreasing", id="cu-decreasing"),
    pytest.param(_good(), {"cu_seqlens": torch.tensor([0, 9, 15])}, "end at T=16", id="cu-end"),
    pytest.param(_good(), {"cu_seqlens": torch.tensor([0.0, 16.0])}, "cu_seqlens must be", id="cu-dtype"),
    pytest.param(_good(), {"block_indices": torch.zeros(1, 16, 2, 2)}, "int32 or int64", id="indices-dtype"),
    pytest.param(
        _good(),
        {"block_indices": torch.zeros(1, 16, 4, 2, dtype=torch.int32)},
        "block_indices must have",
        id="indices-shape",
    ),
    pytest.param(
        _good(), {"block_indices": torch.full((1, 16, 2, 2), 9, dtype=torch.int32)}, "must lie in", id="indices-range"
    ),
    pytest.param(
        _good(),
        {"block_indices": torch.zeros(1, 16, 2, 2, dtype=torch.int32)},
        "repeats a block",
        id="indices-duplicate",
    ),
    pytest.param(_good(), {"backend": "nope"}, "backend='nope' is not registered", id="unknown-backend"),
]


@pytest.mark.parametrize(("args", "kwargs", "message"), BAD_INPUTS)
def test_bad_input_raises_value_error_naming_the_argument(args, kwargs, message):
    config = NSAConfig(compress_block=4, compress_stride=4, select_block=4, num_selected=3)
    with pytest.raises(ValueError, match=message):
        nsa_attention(*args, config, **kwargs)


def test_cu_seqlens_needs_batch_of_one():
    q, k, v, gates = (torch.cat([x, x]) for x in _good())
    with pytest.raises(ValueError, match="batch size 1"):
        nsa_attention(q, k, v, gates, cu_seqlens=torch.tensor([0, 16]))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"compress_stride": 128}, "compress_stride", id="stride>block"),
        pytest.param({"num_selected": 2}, "counted inside num_selected", id="forced>n"),
        pytest.param({"branches": ()}, "at least one", id="no-branch"),
        pytest.param({"branches": ("slc", "slc")}, "duplicates", id="duplicate-branch"),
        pytest.param({"branches": ("dense",)}, "branches", id="unknown-branch"),
        pytest.param({"window": 0}, "window", id="window-0"),
        pytest.param({"select_block": -1}, "select_block", id="negative-block"),
        pytest.param({"windw": 3}, "windw", id="typo"),
    ],
)
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        NSAConfig(**fields)


def test_config_is_frozen_and_orders_branches():
    config = NSAConfig(branches=("swd", "cmp"))
    assert config.branches == ("cmp", "swd")
    with pytest.raises(pydantic.ValidationError):
        config.window = 3
    assert NSAConfig().attention_budget() == 32 * 64 + 256
    assert NSAConfig().softmax_scale(128) == 128**-0.5


def test_auto_backend_on_cpu_is_the_reference(monkeypatch):
    assert "reference" in available_backends()
    assert resolve_backend("auto", torch.device("cpu"), torch.float32).name == "reference"
    monkeypatch.setenv("NSA_BACKEND", "reference")
    assert resolve_backend("auto", torch.device("cpu"), torch.float16).name == "reference"

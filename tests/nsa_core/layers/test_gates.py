"""Gate module: shapes, VideoNSA initialisation (≈ 0.5), temperature and the lighter linear variant."""

from __future__ import annotations

import pytest
import torch

from nsa_core.layers import GATE_INIT_STD, NSAGate


@pytest.mark.parametrize("kind", [pytest.param("mlp", id="mlp"), pytest.param("linear", id="linear")])
def test_gate_shape_and_init_near_half(kind):
    torch.manual_seed(0)
    gate = NSAGate(64, 7, kind=kind)
    g = gate(torch.randn(5, 11, 64))
    assert g.shape == (5, 11, 7, 3)
    # Zero biases make the logits zero-mean: gates centre on 0.5 (their spread grows with sqrt(C)·0.02/τ).
    assert abs(g.mean().item() - 0.5) < 0.03
    assert (g - 0.5).abs().max() < 0.45
    for layer in gate.children():
        assert layer.bias.abs().max() == 0
        assert abs(layer.weight.std().item() - GATE_INIT_STD) < 0.005


def test_parameter_names_and_count_match_videonsa():
    mlp = NSAGate(3584, 28)
    assert {n for n, _ in mlp.named_parameters()} == {
        "g_proj_1.weight",
        "g_proj_1.bias",
        "g_proj_2.weight",
        "g_proj_2.bias",
    }
    assert sum(p.numel() for p in mlp.parameters()) == 3584**2 + 3584 + 3584 * 84 + 84


def test_temperature_and_head_branch_layout():
    gate = NSAGate(4, 2, kind="linear", temperature=0.5)
    with torch.no_grad():
        gate.g_proj.weight.zero_()
        gate.g_proj.bias.copy_(torch.arange(6.0))
    g = gate(torch.zeros(4))
    torch.testing.assert_close(g, torch.sigmoid(torch.arange(6.0) / 0.5).view(2, 3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [pytest.param({"kind": "softmax"}, "kind", id="kind"), pytest.param({"temperature": 0.0}, "temperature", id="tau")],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NSAGate(8, 2, **kwargs)

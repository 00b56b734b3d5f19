"""The sparse/dense switch, run-time budget overrides and validation of the model-level settings."""

from __future__ import annotations

import pytest
import torch

from nsa_core import NSAConfig
from nsa_core.models.qwen2_5_vl import (
    ATTN_IMPLEMENTATION,
    VideoNSASettings,
    convert_to_nsa,
    get_nsa_settings,
    set_attention_mode,
    update_nsa_settings,
)
from tests.nsa_core.models.tiny import VISION_END, VISION_START, build_batch, tiny_model

SMALL = NSAConfig(
    compress_block=4, compress_stride=4, select_block=4, num_selected=3, forced_initial=1, forced_local=1, window=8
)
PROMPT = [("text", 3), ("text", [VISION_START]), ("video", 4, 112, 112), ("text", [VISION_END]), ("text", 4)]


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_mode_switch_is_one_flag():
    stock, model = tiny_model(seed=20), convert_to_nsa(tiny_model(seed=20), SMALL)
    batch = build_batch([PROMPT], seed=20)
    sparse = _logits(model, batch)
    assert model.config.text_config._attn_implementation == ATTN_IMPLEMENTATION
    assert model.config.vision_config._attn_implementation == "sdpa"
    set_attention_mode(model, "dense")
    assert model.config.nsa["attention"] == "dense"
    assert torch.equal(_logits(model, batch), _logits(stock, batch))
    set_attention_mode(model, "nsa")
    assert torch.equal(_logits(model, batch), sparse)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"window": 2}, id="window"),
        pytest.param({"num_selected": 2, "forced_local": 1}, id="num-selected"),
        pytest.param({"branches": ("cmp", "swd")}, id="drop-selection"),
        pytest.param({"fixed_gates": (0.0, 1.0, 0.5)}, id="fixed-gates"),
    ],
)
def test_runtime_overrides_take_effect_without_reloading(changes):
    model = convert_to_nsa(tiny_model(seed=21), SMALL)
    batch = build_batch([PROMPT], seed=21)
    before = _logits(model, batch)
    updated = update_nsa_settings(model, **changes)
    assert get_nsa_settings(model) == updated
    assert (_logits(model, batch) - before).abs().max() > 1e-5
    update_nsa_settings(model, nsa=SMALL, fixed_gates=None)
    assert torch.equal(_logits(model, batch), before)


def test_nsa_at_test_on_dense_weights_uses_half_gates():
    model = convert_to_nsa(tiny_model(seed=22), SMALL)
    batch = build_batch([PROMPT], seed=22)
    for layer in model.model.language_model.layers:
        for weight in layer.self_attn.nsa_gate.parameters():
            torch.nn.init.zeros_(weight)
    learned_half = _logits(model, batch)
    update_nsa_settings(model, fixed_gates=(0.5, 0.5, 0.5))
    torch.testing.assert_close(_logits(model, batch), learned_half, rtol=1e-6, atol=1e-6)


def test_reconverting_keeps_gates_and_changes_kind_on_request():
    model = convert_to_nsa(tiny_model(seed=23), SMALL)
    gate = model.model.language_model.layers[0].self_attn.nsa_gate
    convert_to_nsa(model, NSAConfig(window=4))
    assert model.model.language_model.layers[0].self_attn.nsa_gate is gate
    convert_to_nsa(model, gate="linear")
    assert model.model.language_model.layers[0].self_attn.nsa_gate.kind == "linear"
    assert len(model._nsa_hook_handles) == 3 + len(model.model.language_model.layers)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(lambda m: update_nsa_settings(m, windw=3), "unknown NSA settings", id="unknown-key"),
        pytest.param(lambda m: update_nsa_settings(m, gate="linear"), "convert_to_nsa", id="structural-key"),
        pytest.param(lambda m: update_nsa_settings(m, window=0), "window", id="bad-window"),
        pytest.param(lambda m: update_nsa_settings(m, fixed_gates=(2, 0, 0)), "fixed_gates", id="bad-gates"),
        pytest.param(lambda m: set_attention_mode(m, "sparse"), "mode", id="bad-mode"),
        pytest.param(lambda m: convert_to_nsa(torch.nn.Linear(2, 2)), "Qwen2_5_VL", id="not-qwen"),
    ],
)
def test_bad_settings_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(convert_to_nsa(tiny_model(seed=24), SMALL))


def test_settings_round_trip_through_a_plain_dict():
    settings = VideoNSASettings(gate="linear", fixed_gates=(1, 0, 1), nsa=SMALL)
    assert VideoNSASettings.model_validate(settings.to_config_dict()) == settings
    with pytest.raises(ValueError, match="dense_implementation"):
        VideoNSASettings(dense_implementation=ATTN_IMPLEMENTATION)


def test_unconverted_model_has_no_settings():
    with pytest.raises(ValueError, match="convert_to_nsa"):
        get_nsa_settings(tiny_model(seed=25))

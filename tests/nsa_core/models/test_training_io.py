"""Gradients, save/load round trips (safetensors + config.nsa), generation and KV-cache continuation."""

from __future__ import annotations

import torch
from safetensors import safe_open

from nsa_core import NSAConfig
from nsa_core.models.qwen2_5_vl import (
    ATTN_IMPLEMENTATION,
    VideoNSASettings,
    convert_to_nsa,
    get_nsa_settings,
    load_nsa_model,
    set_attention_mode,
)
from tests.nsa_core.models.tiny import IMAGE, VIDEO, VISION_END, VISION_START, build_batch, tiny_model

SMALL = NSAConfig(
    compress_block=4, compress_stride=4, select_block=4, num_selected=3, forced_initial=1, forced_local=1, window=8
)
PROMPT = [("text", 3), ("text", [VISION_START]), ("video", 4, 112, 112), ("text", [VISION_END]), ("text", 4)]


def _logits(model, batch, **extra):
    with torch.no_grad():
        return model(**batch, **extra).logits


def test_gradients_reach_gates_projections_and_vision_tower():
    model = convert_to_nsa(tiny_model(seed=11), SMALL).train()
    batch = build_batch([PROMPT], seed=11)
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == VIDEO, -100)
    model(**batch, labels=labels).loss.backward()
    layer = model.model.language_model.layers[0].self_attn
    tensors = {
        "gate_1": layer.nsa_gate.g_proj_1.weight,
        "gate_2": layer.nsa_gate.g_proj_2.weight,
        "q": layer.q_proj.weight,
        "k": layer.k_proj.weight,
        "v": layer.v_proj.weight,
        "vision": model.model.visual.patch_embed.proj.weight,
    }
    for name, weight in tensors.items():
        assert weight.grad is not None and torch.isfinite(weight.grad).all(), name
        assert weight.grad.abs().max() > 0, name


def test_save_load_round_trip(tmp_path):
    model = convert_to_nsa(tiny_model(seed=12), SMALL, gate="linear", fixed_gates=None)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.nsa_gate.g_proj.bias.uniform_(-2, 2)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert any(".self_attn.nsa_gate.g_proj.bias" in key for key in f.keys())  # noqa: SIM118
    loaded = load_nsa_model(tmp_path).eval()
    assert get_nsa_settings(loaded) == get_nsa_settings(model)
    assert loaded.config.text_config._attn_implementation == ATTN_IMPLEMENTATION
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    batch = build_batch([PROMPT], seed=12)
    assert torch.equal(_logits(loaded, batch), _logits(model, batch))


def test_dense_checkpoint_loads_with_default_gates(tmp_path):
    stock = tiny_model(seed=13)
    stock.save_pretrained(tmp_path)
    loaded = load_nsa_model(tmp_path).eval()
    assert get_nsa_settings(loaded) == VideoNSASettings()
    hidden = torch.randn(64, loaded.config.text_config.hidden_size)
    for layer in loaded.model.language_model.layers:
        gates = layer.self_attn.nsa_gate(hidden)
        assert abs(gates.mean().item() - 0.5) < 0.03
        assert layer.self_attn.nsa_gate.g_proj_2.bias.abs().max() == 0
    batch = build_batch([PROMPT], seed=13)
    set_attention_mode(loaded, "dense")
    assert torch.equal(_logits(loaded, batch), _logits(stock, batch))


def test_generate_matches_full_forward():
    model = convert_to_nsa(tiny_model(seed=14), SMALL)
    samples = [PROMPT, [("text", 2), ("text", [VISION_START]), ("video", 2, 56, 112), ("text", [VISION_END, 9])]]
    batch = build_batch(samples, seed=14)
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=4,
            do_sample=False,
            suppress_tokens=[IMAGE, VIDEO, VISION_START, VISION_END],  # raw logits are compared, not processed
            output_logits=True,
            return_dict_in_generate=True,
        )
    T = batch["input_ids"].shape[1]
    new = out.sequences[:, T:]
    assert new.shape == (2, 4)
    full = dict(
        batch,
        input_ids=out.sequences,
        attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(new)], 1),
        mm_token_type_ids=torch.cat([batch["mm_token_type_ids"], torch.zeros_like(new)], 1),
    )
    expected = _logits(model, full)[:, T - 1 : -1]
    torch.testing.assert_close(torch.stack(out.logits, 1), expected, rtol=1e-5, atol=1e-5)


def test_cached_continuation_with_new_video_matches_one_call():
    model = convert_to_nsa(tiny_model(seed=15), SMALL)
    second = [("text", [VISION_END, VISION_START]), ("video", 4, 56, 112), ("text", [VISION_END]), ("text", 3)]
    batch = build_batch([PROMPT + second], seed=15)
    positions = model.model.get_rope_index(
        batch["input_ids"],
        batch["mm_token_type_ids"],
        video_grid_thw=batch["video_grid_thw"],
        second_per_grid_ts=batch["second_per_grid_ts"],
    )[0]
    one_call = _logits(model, batch, position_ids=positions)
    cut = 3 + 1 + 32 + 1 + 4
    first_pixels = 2 * 8 * 8
    with torch.no_grad():
        head = model(
            input_ids=batch["input_ids"][:, :cut],
            attention_mask=batch["attention_mask"][:, :cut],
            position_ids=positions[..., :cut],
            pixel_values_videos=batch["pixel_values_videos"][:first_pixels],
            video_grid_thw=batch["video_grid_thw"][:1],
            use_cache=True,
        )
        tail = model(
            input_ids=batch["input_ids"][:, cut:],
            attention_mask=batch["attention_mask"],
            position_ids=positions[..., cut:],
            pixel_values_videos=batch["pixel_values_videos"][first_pixels:],
            video_grid_thw=batch["video_grid_thw"][1:],
            past_key_values=head.past_key_values,
            use_cache=True,
        )
    torch.testing.assert_close(torch.cat([head.logits, tail.logits], 1), one_call, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_keeps_routing_and_gradients():
    batch = build_batch([PROMPT], seed=16)
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == VIDEO, -100)
    grads = []
    for checkpointing in (False, True):
        model = convert_to_nsa(tiny_model(seed=16), SMALL).train()
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        model(**batch, labels=labels).loss.backward()
        grads.append(model.model.language_model.layers[1].self_attn.nsa_gate.g_proj_1.weight.grad)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_autocast_hands_the_operator_the_autocast_dtype(monkeypatch):
    import nsa_core.layers.hybrid as hybrid

    seen = []
    operator = hybrid.nsa_attention

    def spy(q, k, v, gates, *args, **kwargs):
        seen.append({q.dtype, k.dtype, v.dtype, gates.dtype})
        return operator(q, k, v, gates, *args, **kwargs)

    monkeypatch.setattr(hybrid, "nsa_attention", spy)
    model = convert_to_nsa(tiny_model(seed=5), SMALL)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**build_batch([PROMPT], seed=5))
    assert seen and all(dtypes == {torch.bfloat16} for dtypes in seen)

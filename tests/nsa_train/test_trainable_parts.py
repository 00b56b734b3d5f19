"""Freezing keeps the frozen parts bit-identical; gradient checkpointing changes memory, not the math."""

from __future__ import annotations

import json

import torch

from nsa_core.models.qwen2_5_vl import load_nsa_model
from nsa_data.text import VideoQATokenizer
from nsa_train import train
from nsa_train.model import build_model, part_of


def _losses(result) -> list[float]:
    return [json.loads(line)["loss"] for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]


def test_only_gates_train_when_the_rest_is_frozen(tiny_config, tmp_path):
    config = tiny_config(
        "loop.max_steps=2",
        "model.train_vision=false",
        "model.train_merger=false",
        "model.train_llm=false",
        output_dir=tmp_path / "gates-only",
    )
    result = train(config)
    initial = build_model(config.model, VideoQATokenizer.load(result.model_dir), config.loop.seed).state_dict()
    trained = load_nsa_model(result.model_dir).state_dict()
    changed = {part_of(name) for name, value in trained.items() if not torch.equal(value, initial[name])}
    assert changed == {"gates"}


def test_gradient_checkpointing_gives_the_same_losses_and_weights(tiny_config, tmp_path):
    plain = train(tiny_config("loop.max_steps=2", output_dir=tmp_path / "plain"))
    checkpointed = train(
        tiny_config("loop.max_steps=2", "model.gradient_checkpointing=true", output_dir=tmp_path / "checkpointed")
    )
    torch.testing.assert_close(_losses(checkpointed), _losses(plain), atol=1e-5, rtol=1e-5)
    plain_state = load_nsa_model(plain.model_dir).state_dict()
    for name, value in load_nsa_model(checkpointed.model_dir).state_dict().items():
        torch.testing.assert_close(value, plain_state[name], atol=1e-5, rtol=1e-5, msg=name)

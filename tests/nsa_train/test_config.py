"""Shipped recipes validate; params.yaml and --set merge in order; bad input names the field or file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nsa_train import TrainConfig, load_config
from nsa_train.cli import main
from nsa_train.data import SampleOrder
from nsa_train.model import part_of
from nsa_train.trainer import warmup_cosine

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs" / "train").glob("*.yaml"))


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in RECIPES])
def test_every_recipe_validates(path):
    config = load_config(path)
    assert isinstance(config, TrainConfig)
    assert config.optim.betas == (0.9, 0.999) and config.optim.weight_decay == 0.01 and config.optim.grad_clip == 1.0
    assert config.optim.warmup_ratio == 0.1


def test_videonsa_recipe_hyperparameters():
    config = load_config(REPO / "configs" / "train" / "qwen2.5-vl-7b.yaml")
    assert config.optim.lr == 1e-6 and config.loop.epochs == 1 and config.loop.precision == "bf16"
    assert (config.model.nsa.select_block, config.model.nsa.num_selected, config.model.nsa.window) == (64, 32, 256)
    assert config.loop.micro_batch_size * config.loop.grad_accum * config.distributed.num_workers == 32


def test_params_section_then_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("synth: {seed: 1}\ntrain:\n  optim: {lr: 0.5}\n  loop: {max_steps: 3, seed: 7}\n")
    config = load_config(REPO / "configs" / "train" / "tiny.yaml", params, ["loop.max_steps=9"])
    assert (config.optim.lr, config.loop.max_steps, config.loop.seed) == (0.5, 9, 7)
    assert config.optim.betas == (0.9, 0.999)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        pytest.param(["optim.lr=-1"], "optim.lr", id="negative-lr"),
        pytest.param(["loop.nope=1"], "loop.nope", id="unknown-field"),
        pytest.param(["model.tiny.hidden_size=100"], "divisible by", id="heads"),
        pytest.param(["model.source=pretrained"], "model.path", id="no-path"),
        pytest.param(["lr"], "key=value", id="no-equals"),
    ],
)
def test_bad_overrides_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(REPO / "configs" / "train" / "tiny.yaml", overrides=overrides)


def test_cli_reports_missing_files(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    assert main(["--config", str(RECIPES[0]), "--set", "data.prepared_dir=/nonexistent", "--check"]) == 0


def test_warmup_then_cosine():
    factor = warmup_cosine(total=100, warmup_ratio=0.1, start_factor=1e-5, min_ratio=0.0)
    assert factor(0) == pytest.approx(1e-5)
    assert factor(5) == pytest.approx(1e-5 + (1 - 1e-5) * 0.5)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(100) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("world", [pytest.param(1, id="1-rank"), pytest.param(2, id="2-ranks")])
def test_sample_order_partitions_each_epoch(world):
    orders = [SampleOrder(11, 2, seed=3, rank=r, world_size=world) for r in range(world)]
    batches = [o.micro_batches(0) for o in orders]
    assert len({len(b) for b in batches}) == 1
    seen = [i for rank in batches for batch in rank for i in batch]
    assert set(seen) == set(range(11)) and len(seen) == math.ceil(11 / (2 * world)) * 2 * world
    assert orders[0].permutation(0) != orders[0].permutation(1)
    assert orders[0].permutation(1) == SampleOrder(11, 2, seed=3).permutation(1)


@pytest.mark.parametrize(
    ("name", "part"),
    [
        pytest.param("model.visual.blocks.0.attn.qkv.weight", "vision", id="vision"),
        pytest.param("model.visual.merger.mlp.0.weight", "merger", id="merger"),
        pytest.param("model.language_model.layers.1.self_attn.nsa_gate.g_proj_1.weight", "gates", id="gates"),
        pytest.param("model.language_model.layers.1.self_attn.q_proj.weight", "llm", id="llm"),
        pytest.param("lm_head.weight", "llm", id="head"),
    ],
)
def test_parameter_parts(name, part):
    assert part_of(name) == part

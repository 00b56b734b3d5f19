"""Every shipped evaluation and pipeline config validates against its model."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import load_pipeline_config
from nsa_eval.config import load_eval_params

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_eval_config_loads(path: Path):
    params = load_eval_params(path)
    assert params.evaluate is not None or params.ablate


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "pipeline").glob("*.yaml")), ids=lambda p: p.name)
def test_pipeline_config_loads(path: Path):
    config = load_pipeline_config(path)
    assert config.evaluate.base.model_dir.startswith(next(o for o in config.train_overrides if "output_dir" in o)[11:])


def test_params_yaml_evaluation_sections_load():
    params = load_eval_params(ROOT / "params.yaml")
    assert params.evaluate is not None and [s.kind for s in params.ablate] == ["branches"]


def test_invalid_field_is_named(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluate: {kind: methods, base: {model_dir: m, task: {name: nope}}}\n")
    with pytest.raises(ValueError, match=r"(?s)bad.yaml.*task.name"):
        load_eval_params(bad)

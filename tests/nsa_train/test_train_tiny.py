"""The tiny recipe learns on the synthetic benchmark; its output loads for evaluation; MLflow records the run."""

from __future__ import annotations

import json

import pytest
import torch

from nsa_core.models.qwen2_5_vl import get_nsa_settings, load_nsa_model
from nsa_data.text import VideoQATokenizer
from nsa_train import train
from nsa_train.data import ExampleDataset, open_dataset


def test_tiny_recipe_loss_falls_and_model_reloads(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("NSA_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    config = tiny_config(
        "loop.max_steps=14",
        "loop.grad_accum=1",
        "loop.micro_batch_size=2",
        "tracking.backend=mlflow",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "system_metrics=false",
    )
    result = train(config)
    losses = [json.loads(line)["loss"] for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 14
    first, last = sum(losses[:2]) / 2, sum(losses[-3:]) / 3
    assert last < 0.5 * first, losses

    model = load_nsa_model(result.model_dir)
    tokenizer = VideoQATokenizer.load(result.model_dir)
    assert get_nsa_settings(model).nsa == config.model.nsa
    assert model.config.text_config.num_attention_heads // model.config.text_config.num_key_value_heads == 7
    batch = ExampleDataset(open_dataset(config.data), tokenizer).batch([0])
    with torch.no_grad():
        loss = model(**batch).loss.item()
    assert loss < first

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.data.params["optim.lr"] == str(config.optim.lr)
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, 15))
    assert [m.value for m in history] == pytest.approx(losses)
    assert {"train/lr", "train/tokens_per_s", "memory/peak_mb"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "model"} <= artifacts

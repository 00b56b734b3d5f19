"""Sweeps: 7 branch combinations with MLflow parent + nested runs, exact budgets with γ, and the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nsa_core.tracking import TrackingConfig
from nsa_eval import BRANCH_COMBINATIONS, EvalConfig, ReportConfig, SweepConfig, TaskConfig, render_report, run_sweep
from nsa_eval.ablations import attention_budget, sweep_configs


@pytest.fixture
def mlflow_env(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("NSA_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _base(ckpt: Path, data: Path, out: Path) -> EvalConfig:
    return EvalConfig(model_dir=str(ckpt), task=TaskConfig(root=str(data / "prepared"), limit=2), output_dir=str(out))


def test_budget_and_gamma_are_exact():
    assert attention_budget(32, 256, 64, 128_000) == pytest.approx({"K": 2304, "gamma": 0.036000281})
    assert attention_budget(4, 2048, 64, None) == {"K": 2304.0}


def test_sweep_grids(nsa_checkpoint, micro_data, tmp_path):
    base = _base(nsa_checkpoint, micro_data, tmp_path)
    branches = sweep_configs(SweepConfig(kind="branches", base=base))
    assert [p.config.method.branches for p in branches] == list(BRANCH_COMBINATIONS)
    assert len({p.config.run_dir for p in branches}) == 7
    budget = sweep_configs(SweepConfig(kind="budget", base=base, budget=((3, 4), (4, 8))))
    assert [(p.coords["b"], p.coords["w"], p.coords["K"]) for p in budget] == [(3, 4, 16.0), (4, 8, 24.0)]
    info = sweep_configs(SweepConfig(kind="information", base=base, frames=(4, 8), tokens_per_frame=(4, 16)))
    assert [(p.config.task.frames, p.config.task.tokens_per_frame) for p in info] == [(4, 4), (4, 16), (8, 4), (8, 16)]


def test_branch_ablation_logs_parent_and_nested_runs_and_report(nsa_checkpoint, micro_data, tmp_path, mlflow_env):
    import mlflow

    tracking = TrackingConfig(experiment="test-sweeps")
    sweep = SweepConfig(kind="branches", base=_base(nsa_checkpoint, micro_data, tmp_path / "eval"), tracking=tracking)
    results = run_sweep(sweep)
    assert [r["label"] for r in results["rows"]] == ["+".join(c) for c in BRANCH_COMBINATIONS]
    assert all(r["ok"] for r in results["rows"]), [r["error"] for r in results["rows"]]
    assert "inference-time" in results["note"]

    mlflow.set_tracking_uri(mlflow_env)
    runs = mlflow.search_runs(experiment_names=["test-sweeps"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 7
    assert all("accuracy" in r.data.metrics and r.data.params["branches"] for r in children)
    artifacts = mlflow.artifacts.list_artifacts(run_id=children[0].info.run_id)
    assert [a.path for a in artifacts] == ["predictions.jsonl"]

    budget = SweepConfig(
        kind="budget",
        base=_base(nsa_checkpoint, micro_data, tmp_path / "eval"),
        budget=((3, 4), (1, 4)),
        tracking=tracking,
    )
    budget_rows = run_sweep(budget)["rows"]
    assert budget_rows[0]["ok"] and budget_rows[0]["coords"]["gamma"] == pytest.approx(2 * 16 / (16 - 1))
    assert not budget_rows[1]["ok"] and "forced" in budget_rows[1]["error"]  # b below the forced blocks: recorded

    paths = render_report(
        ReportConfig(sweeps=(str(tmp_path / "eval"),), out_dir=str(tmp_path / "report"), tracking=tracking)
    )
    markdown = Path(paths["markdown"]).read_text()
    for row in results["rows"] + budget_rows[:1]:
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {row['label']} |"))
        assert re.search(r"\| \d+\.\d \|", line), line
    assert "failed:" in markdown
    assert "data:image/png;base64," in Path(paths["html"]).read_text()
    assert (tmp_path / "report" / "branches-synthetic.png").stat().st_size > 1000
    assert json.loads(Path(paths["json"]).read_text())["sweeps"]

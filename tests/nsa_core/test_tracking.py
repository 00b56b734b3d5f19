"""The tracking chooser: a null tracker by request, MLflow runs (nested, flattened params) under the artifact root."""

from __future__ import annotations

import pytest

from nsa_core.tracking import Tracker, TrackingConfig, choose_tracker, flatten


def test_null_tracker_records_nothing_and_yields_no_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("NSA_ARTIFACT_ROOT", str(tmp_path))
    tracker = choose_tracker(TrackingConfig(backend="none"))
    assert type(tracker) is Tracker
    with tracker.run("x", params={"a": 1}) as run_id:
        tracker.log_metrics({"loss": 1.0}, step=0)
    assert run_id is None
    assert not (tmp_path / "mlflow.db").exists()


def test_flatten_joins_nested_keys():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": 2}) == {"a.b": 1, "a.c.d": "x", "e": 2}


def test_mlflow_tracker_writes_nested_runs_under_the_artifact_root(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("NSA_ARTIFACT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = choose_tracker(TrackingConfig(experiment="unit"))
    report = tmp_path / "report.md"
    report.write_text("# report\n")
    with tracker.run("sweep", params={"nsa": {"window": 256}}) as parent:
        for budget in (1, 2):
            with tracker.run(f"cfg{budget}", params={"budget": budget}, nested=True):
                tracker.log_metrics({"accuracy": budget / 4}, step=0)
        tracker.log_artifact(report)
    assert (tmp_path / "mlflow.db").exists()
    runs = mlflow.search_runs(experiment_names=["unit"])
    assert len(runs) == 3
    children = runs[runs["tags.mlflow.parentRunId"] == parent]
    assert sorted(children["metrics.accuracy"]) == [0.25, 0.5]
    assert runs.loc[runs["run_id"] == parent, "params.nsa.window"].item() == "256"
    assert (tmp_path / "mlartifacts" / "unit").is_dir()

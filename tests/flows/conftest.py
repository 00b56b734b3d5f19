"""Prefect's test harness once per session, and a micro workspace (configs copied into a temp folder)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server and database for the whole session (started once: 6-9 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def micro_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp working directory holding ``configs/`` with its own artifact root and MLflow database."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NSA_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'artifacts' / 'mlflow.db'}")
    return tmp_path

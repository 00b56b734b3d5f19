"""Experiment tracking behind one small interface: a null tracker, or MLflow when asked for.

Library code calls :func:`choose_tracker` and never imports mlflow itself, so training and
evaluation run without it. Everything lands under one artifact root (``NSA_ARTIFACT_ROOT``,
default ``./artifacts``): the MLflow sqlite database and the run artifacts.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ARTIFACT_ROOT_ENV = "NSA_ARTIFACT_ROOT"


def artifact_root() -> Path:
    """The project's one artifact root: ``$NSA_ARTIFACT_ROOT`` or ``./artifacts`` (created on demand)."""
    root = Path(os.environ.get(ARTIFACT_ROOT_ENV, "artifacts")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


class TrackingConfig(BaseModel):
    """Where runs are recorded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["mlflow", "none"] = "mlflow"
    """``mlflow`` records runs; ``none`` records nothing."""
    tracking_uri: str | None = None
    """MLflow tracking URI; ``None`` uses ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<artifact root>/mlflow.db``."""
    experiment: str = "videonsa"
    """MLflow experiment name."""


class Tracker:
    """The null tracker: accepts every call and records nothing. Subclasses record."""

    @contextlib.contextmanager
    def run(
        self,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        nested: bool = False,
    ) -> Iterator[str | None]:
        """Open a run (nested inside the active one if ``nested``); yields its id (``None`` here)."""
        yield None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record parameters of the active run (nested mappings are flattened with dots)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metric values of the active run at ``step``."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file or folder to the active run."""

    def log_text(self, text: str, file_name: str) -> None:
        """Attach a text file (e.g. a config as YAML) to the active run."""


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def provenance_tags() -> dict[str, str]:
    """The git commit of the working tree and the hash of ``dvc.lock``, when available."""
    tags = {}
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        tags["git_sha"] = sha
    lock = Path("dvc.lock")
    if lock.exists():
        import hashlib

        tags["dvc_lock_sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()
    return tags


class MLflowTracker(Tracker):
    """Records runs in MLflow (sqlite backend under the artifact root by default), telemetry off."""

    def __init__(self, config: TrackingConfig):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        self._mlflow = mlflow
        root = artifact_root()
        uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name(config.experiment)
        if experiment is None:
            location = (root / "mlartifacts" / config.experiment).as_uri()
            mlflow.create_experiment(config.experiment, artifact_location=location)
        mlflow.set_experiment(config.experiment)
        self.tracking_uri = uri

    @contextlib.contextmanager
    def run(
        self,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        nested: bool = False,
    ) -> Iterator[str | None]:
        with self._mlflow.start_run(run_name=name, nested=nested, tags={**provenance_tags(), **(tags or {})}) as run:
            if params:
                self.log_params(params)
            yield run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params).items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_text(self, text: str, file_name: str) -> None:
        self._mlflow.log_text(text, file_name)


def choose_tracker(config: TrackingConfig | None = None) -> Tracker:
    """The tracker for ``config``: :class:`MLflowTracker` for ``backend="mlflow"``, else the null tracker.

    Raises:
        ValueError: when MLflow is requested but not installed.
    """
    config = config or TrackingConfig()
    if config.backend == "none":
        return Tracker()
    try:
        return MLflowTracker(config)
    except ImportError as error:
        raise ValueError(
            "tracking.backend='mlflow' needs mlflow (install nsa-core[tracking]) or set tracking.backend='none'"
        ) from error

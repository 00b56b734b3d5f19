"""Fixtures for nsa_train: a small prepared synthetic benchmark and the tiny recipe pointed at it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from nsa_data.config import PrepareConfig, SamplingConfig, SynthConfig
from nsa_data.shards import prepare_shards
from nsa_data.synth.generate import generate_synthetic
from nsa_train import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO / "configs" / "train" / "tiny.yaml"


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 four-second 56×56 synthetic videos at 4 fps (32 LLM video tokens each), all in the train split."""
    root = tmp_path_factory.mktemp("synth")
    synth = SynthConfig(num_videos=16, durations=(4.0,), width=56, height=56, test_fraction=0.0, distractors=1)
    manifest = generate_synthetic(synth, root / "synth", progress=False)
    prepare = PrepareConfig(sampling=SamplingConfig(fps=4.0, max_pixels=56 * 56), num_workers=1)
    prepare_shards(manifest, root / "prepared", prepare, progress=False)
    return root / "prepared"


@pytest.fixture
def tiny_config(prepared_dir: Path, tmp_path: Path) -> Callable[..., TrainConfig]:
    """The shipped tiny recipe on the small data, no tracking, no progress bar; extra ``key=value`` overrides."""

    def make(*overrides: str, output_dir: Path | None = None) -> TrainConfig:
        base = [
            f"data.prepared_dir={prepared_dir}",
            f"output_dir={output_dir or tmp_path / 'run'}",
            "tracking.backend=none",
            "loop.progress=false",
        ]
        return load_config(TINY_RECIPE, overrides=[*base, *overrides])

    return make


@pytest.fixture
def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """Environment for child processes: offline, telemetry off, artifacts under the test's folder."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "NSA_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }

"""Shared fixtures: seeding, NaN poisoning of fresh allocations, and the one place for skip reasons."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

# The same no-network, no-telemetry settings as scripts/project-env.sh, for a bare `python -m pytest` too.
for name, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(name, value)
if not torch.cuda.is_available():
    # Triton reads this when @triton.jit decorates a kernel, and any test that loads the backend plugins imports
    # nsa_kernels; set it before the first test is collected so the CPU suite always runs the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

CUDA_REASON = "needs a CUDA GPU (run on the device machine; see benchmarks/results for recorded runs)"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)


@pytest.fixture(scope="session")
def benchmark_script():
    """Loader of a script in ``benchmarks/`` as a module (the folder is not a package): ``benchmark_script("name")``."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def poison_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fill every ``torch.empty``/``empty_like`` allocation with NaN, so a kernel that skips a tile fails."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    def poisoned_like(*args, **kwargs):
        out = empty_like(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", poisoned)
    monkeypatch.setattr(torch, "empty_like", poisoned_like)

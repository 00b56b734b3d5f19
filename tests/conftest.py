"""Shared fixtures: seeding, NaN poisoning of fresh allocations, and the one place for skip reasons."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
if not torch.cuda.is_available():
    # Triton reads this when @triton.jit decorates a kernel, and any test that loads the backend plugins imports
    # nsa_kernels; set it before the first test is collected so the CPU suite always runs the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

CUDA_REASON = "needs a CUDA GPU (run on the device machine; see benchmarks/results for recorded runs)"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)


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

"""Resumable checkpoints in safetensors plus JSON, written atomically (temp folder, then ``os.replace``).

A checkpoint folder ``<output>/checkpoints/step-<N>`` holds:

- ``model.safetensors``: the full (unsharded) model state, fp32;
- ``optimizer.safetensors`` + ``optimizer.json``: AdamW tensors keyed ``<fqn>/<name>`` and the param groups;
- ``rng-rank<R>.safetensors``: each rank's torch CPU (and CUDA) generator state;
- ``state.json``: step, data position (epoch, micro-batch, the epoch's sample order), scheduler state,
  Python and NumPy RNG states of rank 0, and the run config.

Only folders named ``step-*`` count; a crash mid-write leaves a ``.tmp-*`` folder that is ignored and removed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

STATE_FILE = "state.json"


@dataclass
class TrainState:
    """Where training stands after ``step`` optimizer steps."""

    step: int = 0
    epoch: int = 0
    micro_batch: int = 0
    """Micro-batches of ``epoch`` already consumed by this rank."""


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def checkpoint_root(output_dir: Path) -> Path:
    """``<output_dir>/checkpoints``."""
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or ``None``."""
    root = checkpoint_root(output_dir)
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for fqn, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{fqn}/{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{fqn}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        fqn, _, name = key.rpartition("/")
        state.setdefault(fqn, {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    return tensors


def save_checkpoint(
    output_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    order: list[int],
    config: dict[str, Any],
    keep: int,
) -> Path:
    """Write a checkpoint for ``state.step`` on every rank's behalf; collective when distributed.

    Args:
        output_dir: Run output folder.
        model: The (possibly FSDP-sharded) model.
        optimizer: Its optimizer.
        scheduler: The learning-rate scheduler.
        state: Step and data position after the step.
        order: The current epoch's global sample order.
        config: The run config as JSON-able data.
        keep: Most recent checkpoints to keep.

    Returns:
        The final checkpoint folder.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    root = checkpoint_root(output_dir)
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-step-{state.step:08d}"
    if _is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    rank = dist.get_rank() if dist.is_initialized() else 0
    save_file(_rng_tensors(), str(tmp / f"rng-rank{rank}.safetensors"))
    if _is_main():
        save_file({k: v.contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        tensors, meta = _flatten_optimizer(optim_state)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        numpy_state = np.random.get_state()
        payload = {
            "step": state.step,
            "epoch": state.epoch,
            "micro_batch": state.micro_batch,
            "order": order,
            "scheduler": scheduler.state_dict(),
            "python_rng": random.getstate(),
            "numpy_rng": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
            "config": config,
        }
        (tmp / STATE_FILE).write_text(json.dumps(payload))
    _barrier()
    if _is_main():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[TrainState, list[int]]:
    """Restore model, optimizer, scheduler and RNG states in place.

    Args:
        path: A checkpoint folder (see :func:`latest_checkpoint`).
        model: The model, built and sharded as when saving.
        optimizer: Its optimizer.
        scheduler: The scheduler.

    Returns:
        The train state and the sample order of the current epoch.

    Raises:
        ValueError: when the checkpoint was written by a different number of ranks.
    """
    payload = json.loads((path / STATE_FILE).read_text())
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = path / f"rng-rank{rank}.safetensors"
    if not rng_file.is_file():
        raise ValueError(f"{path} has no RNG state for rank {rank}; resume with the world size it was written with")
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, load_file(str(path / "model.safetensors")), options=options)
    meta = json.loads((path / "optimizer.json").read_text())
    optim_state = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), meta)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)
    scheduler.load_state_dict(payload["scheduler"])
    rng = load_file(str(rng_file))
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
    version, internal, gauss = payload["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = payload["numpy_rng"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    state = TrainState(payload["step"], payload["epoch"], payload["micro_batch"])
    return state, payload["order"]

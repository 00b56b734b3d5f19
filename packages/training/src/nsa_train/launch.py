"""Multi-process launchers around the one training function: Ray Train ``TorchTrainer`` and ``torchrun``.

Both run :func:`nsa_train.trainer.run_training` on every rank; sharding (FSDP2 or replicated) is chosen by
``config.distributed.shard``. Ray is imported only here and only when this launcher is used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from nsa_train.config import TrainConfig
from nsa_train.trainer import RESULT_FILE, TrainResult, run_training


def _ray_worker(loop_config: dict[str, Any]) -> None:
    import ray.train

    result = run_training(TrainConfig.model_validate(loop_config["config"]), resume=loop_config["resume"])
    ray.train.report(result.final_metrics)


def train_with_ray(config: TrainConfig, resume: bool = False, ray_init: dict[str, Any] | None = None) -> TrainResult:
    """Run the training function on ``config.distributed.num_workers`` Ray Train workers.

    Ray must stay on loopback: run it inside a loopback-only network namespace (``unshare -n``) with
    ``$HOME/ray_bootstrap_config.yaml`` holding ``provider: {type: local}`` (see the package README).

    Args:
        config: The run config; ``distributed.use_gpu`` gives each worker a GPU (nccl), else CPU workers (gloo).
        resume: Continue from the latest checkpoint in the output folder.
        ray_init: Keyword arguments of ``ray.init`` when no Ray runtime is running yet
            (e.g. ``{"num_cpus": 2, "include_dashboard": False, "object_store_memory": 512 * 2**20}``).

    Returns:
        Rank 0's result (read from ``<output_dir>/result.json``).

    Raises:
        ValueError: when Ray Train is not installed (``pip install nsa-train[ray]``).
    """
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as error:
        raise ValueError(
            "the Ray launcher needs Ray Train: install nsa-train[ray] or use --launcher torchrun"
        ) from error
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(**{"include_dashboard": False, **(ray_init or {})})
    dist = config.distributed
    backend = dist.backend if dist.backend != "auto" else ("nccl" if dist.use_gpu else "gloo")
    out = config.resolved_output_dir().resolve()
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "resume": resume},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=dist.num_workers, use_gpu=dist.use_gpu),
        run_config=RunConfig(name=config.name, storage_path=str(out / "ray")),
    )
    trainer.fit()
    return TrainResult.from_json((out / RESULT_FILE).read_text())


def torchrun_command(nproc: int, cli_args: list[str]) -> list[str]:
    """The ``torchrun`` command that runs ``nsa-train <cli_args>`` on ``nproc`` local ranks (loopback rendezvous)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "nsa_train.cli",
        *cli_args,
    ]


def train_with_torchrun(nproc: int, cli_args: list[str]) -> int:
    """Launch ``nproc`` local ranks with torchrun and wait; returns its exit code.

    Args:
        nproc: Processes (one per GPU on a GPU host).
        cli_args: ``nsa-train`` arguments for every rank (without ``--launcher``).
    """
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1"}
    return subprocess.run(torchrun_command(nproc, cli_args), env=env, check=False).returncode

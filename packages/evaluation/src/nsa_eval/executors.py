"""Fan a sweep's configurations out: in process, as Ray tasks, or one subprocess per GPU.

Every executor runs ``fn(item)`` for JSON-serialisable items and returns one :class:`Outcome` per item, in
order; a failing item becomes a failed outcome with the error text and the others go on. ``fn`` must be a
module-level function (the subprocess executor re-imports it by name).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsa_eval.config import ExecutorConfig

Fn = Callable[[Any], Any]


@dataclass
class Outcome:
    """Result of one item: ``value`` when ``ok``, else ``error`` (exception text)."""

    ok: bool
    value: Any = None
    error: str | None = None


class Executor:
    """Interface: ``map(fn, items) -> list[Outcome]`` in item order."""

    def map(self, fn: Fn, items: Sequence[Any]) -> list[Outcome]:
        """Run ``fn`` on every item."""
        raise NotImplementedError


class LocalExecutor(Executor):
    """In process, one item after another."""

    def map(self, fn: Fn, items: Sequence[Any]) -> list[Outcome]:
        """Run ``fn`` on every item, recording exceptions as failed outcomes."""
        outcomes = []
        for item in items:
            try:
                outcomes.append(Outcome(True, fn(item)))
            except Exception as err:
                outcomes.append(Outcome(False, error=f"{type(err).__name__}: {err}"))
        return outcomes


class RayExecutor(Executor):
    """One Ray task per item with ``num_gpus``/``num_cpus`` per task; starts a local Ray or joins ``address``.

    Ray must run where nothing leaves the host in tests (a loopback-only namespace, see the README).
    """

    def __init__(
        self,
        address: str | None = None,
        num_gpus_per_task: float = 0.0,
        num_cpus_per_task: float = 1.0,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Configure the executor (Ray starts at the first ``map`` unless already initialised).

        Args:
            address: ``None`` for a local Ray, ``auto`` or ``ray://host:port`` for a cluster.
            num_gpus_per_task: GPUs requested per item (logical GPUs work for tests).
            num_cpus_per_task: CPUs requested per item.
            init_kwargs: Extra ``ray.init`` arguments (e.g. ``num_cpus``, ``num_gpus``, ``object_store_memory``).
        """
        self.address, self.num_gpus, self.num_cpus = address, num_gpus_per_task, num_cpus_per_task
        self.init_kwargs = {"include_dashboard": False, **(init_kwargs or {})}

    def map(self, fn: Fn, items: Sequence[Any]) -> list[Outcome]:
        """Submit every item and gather in order."""
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, **self.init_kwargs)
        remote = ray.remote(num_gpus=self.num_gpus, num_cpus=self.num_cpus, max_retries=0)(_capture)
        refs = [remote.remote(fn, item) for item in items]
        return [Outcome(**ray.get(ref)) for ref in refs]


def _capture(fn: Fn, item: Any) -> dict[str, Any]:
    try:
        return {"ok": True, "value": fn(item)}
    except Exception as err:
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}


def visible_gpus() -> tuple[str, ...]:
    """Ids of the visible CUDA devices (``CUDA_VISIBLE_DEVICES`` or torch's count); empty without GPUs."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return tuple(g for g in env.split(",") if g.strip())
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count()))


class SubprocessGPUExecutor(Executor):
    """One worker thread per GPU id; each pulls items from a queue and runs each in a fresh subprocess
    with ``CUDA_VISIBLE_DEVICES=<id>``. For GPU hosts without Ray."""

    def __init__(self, gpus: Sequence[str] = (), python: str = sys.executable) -> None:
        """Configure the executor.

        Args:
            gpus: Device ids; empty uses :func:`visible_gpus`.
            python: Interpreter of the workers.

        Raises:
            ValueError: when no device id is given or visible.
        """
        self.gpus = tuple(gpus) or visible_gpus()
        if not self.gpus:
            raise ValueError("SubprocessGPUExecutor needs GPU ids: set executor.gpus or make GPUs visible")
        self.python = python

    def _run(self, fn: Fn, item: Any, gpu: str, workdir: Path, index: int) -> Outcome:
        src, dst = workdir / f"{index}.in.json", workdir / f"{index}.out.json"
        src.write_text(json.dumps({"fn": f"{fn.__module__}:{fn.__qualname__}", "item": item}))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        proc = subprocess.run(
            [self.python, "-m", "nsa_eval.worker", str(src), str(dst)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not dst.is_file():
            return Outcome(False, error=f"worker on GPU {gpu} exited {proc.returncode}: {proc.stderr[-2000:]}")
        return Outcome(**json.loads(dst.read_text()))

    def map(self, fn: Fn, items: Sequence[Any]) -> list[Outcome]:
        """Run the items over the GPUs, at most one subprocess per GPU at a time."""
        outcomes: list[Outcome | None] = [None] * len(items)
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(items)):
            todo.put(i)
        with tempfile.TemporaryDirectory(prefix="nsa-eval-") as tmp:

            def worker(gpu: str) -> None:
                while True:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        outcomes[i] = self._run(fn, items[i], gpu, Path(tmp), i)
                    except Exception:
                        outcomes[i] = Outcome(False, error=traceback.format_exc(limit=3))

            threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in self.gpus]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        return [o if o is not None else Outcome(False, error="not run") for o in outcomes]


def make_executor(config: ExecutorConfig) -> Executor:
    """The executor for ``config.kind``."""
    if config.kind == "ray":
        return RayExecutor(config.ray_address, config.num_gpus_per_task, config.num_cpus_per_task)
    if config.kind == "subprocess":
        return SubprocessGPUExecutor(config.gpus)
    return LocalExecutor()

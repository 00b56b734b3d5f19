"""Benchmarks behind one interface: ``get_task(config).load()``, ``.prompt``, ``.parse``, ``.score``."""

from __future__ import annotations

from nsa_eval.config import TaskConfig
from nsa_eval.tasks.base import Prompt, Sample, Task, TaskDataError
from nsa_eval.tasks.benchmarks import MLVU, LongTimeScope, LongVideoBench, TimeScope, Tomato, VSIBench
from nsa_eval.tasks.synthetic import SyntheticTask

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (SyntheticTask, LongVideoBench, MLVU, TimeScope, LongTimeScope, Tomato, VSIBench)
}


def get_task(config: TaskConfig) -> Task:
    """The task for ``config.name``.

    Args:
        config: Task config.

    Returns:
        The task bound to the config.

    Raises:
        ValueError: for an unknown name (lists the known ones).
    """
    if config.name not in TASKS:
        raise ValueError(f"unknown task {config.name!r}; choose from {sorted(TASKS)}")
    return TASKS[config.name](config)


__all__ = ["TASKS", "Prompt", "Sample", "Task", "TaskDataError", "get_task"]

"""Video-QA evaluation of dense and NSA Qwen2.5-VL: tasks, methods, sweeps, executors and reports.

Entry points: :func:`evaluate` (one run, resumable), :func:`run_sweep` (methods / branches / budget /
information sweeps through an executor, logged to MLflow), :func:`render_report`, and the ``nsa-eval`` CLI.
"""

from nsa_eval.ablations import BRANCH_COMBINATIONS, attention_budget, run_sweep, sweep_configs
from nsa_eval.config import (
    EvalConfig,
    EvalParams,
    ExecutorConfig,
    MethodConfig,
    ReportConfig,
    SweepConfig,
    TaskConfig,
    load_eval_params,
)
from nsa_eval.evaluate import EvalResult, evaluate
from nsa_eval.executors import Executor, LocalExecutor, RayExecutor, SubprocessGPUExecutor, make_executor
from nsa_eval.report import render_report
from nsa_eval.tasks import TASKS, Sample, Task, get_task

__all__ = [
    "BRANCH_COMBINATIONS",
    "TASKS",
    "EvalConfig",
    "EvalParams",
    "EvalResult",
    "Executor",
    "ExecutorConfig",
    "LocalExecutor",
    "MethodConfig",
    "RayExecutor",
    "ReportConfig",
    "Sample",
    "SubprocessGPUExecutor",
    "SweepConfig",
    "Task",
    "TaskConfig",
    "attention_budget",
    "evaluate",
    "get_task",
    "load_eval_params",
    "make_executor",
    "render_report",
    "run_sweep",
    "sweep_configs",
]

"""Typed, frozen configuration of evaluations, sweeps and reports, shared by the CLI, DVC params and Prefect.

Imports only pydantic, the standard library and ``nsa_core`` configs, so flows and tests validate configs
cheaply. ``params.yaml`` sections ``evaluate``, ``ablate`` and ``report`` round-trip through :class:`EvalParams`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nsa_core.config import Branch
from nsa_core.configio import read_yaml_mapping
from nsa_core.tracking import TrackingConfig

MethodName = Literal["dense", "nsa", "dense-transfer", "nsa-at-test"]
TaskName = Literal["synthetic", "longvideobench", "mlvu", "timescope", "longtimescope", "tomato", "vsibench"]
AblationKind = Literal["methods", "branches", "budget", "information"]

ITERATION_BUDGET: tuple[tuple[int, int], ...] = (
    (36, 32),
    (35, 64),
    (34, 128),
    (32, 256),
    (28, 512),
    (20, 1024),
    (4, 2048),
)
"""Spec §9.4 step 2: (b, w) on the iso-budget line K = 2304 at s = 64 (the last point uses w = 2048)."""
EXTENDED_BUDGET: tuple[tuple[int, int], ...] = ((64, 512), (40, 1024), (16, 128), (17, 64), (10, 512))
"""Spec §9.4 step 3: doubled and halved budgets around the best configuration."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MethodConfig(_Frozen):
    """How a checkpoint is run.

    ``dense``: stock attention. ``nsa``: hybrid NSA with the checkpoint's gates. ``dense-transfer``: NSA-trained
    weights run dense (spec §9.2). ``nsa-at-test``: dense weights converted to NSA, gates at their ≈ 0.5 init or
    ``fixed_gates``. The optional fields override the NSA budget at run time (ignored by dense methods).
    """

    name: MethodName = "nsa"
    """Method name."""
    num_selected: int | None = Field(None, ge=1)
    """Selected blocks ``n`` (``b`` in the budget sweep); None keeps the checkpoint's."""
    window: int | None = Field(None, ge=1)
    """Sliding window ``w``; None keeps the checkpoint's."""
    branches: tuple[Branch, ...] | None = None
    """Enabled branches; a disabled branch's gate is effectively 0 with no renormalisation (inference-time)."""
    fixed_gates: tuple[float, float, float] | None = None
    """Constant (cmp, slc, swd) gates instead of the learned ones."""

    @property
    def attention(self) -> Literal["nsa", "dense"]:
        """The attention mode the model runs in."""
        return "dense" if self.name in ("dense", "dense-transfer") else "nsa"

    def overrides(self) -> dict[str, Any]:
        """Keyword arguments for ``nsa_core.models.qwen2_5_vl.update_nsa_settings``."""
        changes: dict[str, Any] = {"attention": self.attention}
        for key in ("num_selected", "window", "branches", "fixed_gates"):
            value = getattr(self, key)
            if value is not None:
                changes[key] = value
        return changes

    def label(self) -> str:
        """Short, file-name-safe description, e.g. ``nsa-n8-w16-cmp+slc``."""
        parts = [self.name]
        if self.num_selected is not None:
            parts.append(f"n{self.num_selected}")
        if self.window is not None:
            parts.append(f"w{self.window}")
        if self.branches is not None:
            parts.append("+".join(self.branches))
        if self.fixed_gates is not None:
            parts.append("g" + "_".join(f"{g:g}" for g in self.fixed_gates))
        return "-".join(parts)


class TaskConfig(_Frozen):
    """Which benchmark, from which local copy, sampled how."""

    name: TaskName = "synthetic"
    """Benchmark name (see ``nsa_eval.tasks.TASKS``)."""
    root: str = "data/prepared"
    """Local copy: a prepared folder (``nsa-data prepare``) or a synthetic folder for ``synthetic``; the
    benchmark's downloaded folder otherwise."""
    video_root: str | None = None
    """Folder that relative video paths are relative to; None: the task's rule (synthetic: ``<root>/../synth``
    for a prepared folder, the manifest's folder otherwise; benchmarks: ``root``)."""
    split: str = "test"
    """Split to evaluate (synthetic: ``test``; benchmarks ignore it unless their files carry splits)."""
    limit: int | None = Field(None, ge=1)
    """Evaluate only the first ``limit`` samples (in file order)."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Generation length; None uses the benchmark's (spec §7 table)."""
    frames: int | None = Field(None, ge=2)
    """Frames F (``max_frames``); None uses the prepared shards (synthetic) or the benchmark's setting."""
    tokens_per_frame: int | None = Field(None, ge=4)
    """TPF; ``max_pixels = TPF·784``. None uses the prepared shards or the benchmark's setting."""
    fps: float | None = Field(None, gt=0)
    """Sampling rate; None uses 4 fps (spec §7: plausible default)."""

    @property
    def resample(self) -> bool:
        """Whether videos are decoded and sampled at evaluation time instead of read from prepared shards."""
        return self.frames is not None or self.tokens_per_frame is not None or self.fps is not None


class EvalConfig(_Frozen):
    """One evaluation: a checkpoint run with one method on one task."""

    model_dir: str
    """Checkpoint folder (``save_pretrained`` model plus the tokenizer written by training)."""
    tokenizer_dir: str | None = None
    """Tokenizer folder when it is not inside ``model_dir``."""
    task: TaskConfig = TaskConfig()
    """The benchmark."""
    method: MethodConfig = MethodConfig()
    """How the checkpoint is run."""
    output_dir: str = "artifacts/eval"
    """Predictions and metrics go to ``<output_dir>/<run_name>/``."""
    name: str | None = None
    """Run name; default ``<task>-<method label>[-F<frames>-TPF<tpf>]``."""
    device: str = "cpu"
    """Torch device (``cpu``, ``cuda``, ``cuda:0`` ...)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Model dtype."""
    system_prompt: str = "You are a helpful assistant."
    """System prompt (VideoNSA's lmms-eval wrapper)."""
    tracking: TrackingConfig = TrackingConfig(backend="none")
    """Where a standalone evaluation records its run; sweeps record nested runs themselves."""

    @property
    def run_name(self) -> str:
        """The run name, file-name safe."""
        if self.name:
            return re.sub(r"[^A-Za-z0-9_.+=-]", "_", self.name)
        name = f"{self.task.name}-{self.method.label()}"
        if self.task.frames is not None or self.task.tokens_per_frame is not None:
            name += f"-F{self.task.frames or 'auto'}-TPF{self.task.tokens_per_frame or 'auto'}"
        return name

    @property
    def run_dir(self) -> Path:
        """Folder of this run's predictions and metrics."""
        return Path(self.output_dir) / self.run_name


class ExecutorConfig(_Frozen):
    """Where the configurations of a sweep run."""

    kind: Literal["local", "ray", "subprocess"] = "local"
    """``local``: in process, one after another; ``ray``: Ray tasks; ``subprocess``: one process per GPU."""
    gpus: tuple[str, ...] = ()
    """Device ids for ``subprocess`` (one worker per id, via ``CUDA_VISIBLE_DEVICES``); empty: visible GPUs."""
    num_gpus_per_task: float = Field(0.0, ge=0)
    """Ray resource request per configuration."""
    num_cpus_per_task: float = Field(1.0, gt=0)
    """Ray resource request per configuration."""
    ray_address: str | None = None
    """``None`` starts a local Ray; ``auto`` or ``ray://host:port`` joins a cluster."""


class SweepConfig(_Frozen):
    """One ablation: a base evaluation and the grid that varies it."""

    kind: AblationKind = "branches"
    """``methods``, ``branches`` (7 combinations), ``budget`` (b by w) or ``information`` (frames by TPF)."""
    base: EvalConfig
    """The evaluation every configuration starts from."""
    methods: tuple[MethodConfig, ...] = (MethodConfig(name="dense-transfer"), MethodConfig(name="nsa"))
    """``methods`` sweep: the methods to compare."""
    budget: tuple[tuple[int, int], ...] = ITERATION_BUDGET + EXTENDED_BUDGET
    """``budget`` sweep: (b, w) pairs with exact counts."""
    frames: tuple[int, ...] = (32, 64, 128, 256)
    """``information`` sweep: frame counts F."""
    tokens_per_frame: tuple[int, ...] = (64, 128, 256, 512)
    """``information`` sweep: tokens per frame TPF."""
    executor: ExecutorConfig = ExecutorConfig()
    """Where the configurations run."""
    tracking: TrackingConfig = TrackingConfig()
    """Parent run plus one nested run per configuration."""
    name: str | None = None
    """Sweep name; default ``<kind>-<task>``."""

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if self.kind == "methods" and not self.methods:
            raise ValueError("methods must name at least one method for kind='methods'")
        if self.kind == "budget" and not self.budget:
            raise ValueError("budget must list (b, w) pairs for kind='budget'")
        if self.kind == "information" and not (self.frames and self.tokens_per_frame):
            raise ValueError("frames and tokens_per_frame must be non-empty for kind='information'")
        return self

    @property
    def sweep_name(self) -> str:
        """The sweep (parent run) name."""
        return self.name or f"{self.kind}-{self.base.task.name}"


class ReportConfig(_Frozen):
    """Render a report from finished sweeps."""

    sweeps: tuple[str, ...] = ("artifacts/eval",)
    """``results.json`` files, or folders searched recursively for them."""
    out_dir: str = "artifacts/report"
    """Folder of ``report.md``, ``report.html``, ``report.json`` and the PNG plots."""
    title: str = "VideoNSA evaluation report"
    """Page title."""
    tracking: TrackingConfig = TrackingConfig()
    """The report is attached to a run named ``report``."""


class EvalParams(BaseModel):
    """The evaluation sections of ``params.yaml``; other sections (synth, prepare, train) are kept as-is."""

    model_config = ConfigDict(frozen=True, extra="allow")

    evaluate: SweepConfig | None = None
    """The ``methods`` sweep of the pipeline (dense vs NSA)."""
    ablate: tuple[SweepConfig, ...] = ()
    """Further sweeps (branches, budget, information)."""
    report: ReportConfig = ReportConfig()
    """The report stage."""


def load_eval_params(path: str | Path) -> EvalParams:
    """Load and validate the evaluation sections of a params file.

    Args:
        path: ``params.yaml`` (or any YAML with ``evaluate``/``ablate``/``report`` sections).

    Returns:
        The validated params.

    Raises:
        ValueError: naming the file and the invalid field.
    """
    try:
        return EvalParams.model_validate(read_yaml_mapping(path))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err

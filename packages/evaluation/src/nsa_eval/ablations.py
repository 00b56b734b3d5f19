"""Sweeps as one call each: methods, the 7 branch combinations, b × w attention budgets, frames × TPF.

:func:`sweep_configs` expands a :class:`SweepConfig` into evaluations; :func:`run_sweep` runs them through an
executor, logs one MLflow parent run with a nested run per configuration (params, metrics, predictions file)
and writes ``<output_dir>/<sweep>/results.json``, the input of the report.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsa_core.config import BRANCHES, NSAConfig
from nsa_core.tracking import Tracker, choose_tracker
from nsa_eval.config import EvalConfig, SweepConfig
from nsa_eval.evaluate import evaluate_json
from nsa_eval.executors import Executor, make_executor

BRANCH_COMBINATIONS: tuple[tuple[str, ...], ...] = tuple(
    combo for r in (1, 2, 3) for combo in itertools.combinations(BRANCHES, r)
)
"""CMP, SLC, SWD; CMP+SLC, CMP+SWD, SLC+SWD; all three (spec §9.1)."""


@dataclass(frozen=True)
class SweepPoint:
    """One configuration of a sweep: the evaluation and the grid coordinates it stands for."""

    label: str
    config: EvalConfig
    coords: dict[str, Any]


def checkpoint_nsa(model_dir: str | Path) -> NSAConfig:
    """The operator settings stored in a checkpoint's ``config.json`` (defaults for a dense checkpoint)."""
    path = Path(model_dir) / "config.json"
    raw = json.loads(path.read_text()).get("nsa") if path.is_file() else None
    return NSAConfig.model_validate(raw["nsa"]) if raw and "nsa" in raw else NSAConfig()


def attention_budget(b: int, w: int, s: int, length: float | None) -> dict[str, float]:
    """Exact budget ``K = b·s + w`` and ``γ = 2K / (L − 1)`` (spec §9.4); γ is omitted without a length.

    Args:
        b: Selected blocks.
        w: Window.
        s: Selection block size.
        length: Sequence length L the sparse attention runs over (vision tokens).

    Returns:
        ``K`` and, when ``L > 1``, ``gamma`` as a fraction (γ may exceed 1 when K ≥ L/2 on tiny inputs).
    """
    k = b * s + w
    out: dict[str, float] = {"K": float(k)}
    if length and length > 1:
        out["gamma"] = 2.0 * k / (length - 1)
    return out


def sweep_configs(sweep: SweepConfig) -> list[SweepPoint]:
    """Expand a sweep into its evaluations (run names are unique within the sweep).

    Args:
        sweep: The sweep.

    Returns:
        One :class:`SweepPoint` per configuration, in grid order.
    """
    base = sweep.base
    out_dir = str(Path(base.output_dir) / sweep.sweep_name)
    points: list[SweepPoint] = []

    def add(label: str, coords: dict[str, Any], **changes: Any) -> None:
        config = base.model_copy(update={"output_dir": out_dir, "name": label, **changes})
        points.append(SweepPoint(label, EvalConfig.model_validate(config.model_dump()), coords))

    if sweep.kind == "methods":
        for method in sweep.methods:
            add(method.label(), {"method": method.name}, method=method)
    elif sweep.kind == "branches":
        for combo in BRANCH_COMBINATIONS:
            method = base.method.model_copy(update={"name": "nsa", "branches": combo})
            add("+".join(combo), {"branches": "+".join(combo), "inference_time": True}, method=method)
    elif sweep.kind == "budget":
        s = checkpoint_nsa(base.model_dir).select_block
        for b, w in sweep.budget:
            method = base.method.model_copy(update={"name": "nsa", "num_selected": b, "window": w})
            add(f"b{b}-w{w}", {"b": b, "w": w, "s": s, **attention_budget(b, w, s, None)}, method=method)
    else:
        for frames, tpf in itertools.product(sweep.frames, sweep.tokens_per_frame):
            task = base.task.model_copy(update={"frames": frames, "tokens_per_frame": tpf})
            add(f"F{frames}-TPF{tpf}", {"frames": frames, "tokens_per_frame": tpf, "budget": frames * tpf}, task=task)
    return points


def _row(point: SweepPoint, ok: bool, value: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    metrics = (value or {}).get("metrics", {})
    coords = dict(point.coords)
    if "b" in coords:
        coords.update(attention_budget(coords["b"], coords["w"], coords["s"], metrics.get("vision_tokens_mean")))
    return {
        "label": point.label,
        "ok": ok,
        "error": error,
        "coords": coords,
        "metrics": metrics,
        "run_dir": (value or {}).get("run_dir", str(point.config.run_dir)),
        "method": point.config.method.model_dump(mode="json"),
    }


def run_sweep(sweep: SweepConfig, executor: Executor | None = None, tracker: Tracker | None = None) -> dict[str, Any]:
    """Run every configuration of ``sweep`` and record it.

    Failed configurations are recorded (``ok: false`` with the error) and the sweep goes on.

    Args:
        sweep: The sweep.
        executor: Where to run; built from ``sweep.executor`` when None.
        tracker: Where to log; built from ``sweep.tracking`` when None.

    Returns:
        The results document, also written to ``<output_dir>/<sweep>/results.json``.
    """
    from nsa_data.atomic import write_json_atomic

    points = sweep_configs(sweep)
    executor = executor or make_executor(sweep.executor)
    tracker = tracker or choose_tracker(sweep.tracking)
    outcomes = executor.map(evaluate_json, [p.config.model_dump(mode="json") for p in points])
    rows = [_row(p, o.ok, o.value, o.error) for p, o in zip(points, outcomes, strict=True)]
    results = {
        "sweep": sweep.sweep_name,
        "kind": sweep.kind,
        "task": sweep.base.task.name,
        "model_dir": sweep.base.model_dir,
        "note": "branch combinations are inference-time (dropped gates = 0, no renormalisation)"
        if sweep.kind == "branches"
        else "",
        "rows": rows,
    }
    out = Path(sweep.base.output_dir) / sweep.sweep_name / "results.json"
    write_json_atomic(out, results)
    _log(tracker, sweep, rows, out)
    return results


def _log(tracker: Tracker, sweep: SweepConfig, rows: list[dict[str, Any]], results_file: Path) -> None:
    params = {
        "kind": sweep.kind,
        "task": sweep.base.task.name,
        "model_dir": sweep.base.model_dir,
        "configurations": len(rows),
    }
    with tracker.run(sweep.sweep_name, params=params, tags={"nsa.sweep": sweep.kind}):
        for row in rows:
            row_params = {"label": row["label"], "method": row["method"], **row["coords"]}
            with tracker.run(row["label"], params=row_params, tags={"ok": str(row["ok"])}, nested=True):
                numbers = {k.replace("/", "."): v for k, v in row["metrics"].items() if isinstance(v, int | float)}
                numbers.update({k: v for k, v in row["coords"].items() if k in ("K", "gamma")})
                if numbers:
                    tracker.log_metrics(numbers)
                predictions = Path(row["run_dir"]) / "predictions.jsonl"
                if predictions.is_file():
                    tracker.log_artifact(predictions)
                if row["error"]:
                    tracker.log_text(row["error"], "error.txt")
        best = [r["metrics"].get("accuracy", 0.0) for r in rows if r["ok"]]
        tracker.log_metrics(
            {"best_accuracy": max(best) if best else 0.0, "failed": float(sum(not r["ok"] for r in rows))}
        )
        tracker.log_artifact(results_file)

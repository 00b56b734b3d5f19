"""``nsa-eval``: the command-line entry point used by DVC stages, flows and people.

Subcommands:

- ``evaluate --config eval.yaml`` — one evaluation (an ``EvalConfig`` YAML);
- ``sweep --params params.yaml --section evaluate|ablate`` — the sweeps of a params file (or ``--config sweep.yaml``);
- ``report --params params.yaml`` — render the report;
- ``check --params FILE`` — validate a params/config file.

Every subcommand takes ``--set key=value`` overrides (dotted keys, YAML values) and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from nsa_core.configio import apply_assignments, read_yaml_mapping
from nsa_eval.config import EvalConfig, EvalParams, ReportConfig, SweepConfig, load_eval_params


def _load(model: type[BaseModel], path: str, assignments: Sequence[str]) -> Any:
    return model.model_validate(apply_assignments(read_yaml_mapping(path), assignments))


def _params(args: argparse.Namespace) -> EvalParams:
    params = load_eval_params(args.params)
    return EvalParams.model_validate(apply_assignments(params.model_dump(mode="json"), args.set))


def _cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from nsa_core.tracking import choose_tracker
    from nsa_eval.evaluate import evaluate

    config = _load(EvalConfig, args.config, args.set)
    tracker = choose_tracker(config.tracking)
    with tracker.run(config.run_name, params=config.model_dump(mode="json")):
        result = evaluate(config, progress=not args.quiet)
        tracker.log_metrics({k.replace("/", "."): v for k, v in result.metrics.items()})
        tracker.log_artifact(result.predictions)
    return {"run_dir": result.run_dir, "metrics": result.metrics, "new_samples": result.new_samples}


def _cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from nsa_eval.ablations import run_sweep

    if args.config:
        sweeps: tuple[SweepConfig, ...] = (_load(SweepConfig, args.config, args.set),)
    else:
        params = _params(args)
        section = getattr(params, args.section)
        sweeps = (section,) if isinstance(section, SweepConfig) else tuple(section or ())
        if not sweeps:
            raise ValueError(f"{args.params}: section {args.section!r} is empty; add a sweep there")
    summary = {}
    for sweep in sweeps:
        results = run_sweep(sweep)
        summary[results["sweep"]] = {
            r["label"]: r["metrics"].get("accuracy") if r["ok"] else r["error"] for r in results["rows"]
        }
    return summary


def _cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from nsa_eval.report import render_report

    config = _load(ReportConfig, args.config, args.set) if args.config else _params(args).report
    return render_report(config)


def _cmd_check(args: argparse.Namespace) -> dict[str, Any]:
    params = _params(args)
    return {"ok": True, "evaluate": params.evaluate is not None, "ablate": len(params.ablate)}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="nsa-eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, config: bool = True) -> None:
        if config:
            p.add_argument("--config", help="YAML file of the subcommand's config model")
        p.add_argument("--params", default="params.yaml", help="params file with evaluate/ablate/report sections")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
        p.add_argument("--quiet", action="store_true", help="no per-sample log lines")

    p = sub.add_parser("evaluate", help="one evaluation from an EvalConfig YAML")
    common(p)
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser("sweep", help="run the sweeps of a params section or one SweepConfig YAML")
    common(p)
    p.add_argument("--section", choices=("evaluate", "ablate"), default="evaluate")
    p.set_defaults(func=_cmd_sweep)
    p = sub.add_parser("report", help="render report.md / report.html from results.json files")
    common(p)
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("check", help="validate the evaluation sections of a params file")
    common(p, config=False)
    p.set_defaults(func=_cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; prints a JSON summary. Returns 0, or 2 with a one-line error on stderr.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit code.
    """
    args = build_parser().parse_args(argv)
    if args.command == "evaluate" and not args.config:
        print("nsa-eval evaluate: error: --config <eval.yaml> is required", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        summary = args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"nsa-eval {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

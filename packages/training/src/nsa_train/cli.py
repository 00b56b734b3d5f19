"""``nsa-train``: train from a recipe, with params.yaml's ``train:`` section and ``--set`` overrides.

Examples::

    nsa-train --config configs/train/tiny.yaml --set loop.max_steps=20
    nsa-train --config configs/train/tiny.yaml --params params.yaml --resume
    nsa-train --config configs/train/tiny.yaml --launcher torchrun --nproc 2
    torchrun --standalone --nproc-per-node 8 -m nsa_train.cli --config configs/train/qwen2.5-vl-7b.yaml
    nsa-train --config configs/train/tiny.yaml --launcher ray --set distributed.num_workers=2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from nsa_train.config import load_config


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="nsa-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. configs/train/tiny.yaml")
    parser.add_argument("--params", help="params.yaml whose train: section is merged over the recipe")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (dotted)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    parser.add_argument(
        "--launcher", choices=("local", "torchrun", "ray"), default="local", help="how ranks are started"
    )
    parser.add_argument("--nproc", type=int, default=2, help="ranks for --launcher torchrun")
    parser.add_argument("--check", action="store_true", help="validate the config, print it and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; prints a JSON summary on stdout (rank 0). Returns 0, or 2 with a one-line error on stderr.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit code.
    """
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.params, args.set)
        if args.check:
            print(json.dumps(config.model_dump(mode="json"), indent=2))
            return 0
        if args.launcher == "torchrun":
            from nsa_train.launch import train_with_torchrun

            forwarded = _without_launcher(list(argv if argv is not None else sys.argv[1:]))
            return train_with_torchrun(args.nproc, forwarded)
        if args.launcher == "ray":
            from nsa_train.launch import train_with_ray

            result = train_with_ray(config, resume=args.resume)
        else:
            from nsa_train.trainer import run_training

            result = run_training(config, resume=args.resume)
    except (ValueError, FileNotFoundError) as error:
        print(f"nsa-train: error: {error}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {
            "output_dir": str(result.output_dir),
            "model_dir": str(result.model_dir),
            "checkpoint_dir": str(result.checkpoint_dir),
            "run_id": result.run_id,
            "final_metrics": result.final_metrics,
        }
        print(json.dumps(summary, indent=2))
    return 0


def _without_launcher(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--launcher", "--nproc"):
            skip = True
            continue
        if arg.startswith(("--launcher=", "--nproc=")):
            continue
        kept.append(arg)
    return kept


if __name__ == "__main__":
    sys.exit(main())

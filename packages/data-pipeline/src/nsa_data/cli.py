"""``nsa-data``: the one command-line entry point, used by DVC stages and flows.

Subcommands: ``synth``, ``ingest``, ``prepare`` (each reads its section of a params file, with ``--set key=value``
overrides), ``probe`` (inspect one video) and ``check-params``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nsa_data.config import DataParams, load_params
from nsa_data.errors import NsaDataError


def _override(params: DataParams, section: str, assignments: Sequence[str]) -> Any:
    """Apply ``key=value`` (dotted keys, YAML values) to one section and re-validate it."""
    from nsa_core.configio import apply_assignments

    config = getattr(params, section)
    return type(config).model_validate(apply_assignments(config.model_dump(mode="json"), assignments))


def _params(args: argparse.Namespace) -> DataParams:
    return load_params(args.params) if args.params else DataParams()


def _cmd_synth(args: argparse.Namespace) -> dict[str, Any]:
    from nsa_data.manifest import read_manifest
    from nsa_data.synth.generate import generate_synthetic

    config = _override(_params(args), "synth", args.set)
    manifest = generate_synthetic(config, args.out, progress=not args.quiet)
    rows = read_manifest(manifest)
    return {"manifest": str(manifest), "videos": len(rows), "test": sum(r.split == "test" for r in rows)}


def _cmd_prepare(args: argparse.Namespace) -> dict[str, Any]:
    from nsa_data.shards import prepare_shards

    config = _override(_params(args), "prepare", args.set)
    result = prepare_shards(args.manifest, args.out, config, video_root=args.video_root, progress=not args.quiet)
    return {k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()}


def _cmd_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from nsa_data.ingest import ingest

    config = _override(_params(args), "ingest", args.set)
    report = ingest(args.input, args.out, config, video_root=args.video_root, progress=not args.quiet)
    return report


def _cmd_probe(args: argparse.Namespace) -> dict[str, Any]:
    from nsa_data.config import SamplingConfig
    from nsa_data.video import sample_video

    sampled = sample_video(args.video, SamplingConfig(fps=args.fps, max_pixels=args.max_pixels))
    return {
        "path": sampled.path,
        "duration": sampled.duration,
        "source_fps": sampled.source_fps,
        "total_frames": sampled.total_frames,
        "sampled_frames": len(sampled.frames),
        "sampling_fps": sampled.fps,
        "second_per_grid_ts": sampled.second_per_grid_ts,
        "video_grid_thw": sampled.video_grid_thw[0].tolist(),
        "num_video_tokens": sampled.num_llm_tokens,
        "rotation": sampled.rotation,
    }


def _cmd_check(args: argparse.Namespace) -> dict[str, Any]:
    params = load_params(args.params_file)
    return {"ok": True, "sections": sorted(params.model_dump().keys())}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="nsa-data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--params", help="params.yaml with synth/prepare/ingest sections (defaults if omitted)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a section field")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("synth", help="generate the synthetic benchmark (videos + manifest)")
    common(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("prepare", help="manifest -> content-addressed shards + index (resumable)")
    common(p)
    p.add_argument("--manifest", required=True, help="manifest parquet")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--video-root", help="folder of relative video paths (default: the manifest's folder)")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("ingest", help="LLaVA-Video-178K / ms-swift JSON(L) -> filtered manifest")
    common(p)
    p.add_argument("--input", required=True, action="append", help="annotation JSON or JSONL (repeatable)")
    p.add_argument("--out", required=True, help="manifest parquet to write (report and rejects go next to it)")
    p.add_argument("--video-root", help="folder that the annotations' video paths are relative to")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("probe", help="sample one video and print what the model would get")
    p.add_argument("video")
    p.add_argument("--fps", type=float, default=4.0)
    p.add_argument("--max-pixels", type=int, default=50176)
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("check-params", help="validate a params file against the data config models")
    p.add_argument("params_file")
    p.set_defaults(func=_cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; prints a JSON summary on stdout. Returns 0, or 2 with a one-line error on stderr.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit code.
    """
    args = build_parser().parse_args(argv)
    try:
        summary = args.func(args)
    except (NsaDataError, ValueError, FileNotFoundError) as err:
        print(f"nsa-data {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

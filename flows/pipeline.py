"""The VideoNSA pipeline as a Prefect 3 flow: each task calls one library entry point, cached by input hash.

Run without servers (Prefect's ephemeral mode): ``python -m flows.pipeline --config configs/pipeline/tiny.yaml``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import INPUTS

from flows.config import PipelineConfig, load_pipeline_config
from nsa_eval.config import ReportConfig, SweepConfig

CACHE = INPUTS
"""Tasks are keyed by their inputs; folder inputs enter as content fingerprints (see :func:`fingerprint`)."""


def fingerprint(*paths: str | Path) -> str:
    """Hash of the names, sizes and modification times of every file under ``paths`` (missing paths hash too)."""
    digest = hashlib.sha256()
    for root in map(Path, paths):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            stat = f.stat() if f.exists() else None
            digest.update(f"{f}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}".encode())
    return digest.hexdigest()


@task(cache_policy=CACHE, persist_result=True)
def synth(config: PipelineConfig) -> str:
    """``nsa_data.synth.generate.generate_synthetic``; returns the manifest path."""
    from nsa_data.synth.generate import generate_synthetic

    return str(generate_synthetic(config.synth, config.synth_dir, progress=False))


@task(cache_policy=CACHE, persist_result=True)
def prepare(config: PipelineConfig, manifest: str, inputs: str) -> str:
    """``nsa_data.shards.prepare_shards`` (resumable); ``inputs`` fingerprints the synthetic folder."""
    from nsa_data.shards import prepare_shards

    prepare_shards(manifest, config.prepared_dir, config.prepare, progress=False)
    return str(config.prepared_dir)


@task(cache_policy=CACHE, persist_result=True)
def train(recipe: str, overrides: tuple[str, ...], inputs: str) -> str:
    """``nsa_train.train`` on the recipe (resuming from its last checkpoint); returns the model folder."""
    from nsa_train import load_config
    from nsa_train import train as run_training

    return str(run_training(load_config(recipe, None, overrides), resume=True).model_dir)


@task(cache_policy=CACHE, persist_result=True)
def sweep(config: SweepConfig, inputs: str) -> dict[str, Any]:
    """``nsa_eval.run_sweep`` (resumes finished samples); ``inputs`` fingerprints model and data."""
    from nsa_eval import run_sweep

    return run_sweep(config)


@task(cache_policy=CACHE, persist_result=True)
def report(config: ReportConfig, inputs: str) -> dict[str, str]:
    """``nsa_eval.render_report``; returns the report paths."""
    from nsa_eval import render_report

    return render_report(config)


@flow(name="videonsa-pipeline", log_prints=True)
def videonsa_pipeline(config: PipelineConfig) -> dict[str, str]:
    """synth → prepare → train → evaluate (dense vs NSA) → ablations → report.

    Args:
        config: The pipeline parameters (``configs/pipeline/*.yaml``).

    Returns:
        Paths of the report files.
    """
    manifest = synth.with_options(refresh_cache=_missing(config.synth_dir / "manifest.parquet"))(config)
    prepared = prepare.with_options(refresh_cache=_missing(config.prepared_dir / "index.parquet"))(
        config, manifest, fingerprint(config.synth_dir)
    )
    overrides = (f"data.prepared_dir={config.prepared_dir}", *config.train_overrides)
    model_dir = train.with_options(refresh_cache=_missing(_trained_model_dir(config.train_recipe, overrides)))(
        config.train_recipe, overrides, fingerprint(prepared, config.train_recipe)
    )
    inputs = fingerprint(model_dir, prepared)
    results = [
        sweep.with_options(refresh_cache=_missing(Path(s.base.output_dir) / s.sweep_name / "results.json"))(s, inputs)
        for s in (config.evaluate, *config.ablate)
    ]
    summary = hashlib.sha256(json.dumps(results, sort_keys=True).encode()).hexdigest()
    return report.with_options(refresh_cache=_missing(Path(config.report.out_dir) / "report.md"))(
        config.report, summary
    )


def _missing(path: Path) -> bool:
    """A cached result whose output is gone (deleted, or another working directory) must be recomputed."""
    return not Path(path).exists()


def _trained_model_dir(recipe: str, overrides: tuple[str, ...]) -> Path:
    from nsa_train import load_config

    return Path(load_config(recipe, None, overrides).output_dir) / "model"


@flow(name="videonsa-pipeline-file", log_prints=True)
def videonsa_pipeline_from_file(config_path: str = "configs/pipeline/tiny.yaml") -> dict[str, str]:
    """:func:`videonsa_pipeline` with its parameters read from a YAML file (for deployments).

    Args:
        config_path: Pipeline YAML, relative to the working directory.

    Returns:
        Paths of the report files.
    """
    return videonsa_pipeline(load_pipeline_config(config_path))


def main(argv: list[str] | None = None) -> int:
    """Run the pipeline in this process (Prefect ephemeral mode) and print where everything landed.

    Args:
        argv: ``--config FILE``; ``sys.argv[1:]`` when None.

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pipeline/tiny.yaml", help="pipeline YAML")
    args = parser.parse_args(argv)
    paths = videonsa_pipeline(load_pipeline_config(args.config))
    import os

    from nsa_core.tracking import artifact_root

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{artifact_root() / 'mlflow.db'}"
    print(f"report: {Path(paths['html']).resolve()}  (markdown: {Path(paths['markdown']).resolve()})")
    print(f"MLflow runs: {uri}")
    print(f"MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000  (open http://127.0.0.1:5000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

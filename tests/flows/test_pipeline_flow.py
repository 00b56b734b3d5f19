"""The whole flow under Prefect's test harness on the micro config; a rerun is served from the task cache."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from flows.config import load_pipeline_config
from flows.pipeline import videonsa_pipeline


def test_micro_pipeline_end_to_end_and_cached_rerun(prefect_harness, micro_workspace: Path):
    config = load_pipeline_config("configs/pipeline/micro.yaml")
    paths = videonsa_pipeline(config)
    markdown = Path(paths["markdown"]).read_text()
    labels = ["dense-transfer", "nsa", "cmp", "slc", "swd", "cmp+slc", "cmp+swd", "slc+swd", "cmp+slc+swd"]
    for label in labels:
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {label} |"))
        assert re.search(r"\| \d+\.\d \|", line), line
    assert Path(paths["html"]).is_file()

    state = videonsa_pipeline(config, return_state=True)
    assert state.is_completed()
    import anyio
    from prefect import get_client

    async def cached_runs() -> int:
        async with get_client() as client:
            runs = await client.read_task_runs()
            return sum(r.state is not None and r.state.name == "Cached" for r in runs)

    assert anyio.run(cached_runs) >= 5  # synth, prepare, train, 2 sweeps (and report) skipped on the rerun


def test_deleted_outputs_are_recomputed_not_served_from_the_cache(prefect_harness, micro_workspace: Path):
    config = load_pipeline_config("configs/pipeline/micro.yaml")
    first = videonsa_pipeline(config)
    shutil.rmtree(Path(first["markdown"]).parent)
    shutil.rmtree(config.synth_dir)
    second = videonsa_pipeline(config)
    assert Path(second["markdown"]).is_file()
    assert (config.synth_dir / "manifest.parquet").is_file()

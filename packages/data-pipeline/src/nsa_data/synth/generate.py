"""Generate the synthetic long-video benchmark: mp4 files plus a manifest with a train/test split."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nsa_data.atomic import write_json_atomic
from nsa_data.config import SynthConfig
from nsa_data.manifest import LETTERS, ManifestRow, write_manifest
from nsa_data.synth.render import Distractor, Scene, render
from nsa_data.synth.tasks import TASKS
from nsa_data.synth.writer import write_mp4

SOURCE = "nsa-synth"


def length_group(duration: float) -> str:
    """Category label of a length group, e.g. ``8s``."""
    return f"{duration:g}s"


def plan_video(config: SynthConfig, index: int) -> tuple[Scene, ManifestRow]:
    """Describe video ``index``: its scene and its question (split left as ``train``; see :func:`assign_splits`).

    Args:
        config: Benchmark config.
        index: Video number in ``[0, num_videos)``.

    Returns:
        The scene to render and the manifest row (``video_path`` relative to the output folder).
    """
    rng = np.random.default_rng([config.seed, index])
    task = config.tasks[index % len(config.tasks)]
    duration = config.durations[(index // len(config.tasks)) % len(config.durations)]
    sample = TASKS[task](rng, duration, config)
    size = max(6, round(0.2 * min(config.height, config.width)))
    distractors = tuple(
        Distractor(
            shape=str(rng.choice(["circle", "square", "diamond"])),
            gray=int(rng.integers(110, 171)),
            y0=float(rng.uniform(0, config.height - size)),
            x0=float(rng.uniform(0, config.width - size)),
            vy=float(rng.uniform(-30, 30)),
            vx=float(rng.uniform(-30, 30)),
            size=size,
        )
        for _ in range(config.distractors)
    )
    num_frames = round(duration * config.fps)
    scene = Scene(
        height=config.height,
        width=config.width,
        fps=config.fps,
        num_frames=num_frames,
        background=tuple(int(v) for v in rng.integers(10, 61, size=3)),
        events=sample.events,
        distractors=distractors,
    )
    video_id = f"synth-{config.seed}-{index:05d}"
    row = ManifestRow(
        id=video_id,
        video_path=f"videos/{video_id}.mp4",
        duration=num_frames / config.fps,
        fps=config.fps,
        frames=num_frames,
        question=sample.question,
        options=sample.options,
        answer=LETTERS[sample.answer_index],
        answer_index=sample.answer_index,
        task=task,
        category=length_group(duration),
        source=SOURCE,
        meta=json.dumps({"events": [asdict(e) for e in sample.events], "seed": config.seed, "index": index}),
    )
    return scene, row


def assign_splits(rows: list[ManifestRow], config: SynthConfig) -> list[ManifestRow]:
    """Send ``round(test_fraction · n)`` rows of every (task, length) cell to ``test``, chosen by the seed.

    Args:
        rows: Rows in index order.
        config: Benchmark config (seed, test_fraction).

    Returns:
        The rows with ``split`` set, in the same order.
    """
    cells: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(rows):
        cells.setdefault((row.task, row.category), []).append(i)
    test: set[int] = set()
    rng = np.random.default_rng([config.seed, 1 << 20])
    for key in sorted(cells):
        members = cells[key]
        k = round(config.test_fraction * len(members))
        test.update(members[j] for j in rng.permutation(len(members))[:k])
    return [r.model_copy(update={"split": "test" if i in test else "train"}) for i, r in enumerate(rows)]


def _write_one(args: tuple[SynthConfig, int, str]) -> ManifestRow:
    config, index, out_dir = args
    scene, row = plan_video(config, index)
    write_mp4(Path(out_dir) / row.video_path, render(scene), fps=config.fps, crf=config.crf)
    return row


def generate_synthetic(config: SynthConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Render, encode and describe every video of the benchmark.

    Args:
        config: Benchmark config.
        out_dir: Output folder; receives ``videos/*.mp4``, ``manifest.parquet`` and ``synth_config.json``.
        progress: Show a progress bar on stderr.

    Returns:
        The manifest path.
    """
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [(config, i, str(out_dir)) for i in range(config.num_videos)]
    bar = tqdm(total=len(jobs), desc="synth", unit="video", disable=not progress)
    if config.num_workers == 1:
        rows = []
        for job in jobs:
            rows.append(_write_one(job))
            bar.update()
    else:
        with ProcessPoolExecutor(config.num_workers, mp_context=get_context("spawn")) as pool:
            rows = []
            for row in pool.map(_write_one, jobs, chunksize=4):
                rows.append(row)
                bar.update()
    bar.close()
    manifest = write_manifest(assign_splits(rows, config), out_dir / "manifest.parquet")
    write_json_atomic(out_dir / "synth_config.json", config.model_dump(mode="json"))
    return manifest

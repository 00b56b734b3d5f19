"""The synthetic benchmark: determinism, answer consistency with the rendered events, splits, scaling."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from nsa_data.config import SamplingConfig, SynthConfig
from nsa_data.manifest import LETTERS, read_manifest
from nsa_data.synth.generate import generate_synthetic, plan_video
from nsa_data.synth.render import COLORS, QUADRANTS
from nsa_data.video import sample_video

SMALL = SynthConfig(num_videos=12, durations=(4.0, 8.0), width=56, height=56)


@pytest.fixture(scope="module")
def small_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(SMALL, tmp_path_factory.mktemp("synth"), progress=False)


def test_same_seed_same_bytes_other_seed_differs(small_benchmark: Path, tmp_path: Path) -> None:
    again = generate_synthetic(SMALL.model_copy(update={"num_videos": 3}), tmp_path / "a", progress=False)
    other = generate_synthetic(SMALL.model_copy(update={"num_videos": 3, "seed": 1}), tmp_path / "b", progress=False)
    for row in read_manifest(again):
        assert (again.parent / row.video_path).read_bytes() == (small_benchmark.parent / row.video_path).read_bytes()
    ours = [r.question + str(r.options) for r in read_manifest(again)]
    theirs = [r.question + str(r.options) for r in read_manifest(other)]
    assert ours != theirs


def test_manifest_rows_are_complete(small_benchmark: Path) -> None:
    rows = read_manifest(small_benchmark)
    assert len(rows) == 12 and len({r.id for r in rows}) == 12
    assert Counter(r.task for r in rows) == {"needle": 3, "order": 3, "count": 3, "spatial": 3}
    for row in rows:
        assert (small_benchmark.parent / row.video_path).is_file()
        assert row.answer == LETTERS[row.answer_index] and len(row.options) == 4
        assert row.frames == round(row.duration * SMALL.fps)


def _answer_from_events(task: str, question: str, events: list[dict]) -> str:
    names = [f"{e['color']} {e['shape']}" for e in events]
    if task == "needle":
        return names[0]
    if task == "order":
        return names[0] if "first" in question else names[-1]
    if task == "count":
        return str(sum(n in question for n in names))
    target = next(e for e, n in zip(events, names, strict=True) if n in question)
    cy, cx = target["y"] + target["size"] / 2, target["x"] + target["size"] / 2
    return QUADRANTS[2 * int(cy >= SMALL.height / 2) + int(cx >= SMALL.width / 2)]


def test_answers_follow_from_events(small_benchmark: Path) -> None:
    for row in read_manifest(small_benchmark):
        events = sorted(json.loads(row.meta)["events"], key=lambda e: e["start"])
        assert row.options[row.answer_index] == _answer_from_events(row.task, row.question, events), row.id


def test_event_is_visible_in_the_decoded_video(small_benchmark: Path) -> None:
    row = next(r for r in read_manifest(small_benchmark) if r.task == "needle")
    event = json.loads(row.meta)["events"][0]
    sampled = sample_video(small_benchmark.parent / row.video_path, SamplingConfig(fps=SMALL.fps))
    cy, cx = event["y"] + event["size"] // 2, event["x"] + event["size"] // 2
    inside = (sampled.frame_times >= event["start"] - 1e-6) & (sampled.frame_times < event["end"] - 1e-6)
    pixels = sampled.frames[:, cy, cx].astype(int)
    assert inside.any() and (~inside).any()
    assert np.abs(pixels[inside] - np.array(COLORS[event["color"]])).max() < 40
    assert np.abs(pixels[~inside] - np.array(COLORS[event["color"]])).max(axis=1).min() > 40


def test_split_per_cell() -> None:
    config = SynthConfig(num_videos=48, test_fraction=0.25)
    from nsa_data.synth.generate import assign_splits

    rows = assign_splits([plan_video(config, i)[1] for i in range(48)], config)
    cells = Counter((r.task, r.category) for r in rows if r.split == "test")
    assert set(cells.values()) == {1} and len(cells) == 12


def test_difficulty_grows_with_length() -> None:
    config = SynthConfig(num_videos=96, durations=(4.0, 32.0))
    plans = [plan_video(config, i)[1] for i in range(96)]
    share = {"4s": [], "32s": []}
    max_count = {"4s": 0, "32s": 0}
    for row in plans:
        events = json.loads(row.meta)["events"]
        share[row.category].append(sum(e["end"] - e["start"] for e in events) / row.duration)
        if row.task == "count":
            max_count[row.category] = max(max_count[row.category], int(row.options[row.answer_index]))
    assert np.mean(share["32s"]) < 0.5 * np.mean(share["4s"])
    assert max_count["32s"] > max_count["4s"]


@pytest.mark.parametrize(
    ("update", "match"),
    [
        pytest.param({"width": 57}, "even", id="odd-width"),
        pytest.param({"durations": (2.0,)}, "event_seconds", id="too-short"),
        pytest.param({"tasks": ()}, "tasks", id="no-tasks"),
    ],
)
def test_config_errors_name_the_field(update: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SynthConfig(**{**SMALL.model_dump(), **update})

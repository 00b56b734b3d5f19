"""Benchmark loaders, prompts and scorers on hand-written local copies in each published layout (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nsa_eval.config import TaskConfig
from nsa_eval.tasks import TaskDataError, get_task


def _score(task, responses: dict[str, str]) -> dict[str, float]:
    samples = task.load()
    predictions = {}
    for s in samples:
        parsed = task.parse(responses[s.id], s)
        predictions[s.id] = {"parsed": parsed, "score": task.is_correct(parsed, s)}
    return task.score(samples, predictions)


def test_longvideobench(tmp_path: Path):
    records = [
        {
            "id": "q1",
            "video_path": "a.mp4",
            "question": "What?",
            "candidates": ["x", "y"],
            "correct_choice": 1,
            "duration_group": 600,
            "question_category": "TOS",
        },
        {
            "id": "q2",
            "video_path": "b.mp4",
            "question": "Who?",
            "candidates": ["p", "q", "r"],
            "correct_choice": 0,
            "duration_group": 3600,
            "question_category": "E2O",
        },
    ]
    (tmp_path / "lvb_val.json").write_text(json.dumps(records))
    task = get_task(TaskConfig(name="longvideobench", root=str(tmp_path)))
    samples = task.load()
    assert samples[0].answer == "B" and samples[0].video == str(tmp_path / "videos" / "a.mp4")
    assert task.prompt(samples[0]).instruction.startswith("Answer with the option's letter")
    metrics = _score(task, {"q1": "The best answer is B", "q2": "no idea"})
    assert metrics["accuracy"] == 50.0
    assert metrics["accuracy/duration/600"] == 100.0 and metrics["accuracy/duration/3600"] == 0.0
    assert metrics["num_unparsed"] == 1


def test_mlvu_is_the_unweighted_mean_of_task_accuracies(tmp_path: Path):
    records = [
        {
            "video": "v.mp4",
            "question": f"q{i}",
            "candidates": ["a", "b"],
            "answer": "a",
            "question_type": kind,
            "question_id": f"m{i}",
        }
        for i, kind in enumerate(["count", "count", "count", "order"])
    ]
    (tmp_path / "test_mcq_gt.json").write_text(json.dumps(records))
    task = get_task(TaskConfig(name="mlvu", root=str(tmp_path)))
    assert task.prompt(task.load()[0]).instruction.endswith("Best option: (")
    metrics = _score(task, {"m0": "A) a", "m1": "A)", "m2": "A", "m3": "B) b"})
    assert metrics["accuracy/task/count"] == 100.0 and metrics["accuracy/task/order"] == 0.0
    assert metrics["accuracy"] == 50.0
    assert metrics["accuracy_micro"] == 75.0


@pytest.mark.parametrize("name", [pytest.param("timescope", id="timescope"), pytest.param("longtimescope", id="lts")])
def test_timescope_family_reads_parquet_with_inline_options(tmp_path: Path, name: str):
    table = pa.Table.from_pylist(
        [
            {
                "id": "t1",
                "video": "v1.mp4",
                "input": "Which?\nA. one\nB. two\nF. six",
                "answer": "F",
                "length": "60",
                "task_type": "QA",
            },
            {
                "id": "t2",
                "video": "v2.mp4",
                "input": "When?\nA. now\nB. later",
                "answer": "A",
                "length": "600",
                "task_type": "OCR",
            },
        ]
    )
    pq.write_table(table, tmp_path / "test.parquet")
    task = get_task(TaskConfig(name=name, root=str(tmp_path)))
    samples = task.load()
    assert task.prompt(samples[0]).options == () and "F. six" in task.prompt(samples[0]).question
    metrics = _score(task, {"t1": "Answer: F", "t2": "B"})
    assert metrics["accuracy"] == 50.0 and metrics["accuracy/task_type/QA"] == 100.0


def test_tomato_prompt_and_categories(tmp_path: Path):
    records = [
        {
            "id": "k1",
            "key": "clip1",
            "question": "Direction?",
            "options": ["left", "right"],
            "answer": 1,
            "reasoning_type": "direction",
            "demonstration_type": "human",
        }
    ]
    (tmp_path / "tomato.json").write_text(json.dumps(records))
    task = get_task(TaskConfig(name="tomato", root=str(tmp_path)))
    sample = task.load()[0]
    assert sample.video.endswith("clip1.mp4") and sample.answer == "B"
    assert "16 separate frames" in task.prompt(sample).question
    assert task.max_new_tokens == 1024
    assert _score(task, {"k1": "The answer is B"})["accuracy/reasoning/direction"] == 100.0


def test_vsibench_mixes_multiple_choice_and_mean_relative_accuracy(tmp_path: Path):
    rows = [
        {
            "id": 1,
            "dataset": "scannet",
            "scene_name": "s1",
            "question_type": "object_counting",
            "question": "How many?",
            "options": None,
            "ground_truth": "4",
        },
        {
            "id": 2,
            "dataset": "scannet",
            "scene_name": "s1",
            "question_type": "object_rel_direction_easy",
            "question": "Where?",
            "options": ["A. left", "B. right"],
            "ground_truth": "A",
        },
        {
            "id": 3,
            "dataset": "scannet",
            "scene_name": "s2",
            "question_type": "object_rel_direction_hard",
            "question": "Where?",
            "options": ["A. left", "B. right"],
            "ground_truth": "B",
        },
    ]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    task = get_task(TaskConfig(name="vsibench", root=str(tmp_path)))
    samples = task.load()
    assert samples[1].options == ("left", "right")
    assert samples[0].video == str(tmp_path / "scannet" / "s1.mp4")
    assert task.prompt(samples[0]).question.startswith("These are frames of a video.")
    metrics = _score(task, {"1": "4", "2": "A.", "3": "A"})
    assert metrics["accuracy/task/object_counting"] == 100.0
    assert metrics["accuracy"] == pytest.approx((100.0 + 50.0) / 2)  # direction easy/hard averaged into one task


def test_missing_field_names_file_and_field(tmp_path: Path):
    (tmp_path / "lvb_val.json").write_text(json.dumps([{"id": "q", "video_path": "a.mp4", "candidates": ["x"]}]))
    with pytest.raises(TaskDataError, match=r"lvb_val.json, record 0: missing field .*question"):
        get_task(TaskConfig(name="longvideobench", root=str(tmp_path))).load()


def test_missing_copy_says_where_to_point(tmp_path: Path):
    with pytest.raises(TaskDataError, match=r"point task\.root"):
        get_task(TaskConfig(name="mlvu", root=str(tmp_path))).load()

"""The six long-video benchmarks of VideoNSA (spec §7), read from local copies as published; nothing downloads.

Each loader names the annotation file it expects under ``task.root`` and the fields it reads; a missing field
raises :class:`TaskDataError` naming file, record and field. Videos are resolved under ``task.video_root`` (or
``root``) with the benchmark's folder layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nsa_eval.tasks.base import LETTERS, Prompt, Sample, Task, TaskDataError, read_records, require
from nsa_eval.tasks.parsing import first_letter, first_number, first_word_letter, mlvu_letter


def _find(root: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise TaskDataError(f"none of {list(names)} found under {root}; point task.root at the benchmark's local copy")


def _letter(answer: Any, options: Sequence[str], path: Path, index: int) -> str:
    """A published answer (index, letter or option text) as a letter."""
    if isinstance(answer, int) and 0 <= answer < len(options):
        return LETTERS[answer]
    text = str(answer).strip()
    if len(text) == 1 and text.upper() in LETTERS[: max(len(options), 6)]:
        return text.upper()
    if text in options:
        return LETTERS[list(options).index(text)]
    raise TaskDataError(f"{path}, record {index}: answer {answer!r} is neither an index, a letter nor an option")


class _Benchmark(Task):
    files: tuple[str, ...] = ()
    video_dir: str = ""

    def video_path(self, name: str) -> str:
        base = Path(self.config.video_root) if self.config.video_root else self.root / self.video_dir
        return str(Path(name) if Path(name).is_absolute() else base / name)

    def records(self) -> tuple[list[dict[str, Any]], Path]:
        path = _find(self.root, self.files)
        return read_records(path), path


class LongVideoBench(_Benchmark):
    """``longvideobench_val_v``: ``lvb_val.json`` (id, video_path, question, candidates, correct_choice)."""

    name = "longvideobench"
    max_new_tokens, frames, tokens_per_frame = 32, 256, 512
    files, video_dir = ("lvb_val.json", "lvb_val.jsonl"), "videos"

    def load(self) -> list[Sample]:
        records, path = self.records()
        samples = []
        for i, r in enumerate(records):
            options = tuple(str(o) for o in require(r, ("candidates", "options"), path, i))
            categories = {"duration": str(r.get("duration_group", "")), "category": str(r.get("question_category", ""))}
            samples.append(
                Sample(
                    id=str(require(r, ("id",), path, i)),
                    video=self.video_path(str(require(r, ("video_path", "video"), path, i))),
                    question=str(require(r, ("question",), path, i)),
                    options=options,
                    answer=_letter(require(r, ("correct_choice", "answer"), path, i), options, path, i),
                    categories=categories,
                )
            )
        return self.limited(samples)

    def parse(self, response: str, sample: Sample) -> str | None:
        """First standalone A–E after prefix stripping."""
        return first_letter(response, sample.letters[:5])


class MLVU(_Benchmark):
    """``mlvu_test``: records with video, question, candidates, answer (text or letter), question_type."""

    name = "mlvu"
    max_new_tokens, frames, tokens_per_frame = 16, 512, 128
    files, video_dir = ("test_mcq_gt.json", "mlvu_test.json", "test.json", "test.parquet"), "video"
    instruction = "Only give the best option.\nBest option: ("

    def load(self) -> list[Sample]:
        records, path = self.records()
        samples = []
        for i, r in enumerate(records):
            options = tuple(str(o) for o in require(r, ("candidates", "options"), path, i))
            samples.append(
                Sample(
                    id=str(r.get("question_id", r.get("id", i))),
                    video=self.video_path(str(require(r, ("video", "video_name", "video_path"), path, i))),
                    question=str(require(r, ("question",), path, i)),
                    options=options,
                    answer=_letter(require(r, ("answer",), path, i), options, path, i),
                    categories={"task": str(require(r, ("question_type", "task_type"), path, i))},
                )
            )
        return self.limited(samples)

    def parse(self, response: str, sample: Sample) -> str | None:
        """The character before the first ``)``, else the whole answer."""
        return mlvu_letter(response, sample.letters)

    def score(self, samples: Sequence[Sample], predictions: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
        """``accuracy`` is the unweighted mean of the per-task accuracies; ``accuracy_micro`` the plain mean."""
        metrics = super().score(samples, predictions)
        tasks = [v for k, v in metrics.items() if k.startswith("accuracy/task/")]
        metrics["accuracy_micro"] = metrics["accuracy"]
        metrics["accuracy"] = sum(tasks) / len(tasks) if tasks else 0.0
        return metrics


class TimeScope(_Benchmark):
    """``timescope``: the published ``input`` column already holds question and options; letters A–F."""

    name = "timescope"
    max_new_tokens, frames, tokens_per_frame = 16, 2048, 64
    files, video_dir = ("test.parquet", "timescope.parquet", "test.jsonl", "test.json"), ""
    category_fields: tuple[str, ...] = ("length", "task_type")

    def load(self) -> list[Sample]:
        records, path = self.records()
        samples = []
        for i, r in enumerate(records):
            text = str(require(r, ("input", "question"), path, i))
            options = tuple(re.findall(r"^\(?([A-F])[.)]\s*(.+)$", text, flags=re.MULTILINE))
            answer = str(require(r, ("answer", "output"), path, i)).strip()
            if answer[:1].upper() not in LETTERS[:6]:
                raise TaskDataError(f"{path}, record {i}: answer {answer!r} must start with a letter A-F")
            samples.append(
                Sample(
                    id=str(r.get("id", i)),
                    video=self.video_path(str(require(r, ("video", "video_path"), path, i))),
                    question=text,
                    answer=answer[0].upper(),
                    categories={f: str(r.get(f, "")) for f in self.category_fields},
                    extra={"letters": "".join(o[0] for o in options) or LETTERS[:6]},
                )
            )
        return self.limited(samples)

    def prompt(self, sample: Sample) -> Prompt:
        """The published ``input`` plus the letter instruction."""
        return Prompt(sample.question, (), self.instruction)

    def parse(self, response: str, sample: Sample) -> str | None:
        """First standalone A–F after prefix stripping."""
        return first_letter(response, "ABCDEF")


class LongTimeScope(TimeScope):
    """``longtimescope``: as TimeScope; groups are length (18000/28800/36000 s) × task type (OCR/QA/temporal)."""

    name = "longtimescope"
    max_new_tokens, frames, tokens_per_frame = 16, 512, 128


TOMATO_PROMPT = (
    "You will be provided with 16 separate frames uniformly sampled from a video, the frames are provided in "
    "chronological order of the video. Analyze these frames and provide the answer to the question about the "
    "video content. Answer the multiple-choice question about the video content.\n\nYou must use these frames to "
    "answer the multiple-choice question; do not rely on any externel knowledge or commonsense."
)
TOMATO_SUFFIX = (
    "Even if the information in these separate frames is not enough to give an answer, PLEASE TRY YOUR BEST TO "
    "GUESS AN ANSWER WHICH YOU THINK WOULD BE THE MOST POSSIBLE ONE BASED ON THE QUESTION. DO NOT GENERATE ANSWER "
    "SUCH AS 'NOT POSSIBLE TO DETERMINE.'"
)


class Tomato(_Benchmark):
    """``tomato``: records with question, options, answer (index), reasoning_type, demonstration_type, key.

    The prompt always says "16 separate frames" whatever F is, as the benchmark does (spec §7).
    """

    name = "tomato"
    max_new_tokens, frames, tokens_per_frame = 1024, 256, None
    files, video_dir = ("tomato.json", "test.json", "test.parquet", "test.jsonl"), "videos"

    def load(self) -> list[Sample]:
        records, path = self.records()
        samples = []
        for i, r in enumerate(records):
            options = tuple(str(o) for o in require(r, ("options", "candidates"), path, i))
            video = str(require(r, ("video", "video_path", "key"), path, i))
            samples.append(
                Sample(
                    id=str(r.get("id", r.get("key", i))),
                    video=self.video_path(video if Path(video).suffix else f"{video}.mp4"),
                    question=str(require(r, ("question",), path, i)),
                    options=options,
                    answer=_letter(require(r, ("answer",), path, i), options, path, i),
                    categories={
                        "reasoning": str(r.get("reasoning_type", "")),
                        "demonstration": str(r.get("demonstration_type", "")),
                    },
                )
            )
        return self.limited(samples)

    def prompt(self, sample: Sample) -> Prompt:
        """TOMATO's fixed prompt around the question and options."""
        return Prompt(f"{TOMATO_PROMPT}\n\nQuestion: {sample.question}", sample.options, TOMATO_SUFFIX)


VSI_NUMERIC = frozenset({"object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation"})
"""VSIBench task types scored by mean relative accuracy; the others are multiple choice."""
MRA_THRESHOLDS = tuple(0.50 + 0.05 * i for i in range(10))


def mean_relative_accuracy(prediction: float, target: float) -> float:
    """VSIBench MRA: the share of thresholds θ ∈ {0.50, 0.55, …, 0.95} with ``|pred − gt| / gt < 1 − θ``.

    Args:
        prediction: Parsed number.
        target: Ground truth (non-zero).

    Returns:
        A value in [0, 1].
    """
    error = abs(prediction - target) / abs(target) if target else float(prediction != target)
    return sum(error < 1 - t for t in MRA_THRESHOLDS) / len(MRA_THRESHOLDS)


class VSIBench(_Benchmark):
    """``vsibench``: records with dataset, scene_name, question_type, question, options (``"A. …"``), ground_truth."""

    name = "vsibench"
    max_new_tokens, frames, tokens_per_frame = 16, 128, 256
    files, video_dir = ("test.parquet", "test.jsonl", "test.json"), ""
    pre_prompt = "These are frames of a video."

    def load(self) -> list[Sample]:
        records, path = self.records()
        samples = []
        for i, r in enumerate(records):
            kind = str(require(r, ("question_type",), path, i))
            raw = r.get("options") or ()
            options = tuple(re.sub(r"^[A-J]\.\s*", "", str(o)) for o in raw) if kind not in VSI_NUMERIC else ()
            truth = str(require(r, ("ground_truth", "answer"), path, i)).strip()
            dataset, scene = r.get("dataset", ""), str(require(r, ("scene_name", "video"), path, i))
            samples.append(
                Sample(
                    id=str(r.get("id", i)),
                    video=self.video_path(str(Path(dataset) / f"{scene}.mp4") if dataset else scene),
                    question=str(require(r, ("question",), path, i)),
                    options=options,
                    answer=truth if kind in VSI_NUMERIC else _letter(truth, options, path, i),
                    categories={"task": kind},
                )
            )
        return self.limited(samples)

    def prompt(self, sample: Sample) -> Prompt:
        """Pre-prompt, question, options and the per-kind post-prompt."""
        post = self.instruction if sample.options else "Please answer the question using a single word or phrase."
        return Prompt(f"{self.pre_prompt}\n{sample.question}", sample.options, post)

    def parse(self, response: str, sample: Sample) -> str | None:
        """MC: the first word must be a letter; numeric: the first number (as text)."""
        if sample.options:
            return first_word_letter(response, sample.letters)
        number = first_number(response)
        return None if number is None else f"{number:g}"

    def is_correct(self, parsed: str | None, sample: Sample) -> float:
        """Exact letter match, or MRA for numeric tasks."""
        if parsed is None or sample.options:
            return super().is_correct(parsed, sample)
        return mean_relative_accuracy(float(parsed), float(sample.answer))

    def score(self, samples: Sequence[Sample], predictions: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
        """``accuracy``: the mean of the 8 task scores, relative direction easy/medium/hard averaged first."""
        metrics = super().score(samples, predictions)
        tasks = {k.removeprefix("accuracy/task/"): v for k, v in metrics.items() if k.startswith("accuracy/task/")}
        direction = [v for k, v in tasks.items() if k.startswith("object_rel_direction")]
        merged = {k: v for k, v in tasks.items() if not k.startswith("object_rel_direction")}
        if direction:
            merged["object_rel_direction"] = sum(direction) / len(direction)
        metrics["accuracy_micro"] = metrics["accuracy"]
        metrics["accuracy"] = sum(merged.values()) / len(merged) if merged else 0.0
        return metrics

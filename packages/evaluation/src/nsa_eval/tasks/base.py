"""The task interface: load a local benchmark copy, build the prompt, parse the answer, score predictions.

A :class:`Sample` is one question. A :class:`Task` is constructed from a :class:`~nsa_eval.config.TaskConfig`;
the evaluation loop (``nsa_eval.evaluate``) only talks to this interface.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nsa_eval.config import TaskConfig
from nsa_eval.tasks.parsing import letter_or_option_text

LETTERS = "ABCDEFGHIJ"


class TaskDataError(ValueError):
    """A benchmark file is missing or malformed; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Sample:
    """One benchmark question.

    Attributes:
        id: Unique id within the task.
        video: Video file (absolute, or relative to the task root).
        question: Question text without option lines.
        options: Option texts in letter order; empty for numeric or open questions.
        answer: Correct letter, or the reference answer (VSIBench numeric tasks: the number as text).
        categories: Group fields for per-category metrics, e.g. ``{"task": "count", "duration": "600"}``.
        extra: Anything else the task needs (prepared-shard references, prompt text as published ...).
    """

    id: str
    video: str
    question: str
    options: tuple[str, ...] = ()
    answer: str = ""
    categories: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def letters(self) -> str:
        """Letters of the options."""
        return LETTERS[: len(self.options)]


@dataclass(frozen=True)
class Prompt:
    """What the prompt builder receives: ``build_prompt_ids(tokenizer, question, options, ..., instruction=)``.

    Attributes:
        question: Question text (may already include options when the benchmark publishes it that way).
        options: Option texts rendered as ``A. ...`` lines by the prompt builder; empty when inside ``question``.
        instruction: Text after the options.
    """

    question: str
    options: tuple[str, ...] = ()
    instruction: str = ""


class Task:
    """Base task: multiple choice with letter answers, accuracy overall and per category.

    Subclasses set ``name``, the defaults of spec §7 and override :meth:`load` (and where the benchmark
    differs, :meth:`prompt`, :meth:`parse`, :meth:`score`).
    """

    name: ClassVar[str] = ""
    max_new_tokens: ClassVar[int] = 16
    frames: ClassVar[int | None] = None
    tokens_per_frame: ClassVar[int | None] = None
    instruction: ClassVar[str] = "Answer with the option's letter from the given choices directly."

    def __init__(self, config: TaskConfig) -> None:
        """Bind the task to its config.

        Args:
            config: Task config; ``config.root`` is the local copy.
        """
        self.config = config
        self.root = Path(config.root)

    def load(self) -> list[Sample]:
        """Read the samples from ``self.root`` (honours ``config.limit``)."""
        raise NotImplementedError

    def prompt(self, sample: Sample) -> Prompt:
        """The prompt of one sample."""
        return Prompt(sample.question, sample.options, self.instruction)

    def parse(self, response: str, sample: Sample) -> str | None:
        """The predicted letter, or None when the response is unparsable (counted wrong)."""
        return letter_or_option_text(response, sample.options, sample.letters)

    def is_correct(self, parsed: str | None, sample: Sample) -> float:
        """Score of one parsed answer in [0, 1]."""
        return float(parsed is not None and parsed == sample.answer)

    def score(self, samples: Sequence[Sample], predictions: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
        """Accuracy overall and per category value; unanswered samples count as wrong.

        Args:
            samples: The evaluated samples.
            predictions: ``id -> record`` with a ``score`` field in [0, 1].

        Returns:
            ``accuracy`` plus ``accuracy/<field>/<value>``, ``num_samples``, ``num_unparsed``, ``num_errors``.
        """
        groups: dict[str, list[float]] = defaultdict(list)
        unparsed = errors = 0
        for sample in samples:
            record = predictions.get(sample.id, {})
            value = float(record.get("score", 0.0))
            unparsed += record.get("parsed") is None
            errors += bool(record.get("error"))
            groups["accuracy"].append(value)
            for key, group in sample.categories.items():
                groups[f"accuracy/{key}/{group}"].append(value)
        metrics = {k: 100.0 * sum(v) / len(v) for k, v in sorted(groups.items()) if v}
        metrics.update(num_samples=float(len(samples)), num_unparsed=float(unparsed), num_errors=float(errors))
        return metrics

    def limited(self, samples: list[Sample]) -> list[Sample]:
        """Apply ``config.limit``; reject duplicate ids (predictions are keyed by id)."""
        seen: set[str] = set()
        for sample in samples:
            if sample.id in seen:
                raise TaskDataError(f"{self.name}: duplicate sample id {sample.id!r} in {self.root}")
            seen.add(sample.id)
        return samples[: self.config.limit] if self.config.limit else samples


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON list, a JSON object of records, JSONL or parquet file.

    Args:
        path: Annotation file.

    Returns:
        The records as dicts.

    Raises:
        TaskDataError: if the file is missing or not one of these formats.
    """
    if not path.is_file():
        raise TaskDataError(f"annotation file {path} does not exist; point task.root at the benchmark's local copy")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, dict):
        return [{"id": key, **value} for key, value in data.items()]
    if not isinstance(data, list):
        raise TaskDataError(f"{path}: expected a list of records, got {type(data).__name__}")
    return data


def require(record: Mapping[str, Any], keys: Sequence[str], path: Path, index: int) -> Any:
    """The first present key of ``keys`` in ``record``.

    Raises:
        TaskDataError: naming the file, the record and the expected fields.
    """
    for key in keys:
        if key in record and record[key] is not None:
            return record[key]
    raise TaskDataError(f"{path}, record {index}: missing field (one of {list(keys)}); has {sorted(record)}")

"""One evaluation: load the task and the model, answer every sample greedily, parse, score; resumable.

Outputs in ``<output_dir>/<run_name>/``: ``predictions.jsonl`` (one line per sample, appended as it finishes),
``metrics.json`` and ``config.json``. A rerun skips the ids already in ``predictions.jsonl``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsa_data.errors import NsaDataError
from nsa_eval.config import EvalConfig
from nsa_eval.predictions import PredictionWriter, read_predictions
from nsa_eval.tasks import Sample, Task, get_task

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What an evaluation produced.

    Attributes:
        name: Run name.
        run_dir: Folder of the outputs.
        metrics: Accuracy overall and per category plus counts and token statistics.
        config: The evaluation config as JSON.
        new_samples: Samples answered in this call (0 when everything was resumed).
    """

    name: str
    run_dir: str
    metrics: dict[str, float]
    config: dict[str, Any] = field(default_factory=dict)
    new_samples: int = 0

    @property
    def predictions(self) -> Path:
        """The predictions file."""
        return Path(self.run_dir) / "predictions.jsonl"


def _answer(task: Task, sample: Sample, model: Any, tokenizer: Any, source: Any, max_new: int, system: str) -> dict:
    from nsa_data.text import build_prompt_ids
    from nsa_eval.inference import generate

    started = time.perf_counter()
    video = source.load(sample)
    prompt = task.prompt(sample)
    ids = build_prompt_ids(
        tokenizer,
        prompt.question,
        list(prompt.options),
        video.num_tokens,
        system=system,
        instruction=prompt.instruction,
    )
    response = tokenizer.decode(generate(model, tokenizer, ids, video, max_new))
    parsed = task.parse(response, sample)
    return {
        "response": response,
        "parsed": parsed,
        "score": task.is_correct(parsed, sample),
        "vision_tokens": video.num_tokens,
        "seq_len": len(ids),
        "seconds": round(time.perf_counter() - started, 4),
    }


def token_stats(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean / min / max vision tokens (the NSA sequence length L) and prompt length over answered samples."""
    lengths = [r["vision_tokens"] for r in records if r.get("vision_tokens")]
    prompts = [r["seq_len"] for r in records if r.get("seq_len")]
    if not lengths:
        return {}
    return {
        "vision_tokens_mean": sum(lengths) / len(lengths),
        "vision_tokens_min": float(min(lengths)),
        "vision_tokens_max": float(max(lengths)),
        "seq_len_mean": sum(prompts) / len(prompts),
    }


def evaluate(config: EvalConfig, progress: bool = False) -> EvalResult:
    """Evaluate one (checkpoint, method, task); resumes from ``predictions.jsonl``.

    A sample whose video cannot be read, or whose answer cannot be parsed, is recorded (``error`` /
    ``parsed: null``) and counts as wrong; the run goes on.

    Args:
        config: The evaluation.
        progress: Log one line per sample.

    Returns:
        The :class:`EvalResult`; ``metrics.json`` is written atomically.
    """
    from nsa_data.atomic import write_json_atomic

    task = get_task(config.task)
    samples = task.load()
    run_dir = config.run_dir
    done = read_predictions(run_dir / "predictions.jsonl")
    todo = [s for s in samples if s.id not in done]
    write_json_atomic(run_dir / "config.json", config.model_dump(mode="json"))
    if todo:
        from nsa_eval.inference import VideoSource, load_model, load_tokenizer

        model, tokenizer, source = load_model(config), load_tokenizer(config), VideoSource(task, config.task)
        max_new = config.task.max_new_tokens or task.max_new_tokens
        with PredictionWriter(run_dir / "predictions.jsonl") as writer:
            for i, sample in enumerate(todo):
                base = {"id": sample.id, "answer": sample.answer, "categories": dict(sample.categories)}
                try:
                    record = {**base, **_answer(task, sample, model, tokenizer, source, max_new, config.system_prompt)}
                except (OSError, ValueError, NsaDataError) as err:
                    record = {
                        **base,
                        "response": None,
                        "parsed": None,
                        "score": 0.0,
                        "error": f"{type(err).__name__}: {err}",
                    }
                writer.write(record)
                done[sample.id] = record
                if progress:
                    logger.info("%s %d/%d %s -> %s", config.run_name, i + 1, len(todo), sample.id, record["parsed"])
    metrics = task.score(samples, done)
    metrics.update(token_stats([done[s.id] for s in samples if s.id in done]))
    write_json_atomic(run_dir / "metrics.json", metrics)
    return EvalResult(config.run_name, str(run_dir), metrics, config.model_dump(mode="json"), len(todo))


def evaluate_json(payload: dict[str, Any]) -> dict[str, Any]:
    """:func:`evaluate` on a JSON config, returning JSON; the function that executors run in workers.

    Args:
        payload: ``EvalConfig`` as JSON.

    Returns:
        ``name``, ``run_dir``, ``metrics``, ``config``, ``new_samples``.
    """
    result = evaluate(EvalConfig.model_validate(payload))
    return json.loads(json.dumps(result.__dict__))

"""Ingest LLaVA-Video-178K / VideoNSA training annotations into the normalized manifest, with filter rules.

Two record formats are read from JSON (a list) or JSONL files:

- LLaVA-Video-178K: ``{"id", "video", "conversations": [{"from": "human", "value": "<image>\\nQ"},
  {"from": "gpt", "value": "A"}, ...], "data_source"}``; every human/gpt pair becomes one row.
- ms-swift (VideoNSA's training format): ``{"messages": [{"role": "user", "content": "<video>Q"},
  {"role": "assistant", "content": "A"}, ...], "videos": ["path"]}``.

Option lines (``A. ...``) are split off the question; the answer becomes the option letter. Rules
(:mod:`nsa_data.config`) run in order and the report says what each removed; removed and malformed records go
to a rejects file. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nsa_data.atomic import write_json_atomic, write_jsonl_atomic
from nsa_data.config import IngestConfig
from nsa_data.errors import ManifestError, VideoReadError, reject_record
from nsa_data.manifest import LETTERS, ManifestRow, write_manifest
from nsa_data.video import probe_video

_MEDIA_TOKEN = re.compile(r"<(image|video)>\s*")
_OPTION = re.compile(r"^\s*\(?([A-J])[\.\):]\s*(.+?)\s*$")
_INSTRUCTION = re.compile(r"^\s*(answer with|please (answer|respond)|respond with|only give)", re.IGNORECASE)
_ANSWER_LETTER = re.compile(r"^\s*\(?([A-J])(?:[\.\):]|\s|$)")


def split_options(text: str) -> tuple[str, tuple[str, ...]]:
    """Separate a question from consecutive ``A. ...`` option lines and answer instructions.

    Args:
        text: Question text as written in the annotation (media tokens already removed).

    Returns:
        ``(question, options)``; options are empty unless at least two lines labelled A, B, ... in order exist.
    """
    question, options = [], []
    for line in text.strip().splitlines():
        match = _OPTION.match(line)
        if match and match.group(1) == LETTERS[len(options)]:
            options.append(match.group(2))
        elif not _INSTRUCTION.match(line):
            question.append(line)
    if len(options) < 2:
        return _INSTRUCTION.sub("", text).strip(), ()
    return "\n".join(question).strip(), tuple(options)


def _answer(answer: str, options: tuple[str, ...]) -> tuple[str, int | None]:
    if not options:
        return answer.strip(), None
    match = _ANSWER_LETTER.match(answer)
    if match and LETTERS.index(match.group(1)) < len(options):
        index = LETTERS.index(match.group(1))
        return LETTERS[index], index
    stripped = answer.strip().rstrip(".").lower()
    for index, option in enumerate(options):
        if option.strip().rstrip(".").lower() == stripped:
            return LETTERS[index], index
    raise ValueError(f"multiple-choice answer {answer[:60]!r} names no option letter or option text")


def _pairs(record: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """The video path and (question, answer) pairs of one record in either format."""
    if "conversations" in record:
        turns = [(t.get("from"), t.get("value", "")) for t in record["conversations"]]
        video = record.get("video")
        user, bot = "human", "gpt"
    elif "messages" in record:
        turns = [(t.get("role"), t.get("content", "")) for t in record["messages"] if t.get("role") != "system"]
        videos = record.get("videos") or []
        video = videos[0] if videos else None
        user, bot = "user", "assistant"
    else:
        raise ValueError("record has neither 'conversations' (LLaVA-Video) nor 'messages' (ms-swift)")
    if not video:
        raise ValueError("record names no video ('video' or 'videos')")
    pairs = [(q, a) for (r1, q), (r2, a) in zip(turns[::2], turns[1::2], strict=False) if r1 == user and r2 == bot]
    if not pairs:
        raise ValueError(f"record has no {user}/{bot} turn pair")
    return str(video), pairs


def _load_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ManifestError(f"annotation file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    if not isinstance(data, list):
        raise ManifestError(f"{path}: expected a JSON list of records (or a .jsonl file)")
    return data


def parse_records(path: Path, config: IngestConfig) -> tuple[list[ManifestRow], list[dict[str, str]]]:
    """Rows of one annotation file, plus rejects for malformed records.

    Args:
        path: JSON or JSONL annotation file.
        config: Ingest config (source and split names).

    Returns:
        ``(rows, rejects)``; durations and frame counts are not filled in yet.
    """
    rows, rejects = [], []
    for i, record in enumerate(_load_records(path)):
        base = str(record.get("id", f"{path.stem}-{i}")) if isinstance(record, dict) else f"{path.stem}-{i}"
        try:
            if not isinstance(record, dict):
                raise ValueError("record is not a JSON object")
            video, pairs = _pairs(record)
            for k, (q, a) in enumerate(pairs):
                question, options = split_options(_MEDIA_TOKEN.sub("", q))
                answer, index = _answer(a, options)
                rows.append(
                    ManifestRow(
                        id=base if len(pairs) == 1 else f"{base}-{k}",
                        video_path=video,
                        question=question,
                        options=options,
                        answer=answer,
                        answer_index=index,
                        task="multiple_choice" if options else "open_ended",
                        category=str(record.get("data_source", "")),
                        split=config.split,
                        source=config.source,
                        meta=json.dumps({"file": path.name, "record": i, "turn": k}),
                    )
                )
        except ValueError as err:
            rejects.append(reject_record(base, str(path), "parse", err))
    return rows, rejects


def _probe(path: str) -> dict[str, Any]:
    try:
        info = probe_video(path)
    except VideoReadError as err:
        return {"error": reject_record("", path, "probe", err)}
    return {"duration": info.duration, "fps": info.fps, "frames": info.frames}


def _probe_all(paths: list[str], workers: int, progress: bool) -> dict[str, dict[str, Any]]:
    bar = tqdm(total=len(paths), desc="probe", unit="video", disable=not progress)
    if workers == 1:
        out = {}
        for p in paths:
            out[p] = _probe(p)
            bar.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            out = {}
            for p, result in zip(paths, pool.map(_probe, paths, chunksize=8), strict=True):
                out[p] = result
                bar.update()
    bar.close()
    return out


def ingest(
    inputs: list[str | Path],
    out: str | Path,
    config: IngestConfig | None = None,
    video_root: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Parse, probe and filter annotation files into a manifest, writing a report and a rejects list beside it.

    Args:
        inputs: JSON/JSONL annotation files.
        out: Manifest parquet to write; ``<out>.report.json`` and ``<out>.rejects.jsonl`` are written next to it.
        config: Ingest config (rules, workers); VideoNSA's filter when None.
        video_root: Folder the annotations' relative video paths are relative to (the annotation file's folder
            when None). Paths are stored as written, so pass the same root to ``prepare``.
        progress: Show a progress bar on stderr.

    Returns:
        The report: inputs, rows parsed, per-rule removals and rows kept.
    """
    from nsa_data.filters import apply_rules

    config = config or IngestConfig()
    rows, rejects = [], []
    for path in map(Path, inputs):
        parsed, bad = parse_records(path, config)
        rows += parsed
        rejects += bad
    root = Path(video_root) if video_root else (Path(inputs[0]).parent if inputs else Path("."))
    located = {
        r.video_path: str(Path(r.video_path) if Path(r.video_path).is_absolute() else root / r.video_path) for r in rows
    }
    probed = _probe_all(sorted(set(located.values())), config.num_workers, progress)
    probes = {v: probed[p] for v, p in located.items()}
    rows = [r.model_copy(update={k: probes[r.video_path].get(k) for k in ("duration", "fps", "frames")}) for r in rows]
    parsed_rows = len(rows)
    rows, reports, removed = apply_rules(rows, config.rules, probes)
    out = Path(out)
    write_manifest(rows, out)
    write_jsonl_atomic(out.with_suffix(".rejects.jsonl"), rejects + removed)
    report = {
        "inputs": [str(p) for p in inputs],
        "video_root": str(root),
        "malformed_records": len(rejects),
        "rows_parsed": parsed_rows,
        "rules": [r.__dict__ for r in reports],
        "rows_kept": len(rows),
        "manifest": str(out),
    }
    write_json_atomic(out.with_suffix(".report.json"), report)
    return report

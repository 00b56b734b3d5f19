"""The normalized QA manifest: one parquet row per question, shared by ingest, synth, prepare and evaluation.

Columns (``MANIFEST_SCHEMA``):

- ``id``: unique question id.
- ``video_path``: video file, relative to the manifest's folder unless absolute.
- ``duration`` (s), ``fps`` (average source rate), ``frames`` (source frame count): from a probe; null if unknown.
- ``question``: question text without the option lines.
- ``options``: option texts in letter order (A, B, ...); empty for open-ended questions.
- ``answer``: the correct letter for multiple choice, else the reference answer text.
- ``answer_index``: 0-based index of the correct option; null for open-ended questions.
- ``task``: task kind (``needle``, ``order``, ``count``, ``spatial``, ``open_ended``, a benchmark's task name ...).
- ``category``: finer group for per-group metrics (length group, benchmark category).
- ``split``: ``train``, ``test``, ``val`` ...
- ``source``: dataset name.
- ``meta``: JSON object string with anything else (event times, original record fields).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nsa_data.atomic import atomic_path
from nsa_data.errors import ManifestError

LETTERS = "ABCDEFGHIJ"

MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("video_path", pa.string()),
        ("duration", pa.float64()),
        ("fps", pa.float64()),
        ("frames", pa.int64()),
        ("question", pa.string()),
        ("options", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("answer_index", pa.int64()),
        ("task", pa.string()),
        ("category", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("meta", pa.string()),
    ]
)


class ManifestRow(BaseModel):
    """One validated manifest row; see the module docstring for the column meanings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    video_path: str = Field(min_length=1)
    duration: float | None = None
    fps: float | None = None
    frames: int | None = None
    question: str
    options: tuple[str, ...] = ()
    answer: str
    answer_index: int | None = None
    task: str = "open_ended"
    category: str = ""
    split: str = "train"
    source: str = ""
    meta: str = "{}"

    @model_validator(mode="after")
    def _check(self) -> ManifestRow:
        if self.options:
            if len(self.options) > len(LETTERS):
                raise ValueError(f"row {self.id}: at most {len(LETTERS)} options, got {len(self.options)}")
            if self.answer_index is None or not 0 <= self.answer_index < len(self.options):
                raise ValueError(f"row {self.id}: answer_index must index options (0..{len(self.options) - 1})")
            if self.answer != LETTERS[self.answer_index]:
                raise ValueError(
                    f"row {self.id}: answer {self.answer!r} must be the letter {LETTERS[self.answer_index]}"
                )
        elif self.answer_index is not None:
            raise ValueError(f"row {self.id}: answer_index is set but options are empty")
        json.loads(self.meta)
        return self

    def prompt(self) -> str:
        """Question plus ``A. ...`` option lines (no instruction suffix; evaluators add their own)."""
        lines = [self.question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(self.options)]
        return "\n".join(lines)


def write_manifest(rows: list[ManifestRow], path: str | Path) -> Path:
    """Write rows as parquet, atomically.

    Args:
        rows: Validated rows.
        path: Target ``.parquet`` file.

    Returns:
        The written path.
    """
    columns = {name: [getattr(r, name) for r in rows] for name in MANIFEST_SCHEMA.names}
    columns["options"] = [list(o) for o in columns["options"]]
    table = pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_manifest(path: str | Path, splits: tuple[str, ...] = ()) -> list[ManifestRow]:
    """Read and validate a manifest.

    Args:
        path: A parquet file written by :func:`write_manifest` (extra columns are ignored).
        splits: Keep only these splits; empty keeps all.

    Returns:
        The rows in file order.

    Raises:
        ManifestError: if the file is missing, lacks a column or a row is invalid (the message names both).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist; create it with `nsa-data synth` or `nsa-data ingest`")
    table = pq.read_table(path)
    missing = [n for n in ("id", "video_path", "question", "answer") if n not in table.column_names]
    if missing:
        raise ManifestError(f"manifest {path} lacks required columns {missing}")
    names = [n for n in MANIFEST_SCHEMA.names if n in table.column_names]
    rows = []
    for i, raw in enumerate(table.select(names).to_pylist()):
        if splits and raw.get("split") not in splits:
            continue
        values: dict[str, Any] = {k: v for k, v in raw.items() if v is not None}
        try:
            rows.append(ManifestRow.model_validate(values))
        except ValueError as err:
            raise ManifestError(f"manifest {path}, row {i}: {err}") from err
    return rows


def resolve_video(row: ManifestRow, manifest_path: str | Path, video_root: str | Path | None = None) -> Path:
    """Absolute path of a row's video: absolute paths as-is, else under ``video_root`` or the manifest's folder.

    Args:
        row: Manifest row.
        manifest_path: The manifest file the row came from.
        video_root: Folder that relative paths are relative to; the manifest's folder when None.

    Returns:
        The video path (not checked for existence).
    """
    path = Path(row.video_path)
    if path.is_absolute():
        return path
    return Path(video_root or Path(manifest_path).parent) / path

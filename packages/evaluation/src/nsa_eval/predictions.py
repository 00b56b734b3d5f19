"""Per-sample predictions as JSONL, appended and fsynced one line at a time so a killed run resumes.

A line is complete or absent: a torn last line (a crash mid-write) is dropped on read and rewritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_predictions(path: str | Path) -> dict[str, dict[str, Any]]:
    """Finished predictions keyed by sample id (later lines win); a torn last line is ignored.

    Args:
        path: Predictions file; missing means none.

    Returns:
        ``id -> record``.
    """
    path = Path(path)
    records: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "id" in record:
            records[str(record["id"])] = record
    return records


class PredictionWriter:
    """Appends one JSON line per sample with flush + fsync; repairs a torn tail first."""

    def __init__(self, path: str | Path) -> None:
        """Open ``path`` for appending (created with its folder).

        Args:
            path: Predictions file.
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data[: data.rfind(b"\n") + 1]
                with open(self.path, "wb") as fh:
                    fh.write(keep)
                    fh.flush()
                    os.fsync(fh.fileno())
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, record: dict[str, Any]) -> None:
        """Append one record durably."""
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

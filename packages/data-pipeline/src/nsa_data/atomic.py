"""Crash-safe file writes: write a temporary file in the target's folder, fsync, then ``os.replace``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _default_mode() -> int:
    """Permissions a plain ``open`` would give a new file (0o666 minus the umask); mkstemp would give 0o600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _default_mode()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target``, on error it is removed.

    Args:
        target: Final file path. Its folder is created if needed.

    Yields:
        The temporary path to write to (same folder, hidden name ending in ``.tmp``, so globs for the final
        suffix never match a half-written file).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _MODE)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically.

    Args:
        target: File path.
        text: UTF-8 content.
    """
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented, key-sorted JSON, atomically.

    Args:
        target: File path.
        payload: JSON-serialisable object.
    """
    write_text_atomic(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_jsonl_atomic(target: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically.

    Args:
        target: File path.
        rows: JSON-serialisable dicts.
    """
    write_text_atomic(target, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks.

    Args:
        path: File to hash.
        chunk: Read size in bytes.

    Returns:
        64 hex characters.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()

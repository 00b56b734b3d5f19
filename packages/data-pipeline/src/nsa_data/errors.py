"""Typed errors. Each names the offending file or argument and says what to do about it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

VideoErrorKind = Literal["missing", "unreadable", "no_video_stream", "corrupt", "truncated", "empty"]


class NsaDataError(Exception):
    """Base class of every error raised on purpose by ``nsa_data``."""


class VideoReadError(NsaDataError):
    """A video file could not be turned into frames.

    Attributes:
        path: The file.
        kind: A short machine-readable category (``missing``, ``unreadable``, ``no_video_stream``, ``corrupt``,
            ``truncated``, ``empty``), recorded in rejects lists.
        reason: A human-readable explanation.
    """

    def __init__(self, path: str | Path, kind: VideoErrorKind, reason: str) -> None:
        self.path = str(path)
        self.kind: VideoErrorKind = kind
        self.reason = reason
        super().__init__(f"{self.path}: {kind}: {reason}")


class ManifestError(NsaDataError):
    """A manifest or an input annotation file is malformed; the message names the file and the field."""


def reject_record(item_id: str, path: str, stage: str, error: BaseException) -> dict[str, str]:
    """The row a batch job appends to its rejects list instead of stopping.

    Args:
        item_id: Manifest id (or video key) of the rejected item.
        path: Video or annotation file concerned.
        stage: Pipeline stage that rejected it (``probe``, ``sample``, ``filter:<rule>`` ...).
        error: The exception that caused the rejection.

    Returns:
        A JSON-serialisable dict with id, path, stage, kind and reason.
    """
    kind = error.kind if isinstance(error, VideoReadError) else type(error).__name__
    reason = error.reason if isinstance(error, VideoReadError) else str(error)
    return {"id": item_id, "path": path, "stage": stage, "kind": kind, "reason": reason}

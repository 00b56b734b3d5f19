"""The synthetic long-video benchmark of ``nsa_data.synth`` (needle / order / count / spatial, 4-way MC)."""

from __future__ import annotations

from pathlib import Path

from nsa_eval.tasks.base import Sample, Task, TaskDataError


class SyntheticTask(Task):
    """Reads a prepared folder (``index.parquet`` + shards) or a synthetic folder (``manifest.parquet``).

    From a prepared folder the video tensors come from the shards unless the task config asks for other
    sampling (frames / TPF / fps), in which case the videos are decoded again from the manifest's paths.
    Categories: ``task`` (needle, order, count, spatial) and ``length`` (the duration group, e.g. ``16s``).
    """

    name = "synthetic"
    max_new_tokens = 8

    def _rows(self) -> tuple[list[dict], Path]:
        index, manifest = self.root / "index.parquet", self.root / "manifest.parquet"
        if index.is_file():
            import pyarrow.parquet as pq

            return pq.read_table(index).to_pylist(), self._video_root()
        if manifest.is_file():
            from nsa_data.manifest import read_manifest

            return [r.model_dump() for r in read_manifest(manifest)], self.root
        raise TaskDataError(
            f"{self.root} has neither index.parquet nor manifest.parquet; set task.root to the output of "
            "`nsa-data prepare` or `nsa-data synth`"
        )

    def _video_root(self) -> Path:
        if self.config.video_root:
            return Path(self.config.video_root)
        return self.root.parent / "synth"

    def load(self) -> list[Sample]:
        """Samples of ``config.split`` in file order."""
        rows, video_root = self._rows()
        samples = []
        for row in rows:
            if self.config.split and row.get("split") != self.config.split:
                continue
            video = Path(row["video_path"])
            keys = ("shard", "video_key", "second_per_grid_ts")
            extra = {k: row[k] for k in keys} if "shard" in row else {}
            samples.append(
                Sample(
                    id=row["id"],
                    video=str(video if video.is_absolute() else video_root / video),
                    question=row["question"],
                    options=tuple(row["options"]),
                    answer=row["answer"],
                    categories={"task": row.get("task") or "", "length": row.get("category") or ""},
                    extra=extra,
                )
            )
        if not samples:
            raise TaskDataError(f"{self.root}: no samples in split {self.config.split!r}; check task.split")
        return self.limited(samples)

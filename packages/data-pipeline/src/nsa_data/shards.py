"""Preprocess a manifest into content-addressed safetensors shards of model-ready tensors, resumably.

Each unique video gets a key: SHA-256 of its bytes, the sampling config and the storage format. Keys are
sorted and cut into chunks of ``shard_size``; a shard is named by the hash of its keys, so a shard file exists
only if it was completely written for exactly those inputs (shards are written to a hidden temporary file and
renamed). A killed run therefore resumes by skipping existing shards; rejected videos are recorded inside
their shard's metadata, so nothing is lost on resume either.

Output folder: ``shards/<hash>.safetensors``, ``index.parquet`` (manifest rows joined with their video key,
shard and grid), ``rejects.jsonl``, ``prepare_config.json`` and ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from nsa_data.atomic import atomic_path, file_sha256, write_json_atomic, write_jsonl_atomic
from nsa_data.config import PrepareConfig
from nsa_data.errors import VideoReadError, reject_record
from nsa_data.manifest import MANIFEST_SCHEMA, ManifestRow, read_manifest, resolve_video
from nsa_data.video import sample_video

FORMAT_VERSION = "2"
"""Bumped whenever the tensors stored for a given video and config change."""


def video_key(path: Path, config: PrepareConfig) -> str:
    """Content address of one video's tensors: hash of its bytes, the sampling config and the storage format.

    Args:
        path: Video file.
        config: Prepare config (only ``sampling`` and ``store`` matter).

    Returns:
        32 hex characters.
    """
    payload = "|".join([FORMAT_VERSION, file_sha256(path), config.sampling.model_dump_json(), config.store])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _shard_name(keys: list[str]) -> str:
    return hashlib.sha256("|".join(keys).encode()).hexdigest()[:24] + ".safetensors"


def _write_shard(args: tuple[PrepareConfig, list[tuple[str, str, str]], str]) -> dict[str, Any]:
    """Sample every (key, file, manifest path) of one chunk and write the shard; returns its metadata.

    Only manifest paths (as written in the manifest) go into the shard, so shards are byte-identical wherever the
    data lives.
    """
    config, items, target = args
    tensors: dict[str, np.ndarray] = {}
    samples, rejects = [], []
    for key, path, shown in items:
        try:
            sampled = sample_video(path, config.sampling)
        except VideoReadError as err:
            rejects.append(reject_record(key, shown, "sample", err))
            continue
        if config.store == "frames":
            tensors[f"{key}.frames"] = sampled.frames
        else:
            tensors[f"{key}.pixel_values_videos"] = sampled.pixel_values_videos
        tensors[f"{key}.video_grid_thw"] = sampled.video_grid_thw
        tensors[f"{key}.frame_times"] = sampled.frame_times.astype(np.float64)
        tensors[f"{key}.frame_indices"] = sampled.frame_indices.astype(np.int64)
        samples.append(
            {
                "key": key,
                "path": shown,
                "fps": sampled.fps,
                "second_per_grid_ts": sampled.second_per_grid_ts,
                "grid_thw": sampled.video_grid_thw[0].tolist(),
                "num_video_tokens": sampled.num_llm_tokens,
                "duration": sampled.duration,
                "source_fps": sampled.source_fps,
                "total_frames": sampled.total_frames,
                "rotation": sampled.rotation,
            }
        )
    # One metadata key: safetensors writes a multi-key header in hash-map order, which would break byte identity.
    metadata = {
        "nsa_data": json.dumps({"format": FORMAT_VERSION, "samples": samples, "rejects": rejects}, sort_keys=True)
    }
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return {"samples": samples, "rejects": rejects}


def _read_shard_metadata(path: Path, keys: list[str]) -> dict[str, Any] | None:
    """The shard's metadata, or None when the file is not a complete shard of exactly ``keys`` (then rebuild)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="np") as fh:
            meta = json.loads((fh.metadata() or {}).get("nsa_data", "{}"))
    except (OSError, ValueError, SafetensorError):
        return None
    covered = [s["key"] for s in meta.get("samples", [])] + [r["id"] for r in meta.get("rejects", [])]
    if meta.get("format") != FORMAT_VERSION or sorted(covered) != sorted(keys):
        return None
    return {"samples": meta["samples"], "rejects": meta["rejects"]}


@dataclass(frozen=True)
class PrepareResult:
    """Summary of a prepare run."""

    out_dir: Path
    rows: int
    videos: int
    shards: int
    shards_reused: int
    rejected_rows: int


def prepare_shards(
    manifest: str | Path,
    out_dir: str | Path,
    config: PrepareConfig | None = None,
    video_root: str | Path | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Turn a manifest into shards plus an index; resumes where a killed run stopped.

    Args:
        manifest: Manifest parquet file.
        out_dir: Output folder (created).
        config: Prepare knobs; defaults when None.
        video_root: Folder for relative video paths; the manifest's folder when None.
        progress: Show a progress bar on stderr.

    Returns:
        A :class:`PrepareResult`.
    """
    config = config or PrepareConfig()
    out_dir = Path(out_dir)
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.glob(".*.tmp*"):
        stale.unlink()
    rows = read_manifest(manifest, splits=config.splits)
    failed: dict[str, dict[str, str]] = {}
    key_of: dict[str, str] = {}
    for row in rows:
        path = str(resolve_video(row, manifest, video_root))
        if path in key_of or path in failed:
            continue
        try:
            if not Path(path).is_file():
                raise VideoReadError(path, "missing", "file does not exist; check the manifest's video_path")
            key_of[path] = video_key(Path(path), config)
        except (VideoReadError, OSError) as err:
            failed[path] = reject_record(row.id, row.video_path, "hash", err)
    shown = {str(resolve_video(r, manifest, video_root)): r.video_path for r in reversed(rows)}
    first_path: dict[str, str] = {}
    for path in sorted(key_of):
        first_path.setdefault(key_of[path], path)
    items = sorted((k, p, shown[p]) for k, p in first_path.items())
    chunks = [items[i : i + config.shard_size] for i in range(0, len(items), config.shard_size)]
    names = [_shard_name([k for k, _, _ in chunk]) for chunk in chunks]
    found = {n: _read_shard_metadata(shard_dir / n, [k for k, _, _ in c]) for c, n in zip(chunks, names, strict=True)}
    metas: dict[str, dict[str, Any]] = {n: m for n, m in found.items() if m is not None}
    reused = len(metas)
    todo = [(config, chunk, str(shard_dir / n)) for chunk, n in zip(chunks, names, strict=True) if n not in metas]
    bar = tqdm(total=len(chunks), initial=reused, desc="prepare", unit="shard", disable=not progress)
    if config.num_workers == 1 or len(todo) <= 1:
        for job in todo:
            metas[Path(job[2]).name] = _write_shard(job)
            bar.update()
    else:
        with ProcessPoolExecutor(min(config.num_workers, len(todo)), mp_context=get_context("spawn")) as pool:
            for job, meta in zip(todo, pool.map(_write_shard, todo), strict=True):
                metas[Path(job[2]).name] = meta
                bar.update()
    bar.close()
    for stale in shard_dir.glob("*.safetensors"):
        if stale.name not in metas and not stale.name.startswith("."):
            stale.unlink()
    records, rejects = _index_records(rows, manifest, video_root, key_of, failed, metas)
    _write_index(records, out_dir)
    write_jsonl_atomic(out_dir / "rejects.jsonl", rejects)
    write_json_atomic(out_dir / "prepare_config.json", config.model_dump(mode="json"))
    videos = sum(len(m["samples"]) for m in metas.values())
    result = PrepareResult(out_dir, len(records), videos, len(metas), reused, len(rejects))
    write_json_atomic(out_dir / "summary.json", {k: v for k, v in result.__dict__.items() if k != "out_dir"})
    return result


INDEX_EXTRA = [
    ("video_key", pa.string()),
    ("shard", pa.string()),
    ("sampling_fps", pa.float64()),
    ("second_per_grid_ts", pa.float64()),
    ("grid_t", pa.int64()),
    ("grid_h", pa.int64()),
    ("grid_w", pa.int64()),
    ("num_video_tokens", pa.int64()),
]
"""Columns the index adds to the manifest schema."""


def _index_records(
    rows: list[ManifestRow],
    manifest: str | Path,
    video_root: str | Path | None,
    key_of: dict[str, str],
    failed: dict[str, dict[str, str]],
    metas: dict[str, dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Join rows with their shard entries; every row ends up in exactly one of the two lists."""
    info = {s["key"]: (name, s) for name, meta in metas.items() for s in meta["samples"]}
    bad = {r["id"]: r for meta in metas.values() for r in meta["rejects"]}
    records, rejects = [], []
    for row in rows:
        path = str(resolve_video(row, manifest, video_root))
        key = key_of.get(path)
        if key is None or key not in info:
            cause = failed[path] if key is None else bad[key]
            rejects.append({**cause, "id": row.id, "path": row.video_path})
            continue
        shard, sample = info[key]
        t, h, w = sample["grid_thw"]
        record = row.model_dump()
        record.update(
            options=list(row.options),
            video_key=key,
            shard=shard,
            sampling_fps=sample["fps"],
            second_per_grid_ts=sample["second_per_grid_ts"],
            grid_t=t,
            grid_h=h,
            grid_w=w,
            num_video_tokens=sample["num_video_tokens"],
        )
        records.append(record)
    return records, rejects


def _write_index(records: list[dict[str, Any]], out_dir: Path) -> None:
    schema = pa.schema(list(MANIFEST_SCHEMA) + [pa.field(n, t) for n, t in INDEX_EXTRA])
    table = pa.Table.from_pylist(records, schema=schema)
    with atomic_path(out_dir / "index.parquet") as tmp:
        pq.write_table(table, tmp)

"""Shards: index/rejects bookkeeping, bit-exact read-back, content addressing and crash-safe resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors import safe_open

import nsa_data.shards as shards_module
from nsa_data.config import PrepareConfig, SamplingConfig, SynthConfig
from nsa_data.dataset import ShardDataset
from nsa_data.manifest import read_manifest, write_manifest
from nsa_data.shards import prepare_shards
from nsa_data.synth.generate import generate_synthetic
from nsa_data.video import sample_video

CONFIG = PrepareConfig(shard_size=2, num_workers=1)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic videos plus a corrupt file, a missing file and a second question on video 0."""
    root = tmp_path_factory.mktemp("bench")
    path = generate_synthetic(SynthConfig(num_videos=6, durations=(4.0,), width=56, height=56), root, progress=False)
    rows = read_manifest(path)
    (root / "videos" / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    extra = [
        rows[0].model_copy(update={"id": "corrupt", "video_path": "videos/bad.mp4"}),
        rows[0].model_copy(update={"id": "missing", "video_path": "videos/nope.mp4"}),
        rows[0].model_copy(update={"id": "shared", "question": "Another question?"}),
    ]
    return write_manifest(rows + extra, root / "with_bad.parquet")


def _shard_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / "shards").glob("*.safetensors") if not p.name.startswith("."))


def test_every_row_is_indexed_or_rejected(manifest: Path, tmp_path: Path) -> None:
    result = prepare_shards(manifest, tmp_path, CONFIG, progress=False)
    index = pq.read_table(tmp_path / "index.parquet").to_pylist()
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert len(index) + len(rejects) == 9 and result.rows == 7 and result.videos == 6
    assert {r["id"]: r["kind"] for r in rejects} == {"corrupt": "unreadable", "missing": "missing"}
    assert {r["path"] for r in rejects} == {"videos/bad.mp4", "videos/nope.mp4"}, "manifest paths, not absolute ones"
    keys = {r["id"]: r["video_key"] for r in index}
    assert keys["shared"] == keys["synth-0-00000"]
    assert result.shards == 4 and len(_shard_files(tmp_path)) == 4, "7 hashed files (6 good + bad.mp4) in pairs"


@pytest.mark.parametrize("store", [pytest.param("frames", id="frames"), pytest.param("pixel_values", id="pixels")])
def test_dataset_is_bit_exact_with_direct_sampling(manifest: Path, tmp_path: Path, store: str) -> None:
    prepare_shards(manifest, tmp_path, CONFIG.model_copy(update={"store": store}), progress=False)
    dataset = ShardDataset(tmp_path, splits=("train", "test"))
    item = next(dataset[i] for i in range(len(dataset)) if dataset[i]["id"] == "synth-0-00003")
    direct = sample_video(manifest.parent / item["video_path"], SamplingConfig())
    np.testing.assert_array_equal(item["pixel_values_videos"], direct.pixel_values_videos)
    np.testing.assert_array_equal(item["video_grid_thw"], direct.video_grid_thw)
    t, h, w = direct.video_grid_thw[0]
    assert item["num_video_tokens"] == t * h * w // 4 and item["second_per_grid_ts"] == direct.second_per_grid_ts
    assert item["options"] and item["answer"] in "ABCD"


def test_torch_items(manifest: Path, tmp_path: Path) -> None:
    import torch

    prepare_shards(manifest, tmp_path, CONFIG, progress=False)
    item = ShardDataset(tmp_path, as_torch=True)[0]
    assert isinstance(item["pixel_values_videos"], torch.Tensor) and item["pixel_values_videos"].dtype == torch.float32


def test_changed_config_gives_new_addresses_and_prunes(manifest: Path, tmp_path: Path) -> None:
    prepare_shards(manifest, tmp_path, CONFIG, progress=False)
    before = _shard_files(tmp_path)
    again = prepare_shards(manifest, tmp_path, CONFIG, progress=False)
    assert again.shards_reused == 4 and _shard_files(tmp_path) == before
    other = CONFIG.model_copy(update={"sampling": SamplingConfig(fps=2.0)})
    changed = prepare_shards(manifest, tmp_path, other, progress=False)
    assert changed.shards_reused == 0 and not set(before) & set(_shard_files(tmp_path))


def test_crash_then_resume(manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def crashing(path, config):
        calls.append(path)
        if len(calls) == 4:
            raise RuntimeError("simulated crash")
        return sample_video(path, config)

    monkeypatch.setattr(shards_module, "sample_video", crashing)
    with pytest.raises(RuntimeError, match="simulated"):
        prepare_shards(manifest, tmp_path, CONFIG, progress=False)
    done = _shard_files(tmp_path)
    assert len(done) == 1 and not list((tmp_path / "shards").glob(".*"))
    with safe_open(str(done[0]), "np") as fh:
        meta = json.loads(fh.metadata()["nsa_data"])
        stored = len(meta["samples"])
        assert stored + len(meta["rejects"]) == 2 and len(list(fh.keys())) == 4 * stored
    calls.clear()
    monkeypatch.setattr(shards_module, "sample_video", lambda p, c: calls.append(p) or sample_video(p, c))
    result = prepare_shards(manifest, tmp_path, CONFIG, progress=False)
    assert result.shards_reused == 1 and len(calls) == 5 and result.rows == 7
    fresh = tmp_path / "fresh"
    prepare_shards(manifest, fresh, CONFIG, progress=False)
    assert pq.read_table(fresh / "index.parquet").equals(pq.read_table(tmp_path / "index.parquet"))
    assert [p.read_bytes() for p in _shard_files(fresh)] == [p.read_bytes() for p in _shard_files(tmp_path)]


@pytest.mark.slow
def test_sigkill_leaves_only_complete_shards(tmp_path: Path) -> None:
    bench = generate_synthetic(SynthConfig(num_videos=16, durations=(16.0,)), tmp_path / "bench", progress=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "nsa_data.cli", "prepare", "--manifest", str(bench), "--out", str(out), "--quiet"]
    cmd += ["--set", "shard_size=1", "--set", "num_workers=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and len(_shard_files(out)) < 2:
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.fail("prepare finished before it could be killed; make the workload larger")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    survivors = _shard_files(out)
    assert 2 <= len(survivors) < 16 and not (out / "index.parquet").exists()
    for shard in survivors:
        with safe_open(str(shard), "np") as fh:
            assert len(list(fh.keys())) == 4
    result = prepare_shards(bench, out, PrepareConfig(shard_size=1, num_workers=2), progress=False)
    assert result.shards_reused >= len(survivors) and result.rows == 16 and result.shards == 16
    assert not list((out / "shards").glob(".*"))


def test_atomic_files_get_normal_permissions(tmp_path: Path) -> None:
    from nsa_data.atomic import write_text_atomic

    write_text_atomic(tmp_path / "x.txt", "hello")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_foreign_file_under_a_shard_name_is_rebuilt(manifest: Path, tmp_path: Path) -> None:
    prepare_shards(manifest, tmp_path, CONFIG, progress=False)
    victim = _shard_files(tmp_path)[0]
    good = victim.read_bytes()
    victim.write_bytes(b"not a safetensors file")
    result = prepare_shards(manifest, tmp_path, CONFIG, progress=False)
    assert result.shards_reused == 3 and result.rows == 7 and victim.read_bytes() == good

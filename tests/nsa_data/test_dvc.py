"""`dvc repro prepare` (synth -> prepare) in a fresh git repository holding only this package, tiny params."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).parent / "dvc"
pytestmark = pytest.mark.skipif(not DVC.exists(), reason="needs dvc 3.67.1 (dev dependency group)")


@pytest.mark.slow
def test_dvc_repro_on_fresh_repo(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "packages" / "data-pipeline").mkdir(parents=True)
    shutil.copytree(REPO / "packages" / "data-pipeline" / "src", repo / "packages" / "data-pipeline" / "src")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    (repo / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copy(REPO / ".dvc" / ".gitignore", repo / ".dvc" / ".gitignore")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"].update(num_videos=4, durations=[4.0])
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / ".gitignore").write_text("/data/\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{DVC.parent}{os.pathsep}{os.environ['PATH']}"}
    env.setdefault("GIT_AUTHOR_NAME", "t")
    env.setdefault("GIT_AUTHOR_EMAIL", "t@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "t")
    env.setdefault("GIT_COMMITTER_EMAIL", "t@example.invalid")

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("git", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "fixture")
    run(str(DVC), "repro", "prepare")
    assert (repo / "data" / "prepared" / "index.parquet").is_file()
    assert len(list((repo / "data" / "synth" / "videos").glob("*.mp4"))) == 4
    assert "up to date" in run(str(DVC), "status", "prepare").lower()
    assert "data/prepared" in (repo / "dvc.lock").read_text()

"""``dvc repro`` in a temp clone runs synth → prepare → train → evaluate → ablate → report; a rerun does nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "configs" / "pipeline" / "micro.yaml"


def _micro_params(clone: Path) -> None:
    micro = yaml.safe_load(MICRO.read_text())
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["synth"].update(micro["synth"])
    params["prepare"]["sampling"].update(micro["prepare"]["sampling"])
    params["prepare"]["num_workers"] = 1
    params["train"].update({"loop": {"max_steps": 2, "save_every": 1}, "data": {"vocab_size": 320}})
    for section in [params["evaluate"], *params["ablate"]]:
        section["base"]["task"]["limit"] = 2
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.skipif(shutil.which("git") is None, reason="dvc repro needs git")
def test_dvc_repro_in_temp_clone_then_nothing_to_do(tmp_path: Path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    _micro_params(clone)
    bin_dir = Path(os.sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "NSA_ARTIFACT_ROOT": str(clone / "artifacts"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{clone}/artifacts/mlflow.db",
    }
    dvc = [str(bin_dir / "dvc")]
    first = subprocess.run([*dvc, "repro"], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = (clone / "artifacts" / "report" / "report.md").read_text()
    assert "| nsa |" in report and "| cmp+slc+swd |" in report
    second = subprocess.run([*dvc, "repro"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "didn't change, skipping" in second.stdout and "Running stage" not in second.stdout

"""A run killed with SIGKILL and resumed ends exactly like an uninterrupted run (CPU, subprocesses)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import torch
from safetensors.torch import load_file

from nsa_train.checkpoint import latest_checkpoint

DRIVER = """
import os, signal, sys
from pathlib import Path
from nsa_train import TrainConfig, train
config = TrainConfig.model_validate_json(Path(sys.argv[1]).read_text())
kill_at = int(sys.argv[2])
def on_step(step, metrics):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
train(config, resume=sys.argv[3] == "resume", on_step=on_step)
"""


def _launch(config, tmp_path, name, kill_at, mode, env):
    path = tmp_path / f"{name}.json"
    path.write_text(config.model_dump_json())
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(path), str(kill_at), mode], env=env)


def test_sigkill_then_resume_matches_uninterrupted(tiny_config, tmp_path, subprocess_env):
    steps = ("loop.max_steps=6", "loop.save_every=2", "loop.micro_batch_size=1", "loop.grad_accum=2")
    straight = tiny_config(*steps, output_dir=tmp_path / "straight")
    killed = tiny_config(*steps, output_dir=tmp_path / "killed")
    baseline = _launch(straight, tmp_path, "straight", 0, "fresh", subprocess_env)
    victim = _launch(killed, tmp_path, "killed", 3, "fresh", subprocess_env)
    assert victim.wait(timeout=300) == -signal.SIGKILL
    assert latest_checkpoint(killed.resolved_output_dir()).name == "step-00000002"
    resumed = _launch(killed, tmp_path, "resumed", 0, "resume", subprocess_env)
    assert resumed.wait(timeout=300) == 0
    assert baseline.wait(timeout=300) == 0

    runs = [straight.resolved_output_dir(), killed.resolved_output_dir()]
    metrics = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in runs]
    assert [m["step"] for m in metrics[1]] == list(range(1, 7))
    assert metrics[0] == metrics[1]
    finals = [latest_checkpoint(run) for run in runs]
    assert [f.name for f in finals] == ["step-00000006"] * 2
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = (load_file(str(f / name)) for f in finals)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{name}:{key}")
    assert not list((runs[1] / "checkpoints").glob(".tmp-*"))

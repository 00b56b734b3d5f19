"""Multi-rank training on CPU (gloo): torchrun with FSDP2, and Ray Train's TorchTrainer in a loopback-only netns.

Two ranks with micro-batch 1 must follow the same trajectory as one process with micro-batch 2: rank r
takes every other example of the same permutation, and each example carries the same number of answer tokens.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nsa_train import train
from nsa_train.checkpoint import latest_checkpoint
from nsa_train.launch import torchrun_command

STEPS = ("loop.max_steps=3", "loop.grad_accum=1")


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path, atol: float) -> None:
    assert _losses(a) == pytest.approx(_losses(b), abs=atol)
    wa, wb = (load_file(str(latest_checkpoint(run) / "model.safetensors")) for run in (a, b))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=atol, msg=key)


def _unshare_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0


def test_torchrun_fsdp2_two_ranks_match_one_process(tiny_config, tmp_path, subprocess_env):
    fsdp = tiny_config(*STEPS, "loop.micro_batch_size=1", "distributed.shard=fsdp", output_dir=tmp_path / "fsdp")
    config_file = tmp_path / "fsdp.yaml"
    config_file.write_text(json.dumps(fsdp.model_dump(mode="json")))
    child = subprocess.Popen(torchrun_command(2, ["--config", str(config_file)]), env=subprocess_env)
    single = train(tiny_config(*STEPS, "loop.micro_batch_size=2", output_dir=tmp_path / "single"))
    assert child.wait(timeout=300) == 0
    _assert_same_run(tmp_path / "fsdp", single.output_dir, atol=1e-4)
    assert (tmp_path / "fsdp" / "model" / "model.safetensors").is_file()


RAY_DRIVER = """
import sys, shutil
from pathlib import Path
from nsa_train import TrainConfig
from nsa_train.launch import train_with_ray
config = TrainConfig.model_validate_json(Path(sys.argv[1]).read_text())
init = {"num_cpus": 2, "include_dashboard": False, "object_store_memory": 512 * 2**20, "_temp_dir": sys.argv[2]}
try:
    result = train_with_ray(config, ray_init=init)
    print("RESULT", result.final_metrics["steps"], result.checkpoint_dir)
finally:
    import ray
    ray.shutdown()
"""


@pytest.mark.skipif(not _unshare_available(), reason="needs `unshare -n` (root) and `ip` to keep Ray on loopback")
def test_ray_train_two_cpu_workers_in_loopback_namespace(tiny_config, tmp_path, subprocess_env):
    config = tiny_config(*STEPS, "loop.micro_batch_size=1", "distributed.num_workers=2", output_dir=tmp_path / "ray")
    config_file = tmp_path / "ray.json"
    config_file.write_text(config.model_dump_json())
    home = tmp_path / "home"
    home.mkdir()
    (home / "ray_bootstrap_config.yaml").write_text("provider: {type: local}\n")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    inner = f"ip link set lo up && exec {sys.executable} -c '{RAY_DRIVER}' {config_file} {ray_tmp}"
    try:
        proc = subprocess.run(
            ["unshare", "-n", "sh", "-c", inner],
            env={**subprocess_env, "HOME": str(home), "RAY_AUTH_MODE": "disabled"},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
            cwd=tmp_path,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RESULT 3.0" in proc.stdout
    single = train(tiny_config(*STEPS, "loop.micro_batch_size=2", output_dir=tmp_path / "single"))
    _assert_same_run(tmp_path / "ray", single.output_dir, atol=1e-4)

"""Executors: in process, one subprocess per (fake) GPU, and Ray inside a loopback-only network namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nsa_eval.executors import LocalExecutor, SubprocessGPUExecutor


def device_and_square(item: int) -> dict:
    if item < 0:
        raise ValueError(f"negative item {item}")
    return {"square": item * item, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}


def test_local_executor_keeps_order_and_records_failures():
    outcomes = LocalExecutor().map(device_and_square, [2, -1, 3])
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[2].value["square"] == 9 and "negative item -1" in outcomes[1].error


def test_subprocess_executor_spreads_items_over_gpu_ids():
    executor = SubprocessGPUExecutor(gpus=("0", "1"))
    outcomes = executor.map(device_and_square, [1, 2, 3, -4])
    assert [o.value["square"] for o in outcomes[:3]] == [1, 4, 9]
    assert {o.value["gpu"] for o in outcomes[:3]} <= {"0", "1"}
    assert len({o.value["pid"] for o in outcomes[:3]}) == 3  # a fresh process per item
    assert not outcomes[3].ok and "negative item -4" in outcomes[3].error


def test_subprocess_executor_needs_gpu_ids(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match=r"executor\.gpus"):
        SubprocessGPUExecutor()


RAY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    from nsa_eval.executors import RayExecutor
    from tests.nsa_eval.test_executors import device_and_square
    init = dict(num_cpus=2, num_gpus=2, object_store_memory=512 * 1024 * 1024,
                runtime_env={{"env_vars": {{"PYTHONPATH": {root!r}}}}})
    executor = RayExecutor(num_gpus_per_task=1, init_kwargs=init)
    outcomes = executor.map(device_and_square, [1, 2, 3, -1])
    print("RESULT" + json.dumps([o.__dict__ for o in outcomes]))
    """
)


@pytest.mark.skipif(
    shutil.which("unshare") is None or shutil.which("ip") is None,
    reason="needs unshare and ip (root) for the loopback-only network namespace Ray tests require",
)
def test_ray_executor_in_loopback_namespace(tmp_path: Path):
    import json

    root = str(Path(__file__).resolve().parents[2])
    home = tmp_path / "home"
    home.mkdir()
    (home / "ray_bootstrap_config.yaml").write_text("provider: {type: local}\n")
    script = tmp_path / "ray_job.py"
    script.write_text(RAY_SCRIPT.format(root=root))
    env = {
        **os.environ,
        "HOME": str(home),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": root,
    }
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up; {sys.executable} {script}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip("unshare -n is not permitted here (needs root)")
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line is not None, proc.stderr[-3000:]
    outcomes = json.loads(line.removeprefix("RESULT"))
    assert [o["value"]["square"] for o in outcomes[:3]] == [1, 4, 9]
    assert {o["value"]["gpu"] for o in outcomes[:3]} <= {"0", "1"}
    assert not outcomes[3]["ok"] and "negative item -1" in outcomes[3]["error"]

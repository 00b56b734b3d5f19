"""``benchmarks/gluon_registers.py``: the warp-specialised Gluon kernels compiled offline for sm_90a (no GPU
needed). ptxas must neither serialise their warpgroup MMAs nor spill more than they do today: both are how these
kernels lost their speed while being built (runs 34 and 35 in ``benchmarks/KERNEL_NOTES.md``). The compile runs in a
subprocess, since this suite puts Triton's own kernels under the interpreter, which Gluon cannot call."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import triton

TOOL = pathlib.Path(__file__).parents[2] / "benchmarks" / "gluon_registers.py"
PTXAS = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason="Triton's bundled ptxas is missing")
def test_warp_specialised_kernels_keep_their_registers():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(TOOL), "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    summaries = json.loads(result.stdout)
    assert not any(s["serialized"] for s in summaries.values()), summaries
    assert summaries["selection_ws"]["spilled_bytes"] == 0, summaries
    assert summaries["dkv_keyrows"]["spilled_bytes"] <= 4, summaries

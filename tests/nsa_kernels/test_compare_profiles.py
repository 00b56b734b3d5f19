"""benchmarks/compare_profiles.py: the bandwidth share it derives from two GPUs' kernel times."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def compare(benchmark_script):
    return benchmark_script("compare_profiles")


@pytest.mark.parametrize(("compute", "memory"), [(0.0, 2.0), (3.0, 1.0), (1.5, 1.5), (2.0, 0.0)])
def test_share_recovers_the_memory_part_of_a_two_part_kernel(compare, compute, memory):
    ratio = 1.433
    fast, slow = compute + memory, compute + memory * ratio
    assert compare.bandwidth_share(fast, slow, ratio) == pytest.approx(memory / fast)


def test_share_is_clipped_where_noise_leaves_the_model(compare):
    assert compare.bandwidth_share(1.0, 0.9, 1.433) == 0.0
    assert compare.bandwidth_share(1.0, 2.0, 1.433) == 1.0


def test_main_prints_the_scaled_total(compare, tmp_path, monkeypatch, capsys):
    def profile(path, kernels):
        run = {"T": 8192, "phase": "fwd", "kernels": kernels, "kernel_ms": sum(k[1] for k in kernels)}
        path.write_text(json.dumps({"runs": [run]}))
        return str(path)

    fast = profile(tmp_path / "fast.json", [["stream", 2.0, 1], ["mma", 1.0, 1]])
    slow = profile(tmp_path / "slow.json", [["stream", 3.0, 1], ["mma", 1.0, 1]])
    monkeypatch.setattr("sys.argv", ["compare_profiles.py", fast, slow, "--bandwidth-ratio", "1.5"])
    compare.main()
    assert "time that scales with bandwidth: 2.00 of 3.00 ms (67 %)" in capsys.readouterr().out

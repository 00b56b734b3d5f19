"""CI smoke run of benchmarks/train_step.py (tiny widths on CPU) so the GPU benchmark cannot rot."""

from __future__ import annotations


def test_train_step_benchmark_smoke(tmp_path, benchmark_script):
    module = benchmark_script("train_step")
    out = tmp_path / "train_step.md"
    assert module.main(["--smoke", "--out", str(out)]) == 0
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| 128 |")]
    assert [row[2].strip() for row in rows] == ["nsa", "dense"]
    assert all(float(row[5]) > 0 for row in rows)
    assert "--smoke" in out.read_text()

"""How much of each kernel's time scales with memory bandwidth: two ``profile_kernels.py`` JSONs of the same tree on
two GPUs that differ mainly in bandwidth (H200 4.8 TB/s and H100 SXM 3.35 TB/s: same SMs, same tensor cores).

A kernel whose time is ``compute + bytes / bandwidth`` takes ``r = (1 - f) + f · b`` times as long on the slower
GPU, where ``b`` is the bandwidth ratio and ``f`` the share of its time on the faster GPU that the bytes take. So
``f = (r - 1) / (b - 1)``: about 1 for a streaming kernel, about 0 for one bound by its tensor cores or ALUs. Run:
``python benchmarks/compare_profiles.py fast.json slow.json --bandwidth-ratio 1.433``.
"""

from __future__ import annotations

import argparse
import json


def phase_runs(path: str) -> dict[tuple[int, str], dict]:
    """The runs of one profile JSON by ``(T, phase)`` (the first tuning of each)."""
    with open(path) as f:
        runs = json.load(f)["runs"]
    found: dict[tuple[int, str], dict] = {}
    for run in runs:
        found.setdefault((run["T"], run["phase"]), run)
    return found


def bandwidth_share(fast_ms: float, slow_ms: float, ratio: float) -> float:
    """``f`` of the module docstring, clipped to [0, 1]."""
    return min(max((slow_ms / fast_ms - 1) / (ratio - 1), 0.0), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fast", help="profile JSON of the GPU with more bandwidth")
    parser.add_argument("slow", help="profile JSON of the GPU with less bandwidth")
    parser.add_argument("--bandwidth-ratio", type=float, default=4.8 / 3.35)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    if args.bandwidth_ratio <= 1:
        parser.error("--bandwidth-ratio must exceed 1 (the fast GPU's bandwidth over the slow one's)")
    fast, slow = phase_runs(args.fast), phase_runs(args.slow)
    for key in sorted(fast.keys() & slow.keys(), key=lambda k: (-k[0], k[1])):
        a, b = fast[key], slow[key]
        slow_ms = {name: ms for name, ms, _ in b["kernels"]}
        scaled = 0.0
        print(f"\nT={key[0]} {key[1]}: kernels {a['kernel_ms']:.3f} ms fast, {b['kernel_ms']:.3f} ms slow")
        print("| kernel | fast ms | slow ms | slow / fast | bandwidth share |\n|---|---|---|---|---|")
        for rank, (name, ms, _) in enumerate(a["kernels"]):
            share = bandwidth_share(ms, slow_ms.get(name, ms), args.bandwidth_ratio)
            scaled += ms * share
            if rank < args.top:
                print(f"| {name[:48]} | {ms:.3f} | {slow_ms.get(name, float('nan')):.3f} | "
                      f"{slow_ms.get(name, ms) / ms:.2f} | {share:.2f} |")  # fmt: skip
        print(f"time that scales with bandwidth: {scaled:.2f} of {a['kernel_ms']:.2f} ms "
              f"({100 * scaled / a['kernel_ms']:.0f} %)")  # fmt: skip


if __name__ == "__main__":
    main()

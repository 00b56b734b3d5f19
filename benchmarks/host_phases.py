"""Where the host time of one eager NSA call goes: inclusive wall time per launcher of ``nsa_kernels.nsa``.

At small T an eager call is host-bound (the GPU waits for Python to enqueue its kernels). This wraps the launchers
that :func:`nsa_kernels.nsa.nsa_fwd` / ``nsa_bwd`` call (pool, branches, top-n, selection, combine) with a timer and
enqueues ``--iters`` calls on an idle GPU, so no launch waits for the GPU, in ``--repeats`` rounds; the host time is
the median round. Launcher times are inclusive: one called from inside another (the compression dQ from the
selection backward) counts in both, and ``nsa_fwd`` / ``nsa_bwd`` hold all of them. Run on a GPU:
``python benchmarks/host_phases.py --seqlens 8192 32768``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections import defaultdict

import torch
from attention import NSA, inputs

from nsa_kernels import nsa, nsa_func

LAUNCHERS = (
    "pool_fwd", "pool_bwd", "branch_fwd", "branch_dq", "branch_dkv", "select_fwd", "selection_plan", "selection_fwd",
    "selection_bwd", "combine_fwd", "combine_bwd", "local_coefficients", "_flatten", "nsa_fwd", "nsa_bwd",
)  # fmt: skip


def timed(totals: dict, counts: dict, name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start
            counts[name] += 1

    return wrapper


def phases(T: int, iters: int, backward: bool, repeats: int) -> dict:
    """Host ms per call (the median over ``repeats`` rounds of ``iters`` calls) and the launchers' ms per call (over
    all rounds)."""
    totals, counts = defaultdict(float), defaultdict(int)
    originals = {name: getattr(nsa, name) for name in LAUNCHERS}
    q, k, v, gates = inputs(T)
    do = torch.randn_like(q)

    def call():
        o = nsa_func(q, k, v, gates, **NSA)
        if backward:
            o.backward(do)
            for x in (q, k, v, gates):
                x.grad = None

    for _ in range(3):
        call()
    for name, fn in originals.items():
        setattr(nsa, name, timed(totals, counts, name, fn))
    hosts = []
    try:
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(iters):
                call()
            hosts.append((time.perf_counter() - start) * 1e3 / iters)
            torch.cuda.synchronize()
    finally:
        for name, fn in originals.items():
            setattr(nsa, name, fn)
    calls = iters * repeats
    rows = {name: (totals[name] * 1e3 / calls, counts[name] / calls) for name in totals}
    return {"T": T, "backward": backward, "host_ms": statistics.median(hosts), "host_ms_all": hosts, "launchers": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[8192])
    parser.add_argument("--iters", type=int, default=5, help="calls per round: few, so the launch queue never fills")
    parser.add_argument("--repeats", type=int, default=9, help="rounds; the host time is their median")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    runs = []
    for T in args.seqlens:
        for backward in (False, True):
            run = phases(T, args.iters, backward, args.repeats)
            runs.append(run)
            spread = f"{min(run['host_ms_all']):.3f}-{max(run['host_ms_all']):.3f}"
            print(f"T={T} {'fwd_bwd' if backward else 'fwd'}: host {run['host_ms']:.3f} ms per call (median; {spread})")
            for name, (ms, n) in sorted(run["launchers"].items(), key=lambda r: -r[1][0]):
                print(f"  {ms:8.3f} ms  x {n:4.1f}  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()

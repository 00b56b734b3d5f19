"""The work-item kernels' rows per program (``nsa_kernels.csr.work_items(block_rows=...)``): same tables, and time.

On a GPU, captures every ``work_items`` call of one forward+backward at each T (the random input of
``attention.py``) and replays each with every ``--block-rows`` entry: it prints whether the five tables equal those
of the first entry and the calls' summed GPU time (each replayed in a CUDA graph, so the host is out of it),
forward and backward apart. Run:
``python benchmarks/work_items_replay.py --seqlens 32768 131072 --block-rows 1024 256 128 64``.
"""

from __future__ import annotations

import argparse
import inspect
import json

import torch
import triton
from attention import NSA, inputs

from nsa_kernels import csr, nsa_func, selection


def capture(T: int) -> list[tuple[str, dict]]:
    """``(phase, arguments)`` of every work-item call of one forward and one backward at T."""
    calls, phase = [], ["fwd"]
    original = selection.work_items

    def recording(*args, **kwargs):
        calls.append((phase[0], inspect.signature(original).bind(*args, **kwargs).arguments))
        return original(*args, **kwargs)

    q, k, v, gates = inputs(T)
    selection.work_items = recording
    try:
        o = nsa_func(q, k, v, gates, **NSA)
        phase[0] = "bwd"
        o.backward(torch.randn_like(o))
    finally:
        selection.work_items = original
    return calls


def replay(seqlens: list[int], block_rows: list[int]) -> list[dict]:
    rows = []
    for T in seqlens:
        calls = capture(T)
        totals = {(p, b): 0.0 for p in ("fwd", "bwd") for b in block_rows}
        same = dict.fromkeys(block_rows, True)
        for phase, arguments in calls:
            want = csr.work_items(**{**arguments, "block_rows": block_rows[0]})
            for b in block_rows:
                got = csr.work_items(**{**arguments, "block_rows": b})
                same[b] &= all(torch.equal(x, y) for x, y in zip(got, want, strict=True))
                fn = lambda kw={**arguments, "block_rows": b}: csr.work_items(**kw)  # noqa: E731
                totals[phase, b] += triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
        for b in block_rows:
            row = {"T": T, "block_rows": b, "equal": same[b], "calls": len(calls),
                   "fwd_ms": totals["fwd", b], "bwd_ms": totals["bwd", b]}  # fmt: skip
            print(json.dumps(row))
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--block-rows", type=int, nargs="+", default=[1024, 512, 256, 128, 64])
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    rows = replay(args.seqlens, args.block_rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

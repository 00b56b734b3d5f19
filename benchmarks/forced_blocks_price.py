"""What the forced blocks cost the block-outer selection, and how much of the window forward could hide under it.

Two prices at one T (VideoNSA shape, random input of ``attention.py``), to decide which of two forward levers of
``KERNEL_NOTES.md`` (run 26) is worth building:

1. **Forced blocks out of the block-outer path.** Ours with the computed top-n passed as ``block_indices``, then the
   same indices with the two local blocks of each token (its own and the previous one) set to -1, then with the
   initial block dropped as well. The kernels' times (``profile_kernels.kernel_times``) per variant, in turns, show
   what those selections cost the selection's block kernels and the merge: the most that computing them query-outer
   (the local blocks inside the window's key loop) could save before its own cost. Only the timing of the reduced
   variants means anything: they attend to fewer keys.
2. **Window under the selection.** The window branch alone, the selection branch alone (both ``nsa_func`` calls with
   one branch, the selection on the given indices), one after the other and both at once on two streams. Their
   overlap bounds what running the window inside the selection's memory-bound merge could gain.

Run on a GPU: ``python benchmarks/forced_blocks_price.py --seqlen 131072``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from attention import NSA, inputs
from profile_kernels import kernel_times

from nsa_kernels import nsa_func

SHOWN = ("slc_fwd_kernel_block", "slc_fwd_kernel_merge", "slc_bwd_kernel_block", "branch_bwd_kernel_dq")


def without_blocks(idx: torch.Tensor, initial: bool) -> torch.Tensor:
    """``idx [1, T, HKV, S]`` with each token's own and previous block (and block 0 if ``initial``) set to -1, the
    remaining blocks ascending first."""
    own = (torch.arange(idx.shape[1], device=idx.device) // NSA["select_block"])[None, :, None, None]
    drop = (idx == own) | (idx == own - 1)
    if initial:
        drop |= idx == 0
    big = torch.iinfo(torch.int32).max
    kept = torch.where(drop | (idx < 0), big, idx).sort(-1).values
    return torch.where(kept == big, -1, kept).to(torch.int32)


def profile_variant(name: str, idx: torch.Tensor, q, k, v, g, do, iters: int) -> None:
    def fwd():
        return nsa_func(q, k, v, g, block_indices=idx, **NSA)

    def fwd_bwd():
        fwd().backward(do)
        for x in (q, k, v, g):
            x.grad = None

    cells = [name]
    for phase in (fwd, fwd_bwd):
        times = kernel_times(phase, iters)
        by_name = {}
        for kernel, ms, _ in times["kernels"]:
            for short in SHOWN:
                if short in kernel:
                    by_name[short] = by_name.get(short, 0.0) + ms
        cells += [f"{times['kernel_ms']:.3f}", *(f"{by_name.get(short, 0.0):.3f}" for short in SHOWN)]
    print("| " + " | ".join(cells) + " |", flush=True)


def elapsed(fn, runs: int = 15) -> float:
    """Median ms of ``fn`` over ``runs`` runs, by events on the current stream after a synchronize."""
    times = []
    for _ in range(runs + 2):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times[2:])


def overlap(idx: torch.Tensor, q, k, v, g) -> None:
    def window():
        nsa_func(q, k, v, g, branches=("swd",), **NSA)

    def selection():
        nsa_func(q, k, v, g, branches=("slc",), block_indices=idx, **NSA)

    side = torch.cuda.Stream()

    def both():
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            window()
        selection()
        main.wait_stream(side)

    with torch.no_grad():
        rows = [
            ("window alone", window),
            ("selection alone", selection),
            ("one after the other", lambda: (window(), selection())),
            ("both at once, two streams", both),
        ]
        for _ in range(2):
            for label, fn in rows:
                print(f"| {label} | {elapsed(fn):.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", type=int, default=131072)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    q, k, v, g = inputs(args.seqlen)
    with torch.no_grad():
        _, aux = nsa_func(q, k, v, g, return_aux=True, **NSA)
    computed = aux["block_indices"].to(torch.int32).contiguous()
    variants = {
        "computed top-n": computed,
        "local blocks dropped": without_blocks(computed, initial=False),
        "local and initial dropped": without_blocks(computed, initial=True),
    }
    for name, idx in variants.items():
        print(f"{name}: {int((idx >= 0).sum())} selections")
    do = torch.randn_like(q)
    print(f"\nT = {args.seqlen}, {torch.cuda.get_device_name()}\n")
    heads = [f"{phase} {col}" for phase in ("fwd", "fwd+bwd") for col in ("kernels", *SHOWN)]
    print("| variant | " + " | ".join(heads) + " |\n|" + "---|" * (len(heads) + 1))
    for _ in range(args.rounds):
        for name, idx in variants.items():
            profile_variant(name, idx, q, k, v, g, do, args.iters)
    print("\n| forward, no grad | ms |\n|---|---|")
    overlap(computed, q, k, v, g)


if __name__ == "__main__":
    main()

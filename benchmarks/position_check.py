"""Why ours gets slower after the baselines in one process (run 26e): ours timed with the process in turn states.

At one T, ours (fwd, fwd+bwd; ``attention.bench`` medians) is timed:

1. fresh;
2. with ``--ballast`` GiB of other tensors kept allocated (as the baselines' input gradients are);
3. after freeing them and emptying the allocator's cache;
4. after timing the baselines (cuDNN, flash and fla-core where it imports);
5. after dropping the baselines' gradients and emptying the cache.

Run on a GPU: ``python benchmarks/position_check.py --seqlen 65536``.
"""

from __future__ import annotations

import argparse

import torch
from attention import bench, providers


def time_ours(table: dict, state: str) -> None:
    fn, grads, _ = table["ours"]
    fwd = bench(fn)
    first = fn()
    do = torch.randn_like(first)
    del first
    fwd_bwd = bench(lambda: fn().backward(do), grads)
    print(f"| {state} | {fwd[0]:.3f} | {fwd_bwd[0]:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", type=int, default=65536)
    parser.add_argument("--ballast", type=float, default=3.0, help="GiB kept allocated in state 2")
    args = parser.parse_args()
    try:
        from fla.ops.nsa import parallel_nsa as fla
    except ImportError:
        fla = None
    table = providers(args.seqlen, fla)
    print(f"T = {args.seqlen}, {torch.cuda.get_device_name()}\n\n| state | fwd ms | fwd+bwd ms |\n|---|---|---|")
    time_ours(table, "fresh")
    ballast = [torch.empty(2**28, device="cuda", dtype=torch.uint8) for _ in range(int(args.ballast * 4))]
    time_ours(table, f"{args.ballast:g} GiB of other tensors allocated")
    del ballast
    torch.cuda.empty_cache()
    time_ours(table, "those freed, cache emptied")
    for name, (fn, grads, _) in table.items():
        if name != "ours":
            bench(fn)
            first = fn()
            do = torch.randn_like(first)
            del first
            bench(lambda fn=fn, do=do: fn().backward(do), grads)
    time_ours(table, "after the baselines")
    for name, (_, grads, _) in table.items():
        if name != "ours":
            for x in grads:
                x.grad = None
    torch.cuda.empty_cache()
    time_ours(table, "their gradients dropped, cache emptied")


if __name__ == "__main__":
    main()

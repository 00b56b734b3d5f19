"""Why ours gets slower after the baselines in one process (run 26e): ours timed with the process in turn states.

At one T, ours (fwd, fwd+bwd; ``attention.bench`` medians) is timed:

1. fresh;
2. with ``--ballast`` GiB of other tensors kept allocated (as the baselines' input gradients are);
3. after freeing them and emptying the allocator's cache;
4. after timing the baselines (cuDNN, flash and fla-core where it imports);
5. after dropping the baselines' gradients and emptying the cache;
6. ``--repeats`` more times, nothing else running in between.

Beside each timing, the GPU's state over it: ``nvidia-smi`` sampled every 50 ms in a thread (:class:`GpuSampler`),
as mean SM and memory clocks, mean power, temperature at the end, and the clock event reasons seen (the bits of
``clocks_event_reasons.active``: 0x4 software power cap, 0x20 software thermal slowdown, 0x40 hardware thermal
slowdown, 0x80 hardware power brake). If the drift follows the clocks, it is the GPU's state, not our code.

Run on a GPU: ``python benchmarks/position_check.py --seqlen 65536``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time

import torch
from attention import fwd_and_fwd_bwd, providers

QUERY = "clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active"


class GpuSampler:
    """``nvidia-smi`` polled every ``period_ms`` in a thread; :meth:`summary` of the samples between two times."""

    def __init__(self, period_ms: int = 50):
        index = str(torch.cuda.current_device())
        command = [
            "nvidia-smi",
            "-i",
            index,
            f"--query-gpu={QUERY}",
            "--format=csv,noheader,nounits",
            f"--loop-ms={period_ms}",
        ]
        self.samples: list[tuple[float, list[str]]] = []
        try:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        except FileNotFoundError:
            self.process = None
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.samples.append((time.perf_counter(), [x.strip() for x in line.split(",")]))

    def summary(self, start: float, end: float) -> str:
        rows = [values for at, values in self.samples if start <= at <= end and len(values) == 5]
        if not rows:
            return "no samples | | | |"

        def mean(column: int) -> float:
            return statistics.fmean(float(r[column]) for r in rows if r[column].replace(".", "", 1).isdigit())

        reasons = 0
        for r in rows:
            reasons |= int(r[4], 16) if r[4].startswith("0x") else 0
        return f"{mean(0):.0f} / {mean(1):.0f} | {mean(2):.0f} | {rows[-1][3]} | {reasons:#x}"

    def close(self) -> None:
        if self.process:
            self.process.terminate()


def time_row(table: dict, state: str, sampler: GpuSampler, name: str = "ours") -> None:
    """Time provider ``name`` of ``table`` and print its row, labelled ``state``, with the GPU's state over it."""
    fn, grads, _ = table[name]
    start = time.perf_counter()
    fwd, fwd_bwd = fwd_and_fwd_bwd(fn, grads)
    gpu = sampler.summary(start, time.perf_counter())
    print(f"| {state} | {fwd[0]:.3f} | {fwd_bwd[0]:.3f} | {gpu} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", type=int, default=65536)
    parser.add_argument("--ballast", type=float, default=3.0, help="GiB kept allocated in state 2")
    parser.add_argument("--repeats", type=int, default=3, help="timings of ours at the end, back to back")
    args = parser.parse_args()
    try:
        from fla.ops.nsa import parallel_nsa as fla
    except ImportError:
        fla = None
    table = providers(args.seqlen, fla)
    sampler = GpuSampler()
    print(f"T = {args.seqlen}, {torch.cuda.get_device_name()}\n")
    print("| state | fwd ms | fwd+bwd ms | SM / memory MHz | W | °C | reasons |\n|---|---|---|---|---|---|---|")
    time_row(table, "fresh", sampler)
    ballast = [torch.empty(2**28, device="cuda", dtype=torch.uint8) for _ in range(int(args.ballast * 4))]
    time_row(table, f"{args.ballast:g} GiB of other tensors allocated", sampler)
    del ballast
    torch.cuda.empty_cache()
    time_row(table, "those freed, cache emptied", sampler)
    for name in table:
        if name != "ours":
            time_row(table, f"({name})", sampler, name)
    time_row(table, "after the baselines", sampler)
    for name, (_, grads, _) in table.items():
        if name != "ours":
            for x in grads:
                x.grad = None
    torch.cuda.empty_cache()
    time_row(table, "their gradients dropped, cache emptied", sampler)
    for repeat in range(args.repeats):
        time_row(table, f"again ({repeat + 1})", sampler)
    sampler.close()


if __name__ == "__main__":
    main()

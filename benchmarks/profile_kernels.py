"""Where the time of one NSA call goes: GPU time per kernel (torch.profiler), forward and forward+backward.

For each T at the VideoNSA shape of ``attention.py`` (random input, all branches + gates), profiles
``--iters`` calls after a warm-up and prints, per phase, the kernels sorted by GPU time per call, their
launch count per call, the summed kernel time and the wall time per call (their gap is host overhead
or idle GPU), and the host time per call: how long the Python side takes to enqueue one call on an idle GPU
(``--host-top`` also lists the functions that take it). Run:
``python benchmarks/profile_kernels.py --seqlens 8192 131072 --json out.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict

import torch
from attention import NSA, inputs, tuning_override
from torch.profiler import ProfilerActivity, profile

from nsa_kernels import nsa_func


def kernel_times(fn, iters: int) -> dict:
    """``{"kernels": [(name, ms per call, launches per call)], "kernel_ms": ..., "wall_ms": ...}``."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) * 1e3 / iters
    total, count = defaultdict(float), defaultdict(int)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            total[event.name] += event.device_time / 1e3
            count[event.name] += 1
    rows = sorted(((name, ms / iters, count[name] / iters) for name, ms in total.items()), key=lambda r: -r[1])
    return {"kernels": rows, "kernel_ms": sum(r[1] for r in rows), "wall_ms": wall}


def launch_list(fn) -> list[dict]:
    """Every kernel launch of one call in issue order: name, start and duration (µs), grid, threads per block, and
    the profiler's estimate of achieved occupancy. Shows underfilled grids and idle gaps at short T."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    first = kernels[0]["ts"] if kernels else 0
    return [
        {"name": e["name"], "start_us": round(e["ts"] - first, 1), "us": e["dur"], "grid": e["args"].get("grid"),
         "block": e["args"].get("block"), "occupancy": e["args"].get("est. achieved occupancy %")}
        for e in kernels
    ]  # fmt: skip


def host_time(fn, iters: int, top: int, sort: str = "tottime") -> tuple[float, str]:
    """Host ms per call to enqueue ``iters`` calls after the GPU has drained (few enough that the launch queue holds
    them, so the host never waits for the GPU), and the ``top`` functions by ``sort`` (a ``pstats`` key: own time
    "tottime" or "cumulative"; none when ``top`` is 0)."""
    torch.cuda.synchronize()
    profiler = cProfile.Profile() if top else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    for _ in range(iters):
        fn()
    if profiler:
        profiler.disable()
    host = (time.perf_counter() - start) * 1e3 / iters
    torch.cuda.synchronize()
    if not profiler:
        return host, ""
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats(sort).print_stats(top)
    return host, text.getvalue()


def host_ops(fn, iters: int, top: int) -> str:
    """The ``top`` torch operators by host (CPU) time of their own, over ``iters`` calls: what the plan's small
    tensor ops and the launches cost on the host, by name and count."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
    torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=60)


SHOWN_CONSTANTS = ("MODE", "C", "WINDOW_C", "FL")
"""The compile-time arguments that tell a kernel's specializations apart in the table."""


def _shown_constants(fn, kernel) -> str:
    # the SHOWN_CONSTANTS of one compiled specialization, as "NAME=value ..." (empty where the source is not kept)
    constants = getattr(getattr(kernel, "src", None), "constants", None) or {}
    shown = []
    for key, value in constants.items():
        index = key[0] if isinstance(key, tuple) else key
        name = fn.arg_names[index] if isinstance(index, int) and index < len(fn.arg_names) else str(index)
        if name in SHOWN_CONSTANTS:
            shown.append(f"{name}={value}")
    return " ".join(shown)


def compiled_kernels() -> list[dict]:
    """Registers per thread, spilled bytes, warps and shared memory of every nsa_kernels Triton kernel compiled
    so far in this process (one row per specialization, with its :data:`SHOWN_CONSTANTS`)."""
    import importlib

    import triton

    rows = []
    modules = (
        "attention",
        "attention_async",
        "dkv_async",
        "dkv_keyrows",
        "selection",
        "selection_async",
        "selection_ws",
        "topk",
        "topk_async",
        "combine",
        "pool",
    )
    for module_name in modules:
        module = importlib.import_module(f"nsa_kernels.{module_name}")
        for name, fn in vars(module).items():
            if not isinstance(fn, triton.runtime.jit.JITFunction) or name.startswith("_"):
                continue
            for cache, *_ in getattr(fn, "device_caches", {}).values():
                for kernel in cache.values():
                    meta = kernel.metadata
                    rows.append({"kernel": name, "regs": kernel.n_regs, "spills": kernel.n_spills,
                                 "warps": meta.num_warps, "shared": meta.shared,
                                 "constants": _shown_constants(fn, kernel)})  # fmt: skip
    return rows


def calls(T: int) -> dict:
    """The forward and the forward+backward call of ours at length ``T``."""
    q, k, v, g = inputs(T)
    do = torch.randn_like(q)

    def fwd_bwd():
        for x in (q, k, v, g):
            x.grad = None
        nsa_func(q, k, v, g, **NSA).backward(do)

    return {"fwd": lambda: nsa_func(q, k, v, g, **NSA), "fwd_bwd": fwd_bwd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[8192, 131072])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--host-top", type=int, default=0, help="list this many functions by host time")
    parser.add_argument("--host-sort", choices=("tottime", "cumulative"), default="tottime",
                        help="order of that list: own time, or time including callees")  # fmt: skip
    parser.add_argument("--host-ops", type=int, default=0, help="list this many torch operators by host time")
    parser.add_argument("--tuning", nargs="+", default=["{}"],
                        help="TUNING overrides (JSON, as NSA_KERNELS_TUNING) profiled in turn at each T; repeat one "
                        "to alternate settings in one process")  # fmt: skip
    parser.add_argument("--launches", action="store_true",
                        help="also record every launch of one call (grid, duration, gaps) into the JSON")  # fmt: skip
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "runs": []}
    for T in args.seqlens:
        for text in args.tuning:
            with tuning_override(text):
                for phase, fn in calls(T).items():
                    res = kernel_times(fn, args.iters)
                    res["host_ms"], listing = host_time(fn, 3, args.host_top, args.host_sort)
                    if args.launches:
                        res["launches"] = launch_list(fn)
                    results["runs"].append({"T": T, "tuning": text, "phase": phase, **res})
                    print(f"\nT={T} {phase} {text}: kernels {res['kernel_ms']:.3f} ms, wall {res['wall_ms']:.3f} ms, "
                          f"host {res['host_ms']:.3f} ms per call")  # fmt: skip
                    print(listing)
                    if args.host_ops:
                        print(host_ops(fn, 3, args.host_ops))
                    for name, ms, launches in res["kernels"][: args.top]:
                        print(f"  {ms:9.3f} ms  x{launches:6.1f}  {name[:110]}")
            torch.cuda.empty_cache()
    results["compiled"] = compiled_kernels()
    print("\nkernel                          regs  spill B  warps  shared B  constants")
    for row in results["compiled"]:
        print(f"{row['kernel'][:30]:30} {row['regs']:5} {row['spills']:8} {row['warps']:6} {row['shared']:9}  "
              f"{row['constants']}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

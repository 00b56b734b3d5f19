"""NSA attention speed at the VideoNSA shape against dense SDPA (cuDNN, flash) and fla-core's ``parallel_nsa``.

One process, one GPU. For each T: forward and forward+backward medians (``triton.testing.do_bench`` over at least
``MIN_RUNS`` runs, with p20/p80) of ours (all three branches and gates; timed before and after the baselines, the
slower median reported: :func:`provider_rows`), SDPA cuDNN and flash (causal,
``enable_gqa``), and fla-core 0.6.0 ``parallel_nsa`` (cmp + slc, no window, query heads padded to 16 per KV head)
when it imports; per-branch times of ours; selection variants (block-outer vs tile-outer, launch settings);
compression dK/dV variants; on request a second, separately labelled structured (temporally smooth)
input with the block-overlap statistics of both inputs; TFLOP/s on the FLOPs each method executes (NSA cost model of
``kernel-notes.md`` §3, dense causal for SDPA, 64 padded heads for fla); peak memory.

Run: ``python benchmarks/attention.py --seqlens 8192 32768 65536 131072 --json out.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from nsa_kernels import nsa, nsa_func

HQ, HKV, D = 28, 4, 128
NSA = dict(compress_block=64, compress_stride=64, select_block=64, num_selected=32, window=256)


def nsa_flops(T: int, heads: int = HQ, branches=("cmp", "slc", "swd"), topk: bool = True) -> tuple[float, float]:
    """(forward, forward+backward) FLOPs of the cost model: 4·D·H·Σ keys(t), backward 2.5×, top-n = half a cmp pass."""
    t = torch.arange(T, dtype=torch.float64)
    keys = {
        "cmp": torch.floor((t + 1) / 64),
        "slc": torch.where(t // 64 + 1 >= 32, 31 * 64 + t % 64 + 1, t + 1),
        "swd": torch.clamp(t + 1, max=256),
    }
    fwd = sum(4 * D * heads * float(keys[b].sum()) for b in branches)
    extra = 2 * D * heads * float(keys["cmp"].sum()) if topk else 0.0
    return fwd + extra, 3.5 * fwd + extra


def dense_flops(T: int) -> tuple[float, float]:
    fwd = 4 * D * HQ * T * (T + 1) / 2
    return fwd, 3.5 * fwd


MIN_RUNS = 10
"""Timed runs per measurement at least: ``do_bench`` alone times as many as fit in its ``rep`` budget, which is one
or two runs of a 100 ms call."""


def bench(fn, grad_inputs=None) -> tuple[float, float, float]:
    """Median, p20, p80 in ms over at least ``MIN_RUNS`` runs; with ``grad_inputs`` the grads are reset between runs."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    rep = max(200.0, MIN_RUNS * start.elapsed_time(end))
    return tuple(do_bench(fn, quantiles=[0.5, 0.2, 0.8], grad_to_none=grad_inputs, warmup=25, rep=rep))


def inputs(T: int, heads: int = HQ, structured: bool = False):
    """Random N(0, 1) q, k, v and U(0, 1) gates; ``structured``: q and k are temporally smooth instead
    (linear interpolation of N(0, 1) anchors every 256 tokens plus 0.3 N(0, 1) noise), a video-like input
    where neighbouring tokens select similar blocks. The random input is the headline."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, T, heads, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(1, T, HKV, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(1, T, HKV, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    g = torch.rand(1, T, heads, 3, device="cuda", dtype=torch.bfloat16, generator=gen)
    if structured:
        q, k = (smooth(x, gen) for x in (q, k))
    return tuple(x.requires_grad_() for x in (q, k, v, g))


def smooth(x, gen, period: int = 256, noise: float = 0.3):
    T, H = x.shape[1], x.shape[2]
    anchors = torch.randn(1, H * D, T // period + 2, device="cuda", generator=gen)
    base = F.interpolate(anchors, scale_factor=period, mode="linear", align_corners=False)[..., :T]
    base = base.reshape(H, D, T).permute(2, 0, 1)[None]
    return (base + noise * x.float()).to(x.dtype)


def union_stats(idx, tokens_per_tile: int = 9) -> dict:
    """Overlap of the selected blocks ``[1, T, HKV, S]``: how much neighbouring tokens share.

    ``union_per_tile``: mean distinct blocks over ``tokens_per_tile`` consecutive tokens (per KV head),
    ``redundancy``: tile-outer block visits over exact selections (1 = no waste, 9 = no sharing),
    ``sel_per_block``: mean and max selections per (KV head, block) (block-outer load balance)."""
    idx = idx[0].long()
    T, HKV, S = idx.shape
    nt = T // tokens_per_tile
    tiles = idx[: nt * tokens_per_tile].reshape(nt, tokens_per_tile, HKV, S).permute(0, 2, 1, 3).reshape(nt * HKV, -1)
    srt = tiles.sort(-1).values
    distinct = ((srt[:, 1:] != srt[:, :-1]) & (srt[:, 1:] >= 0)).sum(-1) + (srt[:, 0] >= 0).long()
    valid = (idx >= 0).sum()
    nb = int(idx.max()) + 1
    key = (torch.arange(HKV, device=idx.device)[None, :, None] * nb + idx)[idx >= 0]
    counts = torch.bincount(key, minlength=HKV * nb).float()
    return {
        "union_per_tile": float(distinct.float().mean()),
        "redundancy": float(distinct.sum() * tokens_per_tile / valid.clamp_min(1)),
        "sel_per_block_mean": float(counts.mean()),
        "sel_per_block_max": float(counts.max()),
    }


def graphed(T: int) -> dict:
    """Ours captured in two CUDA graphs (forward; forward+backward), timed by replay: the call without host
    launch overhead (the plan has no device sync, so capture works)."""
    q, k, v, g = inputs(T)
    do = torch.randn_like(q)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            nsa_func(q, k, v, g, **NSA).backward(do)
    torch.cuda.current_stream().wait_stream(side)
    for x in (q, k, v, g):
        x.grad = None
    fwd, fwd_bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(fwd):
        nsa_func(q, k, v, g, **NSA)
    with torch.cuda.graph(fwd_bwd):
        nsa_func(q, k, v, g, **NSA).backward(do)
    return {"fwd": bench(fwd.replay), "fwd_bwd": bench(fwd_bwd.replay)}


def providers(T: int, fla) -> dict:
    q, k, v, g = inputs(T)
    out = {"ours": (lambda: nsa_func(q, k, v, g, **NSA), (q, k, v, g), nsa_flops(T))}
    qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    for name, backend in (("sdpa_cudnn", "CUDNN_ATTENTION"), ("sdpa_flash", "FLASH_ATTENTION")):
        kind = getattr(torch.nn.attention.SDPBackend, backend)

        def run(kind=kind):
            with torch.nn.attention.sdpa_kernel(kind):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)

        out[name] = (run, (qt, kt, vt), dense_flops(T))
    if fla is not None:
        q16, _, _, g16 = inputs(T, heads=16 * HKV)
        gates = [g16[..., c].detach().contiguous().requires_grad_() for c in range(2)]
        out["fla_parallel_nsa"] = (
            lambda: fla(q16, k, v, gates[0], gates[1], None, block_counts=32, block_size=64, window_size=0),
            (q16, k, v, *gates),
            nsa_flops(T, heads=16 * HKV, branches=("cmp", "slc")),
        )
    return out


def branch_rows(T: int) -> list[dict]:
    """Per-branch times of ours: cmp (+pool), top-n (cmp forward + selection), slc with fixed indices, swd."""
    q, k, v, g = inputs(T)
    with torch.no_grad():
        _, aux = nsa_func(q, k, v, g, **NSA, return_aux=True)
    idx = aux["block_indices"]
    rows = []
    cases = {
        "cmp": dict(branches=("cmp",)),
        "cmp+topn+slc": dict(branches=("slc",)),
        "slc(given idx)": dict(branches=("slc",), block_indices=idx),
        "swd": dict(branches=("swd",)),
    }
    model = {
        "cmp": nsa_flops(T, branches=("cmp",), topk=False),
        "cmp+topn+slc": nsa_flops(T, branches=("cmp", "slc")),
        "slc(given idx)": nsa_flops(T, branches=("slc",), topk=False),
        "swd": nsa_flops(T, branches=("swd",), topk=False),
    }
    for name, kw in cases.items():
        fn = lambda kw=kw: nsa_func(q, k, v, g, **{**NSA, **kw})  # noqa: E731
        fwd = bench(fn)
        do = torch.randn_like(q)
        fb = bench(lambda fn=fn, do=do: fn().backward(do), (q, k, v, g))
        rows.append({"T": T, "branch": name, "fwd": fwd, "fwd_bwd": fb, "flops": model[name]})
    return rows


SLC_VARIANTS = [
    ("tile", {}),
    ("block", {}),
    ("block", {"num_warps": 8}),
    ("block", {"num_stages": 3}),
    ("block", {"fwd_item": 576, "bwd_item": 2304}),
    ("block", {"partial_elems": 2**31}),
    ("block", {"dq_partials_fp32": True}),
    ("tile", {"block_m": 16}),
]
CMP_VARIANTS = [
    {"block_n": 64, "num_warps": 4, "span": 0},
    {"block_n": 64, "num_warps": 4, "span": 2048},
    {"block_n": 64, "num_warps": 4, "span": 4096},
    {"block_n": 64, "num_warps": 4, "span": 8192},
    {"block_n": 128, "num_warps": 4, "span": 4096},
]


def variants(T: int, structured: bool = False, which: list[int] | None = None) -> list[dict]:
    """Selection forward and forward+backward (given indices) per algorithm and launch setting
    (``which``: indices into ``SLC_VARIANTS``, default all)."""
    q, k, v, g = inputs(T, structured=structured)
    with torch.no_grad():
        _, aux = nsa_func(q, k, v, g, **NSA, return_aux=True)
    idx = aux["block_indices"]
    rows = []
    base = {name: dict(cfg) for name, cfg in nsa.TUNING.items()}
    for algo, settings in [SLC_VARIANTS[i] for i in (which if which is not None else range(len(SLC_VARIANTS)))]:
        nsa.SELECTION["algo"] = algo
        nsa.TUNING["slc_block" if algo == "block" else "slc"].update(settings)
        fn = lambda: nsa_func(q, k, v, g, **{**NSA, "branches": ("slc",), "block_indices": idx})  # noqa: E731
        do = torch.randn_like(q)
        try:
            rows.append({"T": T, "structured": structured, "algo": algo, "settings": settings, "fwd": bench(fn),
                         "fwd_bwd": bench(lambda fn=fn, do=do: fn().backward(do), (q, k, v, g))})  # fmt: skip
        except Exception as error:
            print(f"T={T:>6} variant {algo} {settings} failed: {error!r}"[:400], flush=True)
        nsa.SELECTION["algo"] = "block"
        nsa.TUNING.clear()
        nsa.TUNING.update({name: dict(cfg) for name, cfg in base.items()})
    return rows


def cmp_variant_rows(T: int) -> list[dict]:
    """Compression branch alone (fwd, fwd+bwd) per compression dK/dV setting (``TUNING["cmp_dkv"]``)."""
    q, k, v, g = inputs(T)
    base = dict(nsa.TUNING["cmp_dkv"])
    rows = []
    for settings in CMP_VARIANTS:
        nsa.TUNING["cmp_dkv"] = dict(settings)
        fn = lambda: nsa_func(q, k, v, g, **{**NSA, "branches": ("cmp",)})  # noqa: E731
        do = torch.randn_like(q)
        try:
            rows.append({"T": T, "settings": settings, "fwd": bench(fn),
                         "fwd_bwd": bench(lambda fn=fn, do=do: fn().backward(do), (q, k, v, g))})  # fmt: skip
        except Exception as error:
            print(f"T={T:>6} cmp variant {settings} failed: {error!r}"[:400], flush=True)
    nsa.TUNING["cmp_dkv"] = base
    return rows


@contextlib.contextmanager
def tuning_override(text: str):
    """``TUNING`` updated by a JSON object in the format of ``NSA_KERNELS_TUNING`` (``{}`` = the defaults) inside the
    block, and restored after it."""
    base = {name: dict(cfg) for name, cfg in nsa.TUNING.items()}
    try:
        for name, values in json.loads(text).items():
            nsa.TUNING[name].update(values)
        yield
    finally:
        nsa.TUNING.clear()
        nsa.TUNING.update(base)


def tuning_rows(T: int, overrides: list[str]) -> list[dict]:
    """Ours (all branches, fwd and fwd+bwd) per ``TUNING`` override (:func:`tuning_override`), measured in one loop."""
    q, k, v, g = inputs(T)
    do = torch.randn_like(q)
    rows = []

    def fwd():
        return nsa_func(q, k, v, g, **NSA)

    for text in overrides:
        try:
            with tuning_override(text):
                rows.append({"T": T, "tuning": text, "fwd": bench(fwd),
                             "fwd_bwd": bench(lambda: fwd().backward(do), (q, k, v, g))})  # fmt: skip
        except Exception as error:
            print(f"T={T:>6} tuning {text} failed: {error!r}"[:400], flush=True)
    return rows


def topn_rows(T: int) -> list[dict]:
    """Forward top-n parts: importance + selection (``select_fwd``) and the selection kernel alone on a
    random score buffer, per (rows per program, warps)."""
    from nsa_kernels.topk import select_fwd, select_topk

    q, _, _, _ = inputs(T)
    gen = torch.Generator(device="cuda").manual_seed(1)
    k_cmp = torch.randn(T // 64, HKV, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    lse = torch.full((T, HQ), 8.0, device="cuda")
    geometry = {**NSA, "forced_initial": 1, "forced_local": 2}
    cu = torch.tensor([0, T], device="cuda", dtype=torch.int32)
    plan = nsa._plan(cu, HQ, HKV, geometry, nsa.TUNING["topk"]["block_m"])
    qd = q.detach()[0]
    rows = []
    for pad, asynchronous in ((True, True), (True, False), (False, False)):
        fn = lambda pad=pad, asynchronous=asynchronous: select_fwd(  # noqa: E731
            qd, k_cmp, lse, plan=plan, scale=D**-0.5, geometry=geometry, pad_heads=pad, asynchronous=asynchronous
        )
        part = f"select_fwd (importance + top-n) pad_heads={pad} asynchronous={asynchronous}"
        rows.append({"T": T, "part": part, "fwd": bench(fn)})
    scores = torch.rand(T, HKV, T // 64, device="cuda", generator=gen)
    t_rel = torch.arange(T, device="cuda")
    for r, warps in ((1, 4), (4, 8), (8, 8), (2, 4)):
        fn = lambda r=r, warps=warps: select_topk(  # noqa: E731
            scores, t_rel, num_selected=32, select_block=64, forced_initial=1, forced_local=2,
            compress=(64, 64), rows_per_program=r, num_warps=warps,
        )  # fmt: skip
        rows.append({"T": T, "part": f"select_topk rows={r} warps={warps}", "fwd": bench(fn)})
    return rows


def structured_rows(T: int) -> list[dict]:
    """Ours on the structured input (fwd, fwd+bwd) and the overlap statistics of both inputs."""
    rows = []
    for structured in (False, True):
        q, k, v, g = inputs(T, structured=structured)
        with torch.no_grad():
            _, aux = nsa_func(q, k, v, g, **NSA, return_aux=True)
        row = {"T": T, "structured": structured, **union_stats(aux["block_indices"])}
        if structured:
            fn = lambda q=q, k=k, v=v, g=g: nsa_func(q, k, v, g, **NSA)  # noqa: E731
            do = torch.randn_like(q)
            row["fwd"] = bench(fn)
            row["fwd_bwd"] = bench(lambda fn=fn, do=do: fn().backward(do), (q, k, v, g))
        rows.append(row)
    return rows


def fwd_and_fwd_bwd(fn, grads) -> tuple[tuple, tuple]:
    """:func:`bench` of ``fn`` and of ``fn().backward(do)`` for one random dO, the grads of ``grads`` reset between
    runs."""
    fwd = bench(fn)
    first = fn()
    do = torch.randn_like(first)
    del first
    return fwd, bench(lambda: fn().backward(do), grads)


def time_provider(T: int, name: str, fn, grads, flops, label: str) -> dict:
    """One provider's fwd and fwd+bwd times and peak memory at ``T``, printed under ``label``."""
    torch.cuda.reset_peak_memory_stats()
    fwd, fb = fwd_and_fwd_bwd(fn, grads)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"T={T:>6} {label:>17}  fwd {fwd[0]:9.3f} ms ({flops[0] / fwd[0] / 1e9:6.1f} TFLOP/s)  "
          f"fwd+bwd {fb[0]:9.3f} ms ({flops[1] / fb[0] / 1e9:6.1f} TFLOP/s)  peak {peak:6.2f} GiB",
          flush=True)  # fmt: skip
    torch.cuda.empty_cache()
    return {"T": T, "provider": name, "fwd": fwd, "fwd_bwd": fb, "flops": flops, "peak_gib": peak}


def provider_rows(T: int, fla, names: list[str] | None) -> list[dict]:
    """The rows of the providers ``names`` (all by default) at ``T``. Where baselines run too, ours is timed first and
    again after them. Its row keeps the slower median of each phase, so a position in the process (run 26: up to 7 %
    at 64K; run 27c: the GPU settling at its power cap) cannot flatter the ratios. The two timings stay in
    ``fwd_runs`` / ``fwd_bwd_runs``; the peak memory is the first timing's, before the baselines left allocations of
    their own."""
    table = providers(T, fla)
    order = [name for name in table if names is None or name in names]
    if "ours" in order and len(order) > 1:
        order.append("ours")
    rows: dict[str, dict] = {}
    for name in order:
        label = "ours (again)" if name in rows else name
        try:
            row = time_provider(T, name, *table[name], label=label)
        except Exception as error:  # a missing SDPA backend must not lose the other rows
            print(f"T={T:>6} {name:>17}  failed: {error!r}"[:400], flush=True)
            continue
        if name in rows:
            first = rows[name]
            for phase in ("fwd", "fwd_bwd"):
                row[f"{phase}_runs"] = [first[phase], row[phase]]
                row[phase] = max(first[phase], row[phase], key=lambda timing: timing[0])
            row["peak_gib"] = first["peak_gib"]
        rows[name] = row
    return [rows[name] for name in table if name in rows]


def main() -> None:
    global D
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[8192, 32768, 65536, 131072])
    parser.add_argument("--branches-at", type=int, nargs="*", default=[8192, 65536, 131072])
    parser.add_argument("--variants-at", type=int, nargs="*", default=[32768])
    parser.add_argument("--slc-variants", type=int, nargs="*", default=None, help="indices into SLC_VARIANTS")
    parser.add_argument("--cmp-variants-at", type=int, nargs="*", default=[])
    parser.add_argument("--structured-at", type=int, nargs="*", default=[])
    parser.add_argument("--topn-at", type=int, nargs="*", default=[])
    parser.add_argument("--graph-at", type=int, nargs="*", default=[], help="ours captured in CUDA graphs")
    parser.add_argument("--tuning-at", type=int, nargs="*", default=[])
    parser.add_argument("--tuning", nargs="*", default=["{}"], help="TUNING overrides (JSON) timed at --tuning-at")
    parser.add_argument("--providers", nargs="*", default=None, help="subset of providers (default: all)")
    parser.add_argument("--head-dim", type=int, default=D, help="head dim of every provider (VideoNSA: 128)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    D = args.head_dim
    try:
        from fla.ops.nsa import parallel_nsa as fla
    except ImportError:
        fla = None
    env = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "fla": None if fla is None else __import__("fla").__version__,
        "command": " ".join(sys.argv),
    }
    print(env, flush=True)
    results = {"env": env, "providers": [], "branches": [], "variants": [], "structured": []}
    for T in args.seqlens:
        results["providers"] += provider_rows(T, fla, args.providers)
        if T in args.branches_at:
            for row in branch_rows(T):
                results["branches"].append(row)
                print(f"T={T:>6} branch {row['branch']:>15}  fwd {row['fwd'][0]:9.3f} ms  "
                      f"fwd+bwd {row['fwd_bwd'][0]:9.3f} ms", flush=True)  # fmt: skip
        if T in args.variants_at:
            for row in variants(T, which=args.slc_variants):
                results["variants"].append(row)
                print(f"T={T:>6} slc variant {row['algo']} {row['settings']}  "
                      f"fwd {row['fwd'][0]:9.3f} ms  fwd+bwd {row['fwd_bwd'][0]:9.3f} ms", flush=True)  # fmt: skip
        if T in args.cmp_variants_at:
            for row in cmp_variant_rows(T):
                results.setdefault("cmp_variants", []).append(row)
                print(f"T={T:>6} cmp variant {row['settings']}  fwd {row['fwd'][0]:9.3f} ms  "
                      f"fwd+bwd {row['fwd_bwd'][0]:9.3f} ms", flush=True)  # fmt: skip
        if T in args.topn_at:
            for row in topn_rows(T):
                results.setdefault("topn", []).append(row)
                print(f"T={T:>6} top-n part {row['part']}: {row['fwd'][0]:9.3f} ms", flush=True)
        if T in args.tuning_at:
            for row in tuning_rows(T, args.tuning):
                results.setdefault("tuning", []).append(row)
                print(f"T={T:>6} tuning {row['tuning']}  fwd {row['fwd'][0]:9.3f} ms  "
                      f"fwd+bwd {row['fwd_bwd'][0]:9.3f} ms", flush=True)  # fmt: skip
        if T in args.graph_at:
            try:
                row = {"T": T, **graphed(T)}
                results.setdefault("graphed", []).append(row)
                print(f"T={T:>6} ours CUDA graph  fwd {row['fwd'][0]:9.3f} ms  fwd+bwd {row['fwd_bwd'][0]:9.3f} ms",
                      flush=True)  # fmt: skip
            except Exception as error:
                print(f"T={T:>6} CUDA graph capture failed: {error!r}"[:400], flush=True)
        if T in args.structured_at:
            for row in structured_rows(T):
                results["structured"].append(row)
                print(f"T={T:>6} {'STRUCTURED' if row['structured'] else 'random'} input: {row}", flush=True)
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    ours = {r["T"]: r for r in results["providers"] if r["provider"] == "ours"}
    for r in results["providers"]:
        if r["provider"] != "ours" and r["T"] in ours:
            o = ours[r["T"]]
            print(f"T={r['T']:>6} speedup of ours vs {r['provider']:>17}: fwd {r['fwd'][0] / o['fwd'][0]:6.2f}x  "
                  f"fwd+bwd {r['fwd_bwd'][0] / o['fwd_bwd'][0]:6.2f}x")  # fmt: skip
    assert math.isfinite(sum(r["fwd"][0] for r in results["providers"]))


if __name__ == "__main__":
    main()

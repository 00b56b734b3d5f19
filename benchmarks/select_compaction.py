"""The top-n select kernel's compaction width (``TUNING["topk"]["select_compact"]``): same indices, and its time.

On a GPU, captures every ``select_topk`` launch of one forward at each T (the random input of ``attention.py``) and
replays each with every ``--widths`` entry: it prints whether the block indices equal those of width 0 (no
compaction) and the launch's time without the clone of its scratch scores. ``--against`` another tree's ``topk.py``
adds that file's ``select_topk`` at each width (equal indices and time), an A/B of the kernel in one process.
``--simulate`` instead counts, on the CPU, the bitwise search's passes over full rows and over compacted rows for
sampled rows of that input at T = 128K. Run:
``python benchmarks/select_compaction.py --seqlens 32768 131072`` or ``python benchmarks/select_compaction.py
--simulate``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import torch

WIDTHS = (0, 64, 128, 256, 512)


def other_select(path: str):
    """``select_topk`` of another tree's ``topk.py``, loaded as a module of its own (its imports resolve to this
    tree's ``nsa_kernels``)."""
    spec = importlib.util.spec_from_file_location("other_topk", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.select_topk


def replay(seqlens: list[int], widths: list[int], against: str | None = None) -> None:
    import triton
    from attention import NSA, inputs

    from nsa_kernels import nsa_func, topk

    original = topk.select_topk
    versions = {"": original} if against is None else {"": original, " (against)": other_select(against)}
    for T in seqlens:
        launches = []

        def capture(scores, t_rel, launches=launches, **kw):
            launches.append((scores.clone(), t_rel.clone(), kw))
            return original(scores, t_rel, **kw)

        q, k, v, g = inputs(T)
        topk.select_topk = capture
        try:
            with torch.no_grad():
                nsa_func(q, k, v, g, **NSA)
        finally:
            topk.select_topk = original
        totals = {(width, name): 0.0 for width in widths for name in versions}
        for i, (scores, t_rel, kw) in enumerate(launches):
            want = original(scores.clone(), t_rel, **{**kw, "compact": 0})
            clone_ms = triton.testing.do_bench(lambda scores=scores: scores.clone(), rep=200)
            for width in widths:
                args = {**kw, "compact": width}
                for name, select in versions.items():
                    same = torch.equal(select(scores.clone(), t_rel, **args), want)
                    call = lambda s=scores, a=args, t=t_rel, f=select: f(s.clone(), t, **a)  # noqa: E731
                    ms = triton.testing.do_bench(call, rep=200)
                    totals[width, name] += ms - clone_ms
                    print(f"T={T} launch {i} {tuple(scores.shape)} width {width}{name}: equal {same}, "
                          f"{ms - clone_ms:.3f} ms")  # fmt: skip
        print(f"T={T} select ms summed over {len(launches)} launches:",
              ", ".join(f"width {w}{name}: {ms:.3f}" for (w, name), ms in totals.items()))  # fmt: skip


def search_passes(bits: torch.Tensor, n: int, width: int) -> tuple[int, int]:
    """(passes over the full row, passes over the compacted row) of the kernel's search on one row of bit patterns
    (forced blocks +inf), from its octave start; no compaction with ``width`` 0."""
    top = int(bits[bits != 0x7F800000].max())
    v = top & 0x7F800000
    at_or_above = int((bits >= v).sum())
    full = narrow = 0
    for b in range(8, 31):
        if at_or_above <= n:
            break
        cand = v | (1 << (30 - b))
        above = int((bits >= cand).sum())
        if width and at_or_above <= width:
            narrow += 1
        else:
            full += 1
        if above >= n:
            v, at_or_above = cand, above
    return full, narrow


def simulate(widths: list[int], T: int = 131072, tokens: int = 64, n: int = 32, forced_local: int = 2) -> None:
    from attention import HKV, HQ, NSA

    D, block = 128, NSA["select_block"]
    gen = torch.Generator().manual_seed(0)
    k_cmp = torch.randn(T, HKV, D, generator=gen).view(T // block, block, HKV, D).mean(1)
    q = torch.randn(tokens, HQ, D, generator=gen)
    rows = []
    for i in range(tokens):
        t = T - 1 - 997 * i
        visible = t // block + 1
        for h in range(HKV):
            qh = q[i].view(HKV, HQ // HKV, D)[h]
            s = torch.einsum("gd,nd->gn", qh, k_cmp[: visible - 1, h]) * D**-0.5
            scores = torch.cat([s.softmax(-1).sum(0), torch.zeros(1)])
            bits = scores.view(torch.int32).clone()
            j = torch.arange(visible)
            bits[(j < 1) | (j > t // block - forced_local)] = 0x7F800000
            rows.append(bits)
    for width in widths:
        counts = torch.tensor([search_passes(bits, n, width) for bits in rows], dtype=torch.float64).mean(0)
        print(f"width {width}: {counts[0]:.2f} passes over the full row, {counts[1]:.2f} over the compacted row "
              f"({len(rows)} rows at T = {T})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    parser.add_argument("--against", default=None, help="another tree's topk.py, replayed beside this tree's")
    parser.add_argument("--simulate", action="store_true", help="count search passes on the CPU instead")
    args = parser.parse_args()
    if args.against is not None and not os.path.isfile(args.against):
        parser.error(f"--against {args.against}: no such file (give the path of another tree's nsa_kernels/topk.py)")
    if args.simulate:
        simulate(args.widths)
    else:
        replay(args.seqlens, args.widths, args.against)


if __name__ == "__main__":
    main()

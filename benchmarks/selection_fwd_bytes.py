"""What the selection forward's block kernel pays for its bytes: the partial stores and the query-row gathers.

Each variant edits a temporary copy of ``nsa_kernels`` (the Gluon forward of :mod:`nsa_kernels.selection_async`) and
runs ``profile_kernels.py`` on it in a process of its own, variants alternating over ``--rounds``. Some edits give
wrong outputs on purpose, to price one part of the kernel: only their timing means anything.

- ``default``: the kernel as committed (partials stored as streaming, ``.cs``);
- ``plain-stores``: the partials stored without the cache hint (the kernel before run 26);
- ``no-partial-stores``: the partial outputs not stored at all (wrong outputs);
- ``l2-query-rows``: every step gathers the query rows of tokens ``t mod 1024``, which stay in the L2 (wrong outputs);
- ``query-rows-evict-last``: the query-row copies ask the L2 to keep their lines;
- ``ranges-2^30`` / ``ranges-2^29``: the committed kernel with ``TUNING["slc_block"]["fwd_partial_elems"]`` 2^30 /
  2^29, i.e. 2× / 4× more token ranges, whose query rows are 2× / 4× fewer per launch.

Run on a Hopper GPU from the repository root: ``python benchmarks/selection_fwd_bytes.py --rounds 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = Path("nsa_kernels/selection_async.py")
CACHE_HINT = ', cache_modifier=".cs")'
COPY_ROWS = "_copy_rows(q, q_smem.index((i + BUFFERS - 1) % BUFFERS), t_c, head_g, ok_c, d, HQ, D)"
STORE_O = "gl.store(o_part + rows[:, None] * D + d[None, :], q_buf.load(GATHER), mask=ok_o[:, None]" + CACHE_HINT
STORE_LSE = "gl.store(lse_part + (e - e_base) * G + r_s % G, lse_row, mask=ok" + CACHE_HINT
VARIANTS = {
    "default": ([], {}),
    "plain-stores": ([(line, line.replace(CACHE_HINT, ")")) for line in (STORE_O, STORE_LSE)], {}),
    "no-partial-stores": ([(STORE_O, "pass")], {}),
    "l2-query-rows": ([(COPY_ROWS, COPY_ROWS.replace("t_c,", "t_c & 1023,"))], {}),
    "query-rows-evict-last": ([(COPY_ROWS, "async_copy.async_copy_global_to_shared(q_smem.index((i + BUFFERS - 1) % "
                                "BUFFERS), q + t_c[:, None] * (HQ * D) + head_g[:, None] * D + d[None, :], "
                                'mask=ok_c[:, None], eviction_policy="evict_last")')], {}),
    "ranges-2^30": ([], {"slc_block": {"fwd_partial_elems": 2**30}}),
    "ranges-2^29": ([], {"slc_block": {"fwd_partial_elems": 2**29}}),
}  # fmt: skip
KERNELS = ("slc_fwd_kernel_block_async", "slc_fwd_kernel_merge")


def edited_tree(edits: list[tuple[str, str]], into: Path) -> Path:
    """A copy of the nsa_kernels sources under ``into`` with ``edits`` (old, new) applied to the Gluon selection."""
    src = ROOT / "packages/nsa-kernels/src"
    if not edits:
        return src
    shutil.copytree(src, into)
    path = into / MODULE
    text = path.read_text()
    for old, new in edits:
        if text.count(old) != 1:
            raise RuntimeError(f"{MODULE}: expected one {old!r}; update this script's VARIANTS to the kernel")
        text = text.replace(old, new)
    path.write_text(text)
    return into


def profile(name: str, tree: Path, tuning: dict, seqlen: int, cache: Path) -> list[dict]:
    """The profile_kernels runs (fwd, fwd_bwd) of one variant in a fresh process."""
    out = cache / f"{name}.json"
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache / f"triton-{name}"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "packages/nsa-core/src"), str(tree), str(ROOT),
                                          os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    command = [sys.executable, "profile_kernels.py", "--seqlens", str(seqlen), "--top", "0",
               "--tuning", json.dumps(tuning), "--json", str(out)]  # fmt: skip
    subprocess.run(command, cwd=ROOT / "benchmarks", env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", type=int, default=131072)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    print(f"| variant | round | {' | '.join(f'fwd {k}' for k in KERNELS)} | fwd kernels | fwd+bwd kernels |")
    print("|---|---|" + "---|" * (len(KERNELS) + 2))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        trees = {name: edited_tree(VARIANTS[name][0], cache / f"tree-{name}") for name in args.variants}
        for round_ in range(1, args.rounds + 1):
            for name in args.variants:
                runs = {run["phase"]: run for run in profile(name, trees[name], VARIANTS[name][1], args.seqlen, cache)}
                times = {kernel: ms for kernel, ms, _ in runs["fwd"]["kernels"]}
                cells = [f"{times.get(kernel, 0.0):.3f}" for kernel in KERNELS]
                cells += [f"{runs['fwd']['kernel_ms']:.3f}", f"{runs['fwd_bwd']['kernel_ms']:.3f}"]
                print(f"| {name} | {round_} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()

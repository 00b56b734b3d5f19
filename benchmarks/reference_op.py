"""Time the NSA reference operator against dense causal attention on CPU and print a table.

A benchmark, not a test: numbers depend on the machine. Example:

    ./uvw run python benchmarks/reference_op.py --lengths 1024 2048 4096 --output benchmarks/results/x.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from nsa_core import NSAConfig, nsa_attention


def _median_ms(fn: Callable[[], None], repeats: int) -> tuple[float, float, float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return statistics.median(times), times[0], times[-1]


def _dense(q, k, v, gates, config):
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)


def _nsa(q, k, v, gates, config):
    return nsa_attention(q, k, v, gates, config, backend="reference")


def measure(T: int, heads: int, kv_heads: int, head_dim: int, config: NSAConfig, repeats: int) -> dict:
    """Forward and forward+backward times (median, min, max in ms) of NSA and dense at length T."""
    q = torch.randn(1, T, heads, head_dim, requires_grad=True)
    k = torch.randn(1, T, kv_heads, head_dim, requires_grad=True)
    v = torch.randn(1, T, kv_heads, head_dim, requires_grad=True)
    gates = torch.rand(1, T, heads, 3, requires_grad=True)
    row = {"T": T}
    for name, op in (("nsa", _nsa), ("dense", _dense)):
        with torch.no_grad():
            row[f"{name}_fwd"] = _median_ms(lambda op=op: op(q, k, v, gates, config), repeats)
        row[f"{name}_fwdbwd"] = _median_ms(lambda op=op: op(q, k, v, gates, config).sum().backward(), repeats)
    return row


def format_table(rows: list[dict]) -> str:
    """Markdown table of medians with (min, max)."""
    header = "| T | NSA reference fwd ms | NSA reference fwd+bwd ms | dense SDPA fwd ms | dense SDPA fwd+bwd ms |"
    lines = [header, "|---|---|---|---|---|"]
    for row in rows:
        cells = [
            f"{m:.1f} ({lo:.1f}-{hi:.1f})"
            for m, lo, hi in (row["nsa_fwd"], row["nsa_fwdbwd"], row["dense_fwd"], row["dense_fwdbwd"])
        ]
        lines.append(f"| {row['T']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run the sweep, print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--heads", type=int, default=28)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block", type=int, default=64, help="compression block = stride = selection block")
    parser.add_argument("--num-selected", type=int, default=32)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", type=Path, help="also write the table and the setup as markdown here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = NSAConfig(
        compress_block=args.block,
        compress_stride=args.block,
        select_block=args.block,
        num_selected=args.num_selected,
        window=args.window,
    )
    rows = [measure(T, args.heads, args.kv_heads, args.head_dim, config, args.repeats) for T in args.lengths]
    setup = (
        f"CPU reference operator, float32, B=1, HQ={args.heads}, HKV={args.kv_heads}, D={args.head_dim}, "
        f"{config.model_dump(exclude={'scale'})}, {args.threads} threads, {args.repeats} repeats after one warm-up; "
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.processor() or platform.machine()}"
    )
    table = format_table(rows)
    print(setup)
    print(table)
    if args.output:
        args.output.write_text(f"# NSA reference operator on CPU\n\n{setup}\n\n{table}\n")


if __name__ == "__main__":
    main()

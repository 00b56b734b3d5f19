"""One training step of a reduced-depth Qwen2.5-VL-7B-shaped LLM (random weights): NSA vs dense, tokens/s and memory.

Shape legend: T sequence length (vision tokens + text), C hidden size (3584), HQ/HKV heads (28/4, G = 7), D 128.

The LLM keeps the 7B widths and Qwen2.5-VL's M-RoPE, with ``--layers`` decoder layers; the vision tower is
skipped (its cost is the same for both modes), so the step is the LLM forward + backward + AdamW update on
``inputs_embeds`` where the first ``--vision-tokens`` rows are video placeholders laid out as 64-token
temporal groups (8×8 per 2 frames at 4 fps). Modes: ``nsa`` (hybrid: NSA on vision rows, dense text rows,
MLP gates) and ``dense`` (stock ``sdpa``). Writes a markdown report with hardware, versions and the command.

GPU run (one call)::

    python benchmarks/train_step.py --vision-tokens 8192 32768 --layers 2 \\
        --out benchmarks/results/$(date +%Y%m%d)_h200_train_step.md

CPU smoke (CI)::

    python benchmarks/train_step.py --smoke --out /tmp/train_step.md
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from nsa_core import NSAConfig
from nsa_core.models.qwen2_5_vl import convert_to_nsa, set_attention_mode

VIDEO, VISION_START, VISION_END = 151656, 151652, 151653


def build(
    hidden: int, heads: int, kv_heads: int, layers: int, intermediate: int, vocab: int, mrope: list[int]
) -> torch.nn.Module:
    """A random Qwen2.5-VL with the given LLM widths and a 1-block vision tower (unused)."""
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "max_position_embeddings": 131072,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": mrope,
            },
            "bos_token_id": 0,
            "eos_token_id": 1,
        },
        vision_config={"depth": 1, "hidden_size": 32, "num_heads": 2, "out_hidden_size": hidden},
        video_token_id=VIDEO % vocab,
        image_token_id=(VIDEO - 1) % vocab,
        vision_start_token_id=VISION_START % vocab,
        vision_end_token_id=VISION_END % vocab,
    )
    config._attn_implementation = "sdpa"
    return Qwen2_5_VLForConditionalGeneration(config)


def batch(model: torch.nn.Module, vision_tokens: int, text_tokens: int, device: torch.device) -> dict:
    """``input_ids`` with ``vision_tokens`` video placeholders between text, M-RoPE ids of 8×8 groups, labels."""
    cfg = model.config
    groups, side = vision_tokens // 64, 8
    g = torch.Generator().manual_seed(0)
    pre = torch.randint(0, 100, (16,), generator=g)
    post = torch.randint(0, 100, (text_tokens,), generator=g)
    video = torch.full((groups * 64,), cfg.video_token_id)
    ids = torch.cat(
        [pre, torch.tensor([cfg.vision_start_token_id]), video, torch.tensor([cfg.vision_end_token_id]), post]
    )
    T = len(ids)
    pos = torch.arange(T).repeat(3, 1)
    start = len(pre) + 1
    t = torch.arange(groups).repeat_interleave(64)
    h = torch.arange(side).repeat_interleave(side).repeat(groups)
    w = torch.arange(side).repeat(side * groups)
    pos[:, start : start + len(video)] = torch.stack([t, h, w]) + start
    tail = start + len(video)
    pos[:, tail:] = torch.arange(T - tail) + int(pos[:, :tail].max()) + 1
    labels = torch.full((T,), -100)
    labels[-text_tokens:] = post
    return {
        "input_ids": ids[None].to(device),
        "position_ids": pos[:, None].to(device),
        "labels": labels[None].to(device),
    }


def measure(model, optimizer, inputs, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median step seconds and peak memory in GiB (CUDA) or ``nan`` on CPU."""
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
            if i == warmup:
                torch.cuda.reset_peak_memory_stats()
        tick = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - tick)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the markdown report; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision-tokens", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["nsa", "dense"], choices=["nsa", "dense"])
    parser.add_argument("--backend", default="auto", help="NSA backend (auto, reference, triton)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny widths and lengths, for CI on CPU")
    parser.add_argument("--out", type=Path, required=True, help="markdown report to write")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    widths = dict(hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064, mrope=[16, 24, 24])
    nsa = NSAConfig()
    if args.smoke:
        widths = dict(hidden=112, heads=14, kv_heads=2, intermediate=128, vocab=512, mrope=[1, 1, 2])
        nsa = NSAConfig(
            compress_block=16, compress_stride=16, select_block=16, num_selected=4, forced_local=1, window=32
        )
        args.vision_tokens, args.steps, args.warmup, args.text_tokens = [128], 1, 1, 8
    rows = []
    for vision_tokens in args.vision_tokens:
        for mode in args.modes:
            torch.manual_seed(0)
            model = build(layers=args.layers, **widths)
            convert_to_nsa(model, nsa, backend=args.backend)
            set_attention_mode(model, mode)
            if args.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.to(device).train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
            inputs = batch(model, vision_tokens, args.text_tokens, device)
            seconds, peak = measure(model, optimizer, inputs, args.steps, args.warmup, device)
            T = inputs["input_ids"].shape[1]
            rows.append((vision_tokens, mode, T, seconds * 1e3, T / seconds, peak))
            del model, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    hardware = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'unknown'})"
    command = shlex.join(["python", "benchmarks/train_step.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        f"# Training step: NSA vs dense ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `{command}`",
        f"- hardware: {hardware}; torch {torch.__version__}; Python {platform.python_version()}",
        f"- model: Qwen2.5-VL-7B LLM widths {widths}, {args.layers} layers, random weights, vision tower skipped; "
        f"bf16 autocast on GPU, fp32 weights; AdamW; gradient checkpointing {args.gradient_checkpointing}",
        f"- NSA: {nsa.model_dump(mode='json')}, backend {args.backend}",
        f"- timing: median of {args.steps} steps after {args.warmup} warm-up steps (forward + backward + AdamW)",
        "",
        "| vision tokens | mode | sequence | step ms | tokens/s | peak GiB |",
        "|---:|---|---:|---:|---:|---:|",
        *(f"| {v} | {m} | {t} | {ms:.1f} | {tps:.0f} | {peak:.2f} |" for v, m, t, ms, tps, peak in rows),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The training function every launcher runs: single process, torchrun ranks and Ray Train workers alike."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm.auto import tqdm

from nsa_core.tracking import Tracker, choose_tracker
from nsa_data.text import VideoQATokenizer
from nsa_train.checkpoint import TrainState, checkpoint_root, latest_checkpoint, load_checkpoint, save_checkpoint
from nsa_train.config import TrainConfig
from nsa_train.data import ExampleDataset, SampleOrder, build_tokenizer, open_dataset
from nsa_train.model import build_model, decay_groups, set_trainable
from nsa_train.parallel import (
    RankInfo,
    all_reduce_gradients,
    autocast,
    broadcast_parameters,
    compute_dtype,
    mean_over_ranks,
    setup_rank,
    shard_model,
    teardown,
    use_fsdp,
)

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    output_dir: Path
    """Run folder: ``model/`` (save_pretrained + tokenizer), ``checkpoints/``, ``metrics.jsonl``, ``config.yaml``."""
    model_dir: Path
    """Final model, loadable with ``load_nsa_model`` and ``VideoQATokenizer.load``."""
    checkpoint_dir: Path | None
    """Last resumable checkpoint."""
    final_metrics: dict[str, float] = field(default_factory=dict)
    """Metrics of the last optimizer step plus ``steps`` and ``wall_s``."""
    run_id: str | None = None
    """MLflow run id (``None`` without tracking)."""

    def to_json(self) -> str:
        """JSON form, written to ``<output_dir>/result.json`` at the end of a run."""
        fields = {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}
        return json.dumps(fields, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainResult:
        """Inverse of :meth:`to_json`."""
        raw = json.loads(text)
        checkpoint = raw["checkpoint_dir"]
        return cls(
            Path(raw["output_dir"]),
            Path(raw["model_dir"]),
            Path(checkpoint) if checkpoint else None,
            raw["final_metrics"],
            raw["run_id"],
        )


def warmup_cosine(total: int, warmup_ratio: float, start_factor: float, min_ratio: float) -> Callable[[int], float]:
    """LR factor per step: linear from ``start_factor`` to 1 over ``⌈warmup_ratio·total⌉`` steps, then cosine."""
    warmup = math.ceil(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return start_factor + (1 - start_factor) * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _truncate_metrics(path: Path, step: int) -> None:
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(f"{line}\n" for line in kept))


def _save_final_model(model: torch.nn.Module, tokenizer: VideoQATokenizer, out: Path, info: RankInfo) -> Path:
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    target = out / "model"
    if info.is_main:
        tmp = out / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def run_training(config: TrainConfig, resume: bool = False, on_step: StepCallback | None = None) -> TrainResult:
    """Train one run on this process (one rank of a job, or the whole job).

    Args:
        config: The run config.
        resume: Continue from the latest complete checkpoint in the output folder (a fresh start if none).
        on_step: Called on every rank after each optimizer step (and its checkpoint) with the step and metrics.

    Returns:
        The result (identical on every rank; files are written by rank 0).

    Raises:
        FileNotFoundError: when the data or checkpoint folders are missing.
        ValueError: for configs that do not fit the data (e.g. fewer examples than one optimizer step needs).
    """
    info = setup_rank(config.distributed)
    try:
        return _train(config, info, resume, on_step)
    finally:
        teardown(info)


def _train(config: TrainConfig, info: RankInfo, resume: bool, on_step: StepCallback | None) -> TrainResult:
    out = config.resolved_output_dir()
    loop = config.loop
    checkpoint = latest_checkpoint(out) if resume else None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in checkpoint_root(out).glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    _seed_everything(loop.seed)
    shards = open_dataset(config.data)
    tokenizer_dir = out / "tokenizer"
    if checkpoint is not None and (tokenizer_dir / "tokenizer.json").is_file():
        tokenizer = VideoQATokenizer.load(tokenizer_dir)
    else:
        tokenizer = build_tokenizer(config.data, config.model, shards)
    dataset = ExampleDataset(shards, tokenizer)
    order = SampleOrder(len(dataset), loop.micro_batch_size, loop.seed, info.rank, info.world_size)
    steps_per_epoch = order.steps_per_epoch(loop.grad_accum)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(dataset)} examples give no full optimizer step at micro_batch_size {loop.micro_batch_size} x "
            f"grad_accum {loop.grad_accum} x {info.world_size} ranks; lower loop.grad_accum or add data"
        )
    total = loop.max_steps or loop.epochs * steps_per_epoch

    model = build_model(config.model, tokenizer, loop.seed).to(info.device)
    dtype = compute_dtype(loop, info.device)
    sharded = use_fsdp(config.distributed, info)
    if sharded:
        model = shard_model(model, dtype)
    else:
        broadcast_parameters(model)
    trainable = set_trainable(model, config.model)
    opt = config.optim
    optimizer = torch.optim.AdamW(decay_groups(model, opt.weight_decay), lr=opt.lr, betas=opt.betas, eps=opt.eps)
    schedule = warmup_cosine(total, opt.warmup_ratio, opt.warmup_start_factor, opt.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    state, epoch_order = TrainState(), order.permutation(0)
    if checkpoint is not None:
        state, epoch_order = load_checkpoint(checkpoint, model, optimizer, scheduler)
        if epoch_order != order.permutation(state.epoch):
            raise ValueError(
                f"{checkpoint} was written with a different sample order (data or seed changed); "
                "resume with the same data.prepared_dir and loop.seed, or start a new output_dir"
            )
        logger.info("resumed from %s at step %d", checkpoint, state.step)
    config_data = config.model_dump(mode="json")
    if info.is_main:
        tokenizer.save(tokenizer_dir)
        (out / "config.yaml").write_text(yaml.safe_dump(config_data, sort_keys=False))
        _truncate_metrics(out / METRICS_FILE, state.step)

    tracker = choose_tracker(config.tracking) if info.is_main else Tracker()
    if info.is_main and config.tracking.backend == "mlflow" and config.system_metrics:
        os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
        os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "2")
    tags = {"resumed_from": str(checkpoint)} if checkpoint is not None else {}
    started, last_checkpoint, metrics = time.perf_counter(), checkpoint, {}
    with tracker.run(config.name, params=config_data, tags=tags) as run_id:
        if info.is_main:
            tracker.log_text(yaml.safe_dump(config_data, sort_keys=False), "config.yaml")
            tracker.log_params({f"trainable_params.{k}": v for k, v in trainable.items()})
        bar = tqdm(total=total, initial=state.step, disable=not (info.is_main and loop.progress), desc=config.name)
        while state.step < total:
            batches = order.micro_batches(state.epoch)
            if state.micro_batch + loop.grad_accum > len(batches):
                state, epoch_order = TrainState(state.step, state.epoch + 1, 0), order.permutation(state.epoch + 1)
                continue
            tick = time.perf_counter()
            losses, tokens = [], 0
            for indices in batches[state.micro_batch : state.micro_batch + loop.grad_accum]:
                batch = _to_device(dataset.batch(indices), info.device)
                with autocast(info.device, dtype, sharded):
                    loss = model(**batch).loss
                (loss / loop.grad_accum).backward()
                losses.append(loss.item())
                tokens += int(batch["attention_mask"].sum())
            if not sharded:
                all_reduce_gradients(model, info.world_size)
            params = [p for p in model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, opt.grad_clip or float("inf"))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state = TrainState(state.step + 1, state.epoch, state.micro_batch + loop.grad_accum)
            loss_mean, token_sum = mean_over_ranks([sum(losses) / len(losses), tokens], info.device)
            seconds = time.perf_counter() - tick
            metrics = {
                "train/loss": loss_mean,
                "train/lr": lr,
                "train/grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
                "train/tokens_per_s": token_sum * info.world_size / seconds,
                "train/step_s": seconds,
                "train/epoch": state.epoch + state.micro_batch / len(batches),
                "memory/peak_mb": _peak_memory_mb(info.device),
            }
            if info.is_main:
                with (out / METRICS_FILE).open("a") as f:
                    f.write(json.dumps({"step": state.step, "loss": loss_mean, "lr": lr}) + "\n")
                if state.step % loop.log_every == 0 or state.step == total:
                    tracker.log_metrics(metrics, step=state.step)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.2e}")
            if state.step == total or (loop.save_every and state.step % loop.save_every == 0):
                last_checkpoint = save_checkpoint(
                    out, model, optimizer, scheduler, state, epoch_order, config_data, loop.keep_checkpoints
                )
            if on_step is not None:
                on_step(state.step, metrics)
        bar.close()
        model_dir = _save_final_model(model, tokenizer, out, info)
        final = {**metrics, "steps": float(state.step), "wall_s": time.perf_counter() - started}
        if info.is_main:
            tracker.log_artifact(model_dir, "model")
    result = TrainResult(out, model_dir, last_checkpoint, final, run_id)
    if info.is_main:
        (out / RESULT_FILE).write_text(result.to_json())
    return result

"""Process groups, devices, precision and FSDP2 sharding for one rank; no launcher logic here."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from nsa_train.config import DistributedConfig, LoopConfig


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False
    """Whether this process created the process group (and so destroys it at the end)."""

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes files and shows the progress bar."""
        return self.rank == 0


def setup_rank(config: DistributedConfig) -> RankInfo:
    """Join the process group when launched by torchrun or Ray (``WORLD_SIZE`` > 1) and pick the device.

    A process group that already exists (Ray Train creates one) is reused.

    Args:
        config: Distributed section of the run config.

    Returns:
        Rank, world size and device (``cuda:<local rank>`` when CUDA is available, else CPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        backend = config.backend if config.backend != "auto" else ("nccl" if cuda else "gloo")
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return RankInfo(rank, world, local_rank, device, owns_group)


def use_fsdp(config: DistributedConfig, info: RankInfo) -> bool:
    """Whether to shard with FSDP2 (``auto``: on GPU with more than one rank)."""
    if config.shard == "auto":
        return info.world_size > 1 and info.device.type == "cuda"
    return config.shard == "fsdp" and info.world_size > 1


def compute_dtype(loop: LoopConfig, device: torch.device) -> torch.dtype:
    """bf16 for ``bf16`` (and ``auto`` on GPU), else fp32; master weights stay fp32 either way."""
    if loop.precision == "bf16" or (loop.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def shard_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """FSDP2: ``fully_shard`` each LLM decoder layer and vision block, then the root, with fp32 reduction.

    Args:
        model: A Qwen2.5-VL model on its device.
        dtype: Compute dtype of the sharded parameters (bf16 keeps an fp32 master copy).

    Returns:
        The same model object, now sharded.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    inner = model.model
    for block in [*inner.visual.blocks, *inner.language_model.layers]:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def all_reduce_gradients(model: nn.Module, world_size: int) -> None:
    """Average gradients over ranks for a replicated (unsharded) model."""
    if world_size == 1:
        return
    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(world_size)


def broadcast_parameters(model: nn.Module) -> None:
    """Make a replicated model identical on every rank (rank 0's values)."""
    if dist.is_initialized():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def mean_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise mean of ``values`` over ranks (identity when not distributed)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return (tensor / dist.get_world_size()).tolist()


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype, sharded: bool) -> Iterator[None]:
    """bf16 autocast for an unsharded model on GPU; FSDP2 casts parameters itself."""
    if dtype == torch.float32 or sharded:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


def teardown(info: RankInfo) -> None:
    """Destroy the process group if this process created it (Ray Train tears down its own)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()

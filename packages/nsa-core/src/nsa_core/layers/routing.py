"""Which rows of a (padded, possibly cached) batch are vision tokens, and how to gather them.

Shape legend: B batch, TQ query rows of this call, TK keys (cached + new, ``TK >= TQ``), N packed
vision keys of all samples, M vision query rows of this call, NT text query rows per sample (padded).

The query rows of a call are always the last ``TQ`` key positions, as with an append-only KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TokenRouting:
    """Vision/text split of the keys of one attention call.

    Attributes:
        key_is_vision: bool ``[B, TK]``, True at image/video placeholder positions (taken from the input ids).
        key_valid: bool ``[B, TK]``, False at padding positions; ``None`` means no padding.
    """

    key_is_vision: Tensor
    key_valid: Tensor | None = None

    def __post_init__(self) -> None:
        if self.key_is_vision.dim() != 2 or self.key_is_vision.dtype != torch.bool:
            raise ValueError(
                f"key_is_vision must be a bool [B, TK] tensor, got {self.key_is_vision.dtype} "
                f"{tuple(self.key_is_vision.shape)}"
            )
        if self.key_valid is not None and (
            self.key_valid.shape != self.key_is_vision.shape or self.key_valid.dtype != torch.bool
        ):
            raise ValueError(
                f"key_valid must be a bool tensor shaped like key_is_vision {tuple(self.key_is_vision.shape)}, "
                f"got {self.key_valid.dtype} {tuple(self.key_valid.shape)}"
            )

    @property
    def valid(self) -> Tensor:
        """bool ``[B, TK]``: non-padding keys."""
        return torch.ones_like(self.key_is_vision) if self.key_valid is None else self.key_valid

    def query_is_vision(self, num_queries: int) -> Tensor:
        """bool ``[B, TQ]``: vision rows among the last ``num_queries`` positions, padding excluded."""
        return (self.key_is_vision & self.valid)[:, -num_queries:]

    def query_is_text(self, num_queries: int) -> Tensor:
        """bool ``[B, TQ]``: text rows among the last ``num_queries`` positions, padding excluded."""
        return (~self.key_is_vision & self.valid)[:, -num_queries:]


@dataclass(frozen=True)
class VisionPacking:
    """Varlen packing of every sample's vision subsequence (keys in order, B = 1, ``cu_seqlens``).

    Attributes:
        key_batch: long ``[N]`` sample of each packed key.
        key_pos: long ``[N]`` key position (``< TK``) of each packed key.
        cu_seqlens: long ``[B + 1]`` boundaries of the samples' vision subsequences.
        query_slot: long ``[M]`` packed index of each vision query row of this call.
        query_batch: long ``[M]`` sample of each vision query row.
        query_row: long ``[M]`` query row (``< TQ``) of each vision query row.
    """

    key_batch: Tensor
    key_pos: Tensor
    cu_seqlens: Tensor
    query_slot: Tensor
    query_batch: Tensor
    query_row: Tensor


def pack_vision(routing: TokenRouting, num_queries: int) -> VisionPacking:
    """Pack the vision keys of every sample and locate this call's vision query rows among them.

    Args:
        routing: the vision/text split of the keys ``[B, TK]``.
        num_queries: ``TQ``; query row ``i`` sits at key position ``TK - TQ + i``.

    Returns:
        The packing; the vision subsequence of a sample is its non-padding vision keys in position order.
    """
    vision = routing.key_is_vision & routing.valid
    key_batch, key_pos = vision.nonzero(as_tuple=True)
    counts = vision.sum(1)
    cu_seqlens = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    first_query = vision.shape[1] - num_queries
    query_slot = (key_pos >= first_query).nonzero(as_tuple=True)[0]
    return VisionPacking(
        key_batch=key_batch,
        key_pos=key_pos,
        cu_seqlens=cu_seqlens,
        query_slot=query_slot,
        query_batch=key_batch[query_slot],
        query_row=key_pos[query_slot] - first_query,
    )


def gather_text_rows(query_is_text: Tensor) -> tuple[Tensor, Tensor]:
    """Left-aligned indices of each sample's text rows, padded to the longest sample.

    Args:
        query_is_text: bool ``[B, TQ]``.

    Returns:
        ``(rows [B, NT], row_valid [B, NT])``: ``rows[b, i]`` is the i-th text row of sample b
        (0 where ``row_valid`` is False).
    """
    counts = query_is_text.sum(1)
    width = int(counts.max()) if counts.numel() else 0
    order = torch.argsort((~query_is_text).to(torch.int8), dim=1, stable=True)[:, :width]
    row_valid = torch.arange(width, device=query_is_text.device)[None, :] < counts[:, None]
    return torch.where(row_valid, order, torch.zeros_like(order)), row_valid

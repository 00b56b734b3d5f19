"""Host-side index preparation: varlen tile tables, per-tile block unions and the CSR reverse index.

These are small integer tensors built with PyTorch sort/scan primitives (deterministic, stable sorts) and, around
the selection CSR's sort, the kernels of :mod:`nsa_kernels.csr`; never a T×T or T×NS mask: every table is
O(N·HKV·S) at most.

Shape legend:
    NSEQ packed sequences, N packed tokens, HKV KV heads, S selected blocks per query,
    NT query tiles of TT tokens, NB selection blocks over all sequences, NW work items.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from nsa_kernels.csr import csr_entries, csr_keys

Table = TypeVar("Table")

_BIG = 2**30


def host_lengths(cu_seqlens: Tensor | None, batch: int, seqlen: int) -> list[int]:
    """Sequence lengths on the host: ``[seqlen] * batch`` without ``cu_seqlens`` (no device sync), else one copy."""
    if cu_seqlens is None:
        return [seqlen] * batch
    cu = cu_seqlens.tolist()
    return [b - a for a, b in itertools.pairwise(cu)]


def cached(memo: dict | None, key: tuple, build: Callable[[], Table]) -> Table:
    """``build()``, kept in ``memo`` under ``key``: the tables of a plan that depend on the sequence lengths alone are
    built on the first call of a layout and reused (``memo`` is the plan's, see ``nsa._Plans``); no memo, no reuse."""
    if memo is None:
        return build()
    if key not in memo:
        memo[key] = build()
    return memo[key]


def tile_count(lens: list[int], size: int) -> int:
    """Number of tiles of ``size`` positions over sequences of host lengths ``lens``."""
    return sum((n + size - 1) // size for n in lens)


def tile_first_token(lens: list[int], size: int, tile: int) -> int:
    """Packed position of the first token of tile ``tile`` (``N`` past the last tile)."""
    pos = 0
    for n in lens:
        count = (n + size - 1) // size
        if tile < count:
            return pos + tile * size
        tile -= count
        pos += n
    return pos


def tile_at(lens: list[int], size: int, pos: int) -> tuple[int, int]:
    """The tile of ``size`` positions that holds packed position ``pos`` and its first token (the tile count and
    ``N`` for ``pos >= N``): the inverse of :func:`tile_first_token`."""
    tile, start = 0, 0
    for n in lens:
        if pos < start + n:
            inside = (pos - start) // size
            return tile + inside, start + inside * size
        tile += (n + size - 1) // size
        start += n
    return tile, start


def longest_prefix(lens: list[int], lo: int, hi: int) -> int:
    """Largest ``position + 1`` inside its sequence over the packed tokens ``[lo, hi)``."""
    best, start = 0, 0
    for n in lens:
        end = start + n
        if end > lo and start < hi:
            best = max(best, min(hi, end) - start)
        if end >= hi:
            break
        start = end
    return best


def tile_table(cu_seqlens: Tensor, size: int, lens: list[int] | None = None) -> tuple[Tensor, Tensor]:
    """Tiles of ``size`` consecutive positions inside each sequence.

    Args:
        cu_seqlens: int32 ``[NSEQ + 1]`` offsets.
        size: positions per tile.
        lens: host sequence lengths; with them the table size is known without a device sync.

    Returns:
        ``(tile_seq, tile_start)`` int32 ``[NT]``: the sequence of each tile and its first position,
        as an offset into the packed axis that ``cu_seqlens`` describes.
    """
    host = lens
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    counts = (lens + size - 1) // size
    total = int(counts.sum()) if host is None else tile_count(host, size)
    seq = torch.repeat_interleave(torch.arange(counts.numel(), device=lens.device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    start = cu_seqlens[:-1].long()[seq] + (torch.arange(total, device=lens.device) - first[seq]) * size
    return seq.to(torch.int32), start.to(torch.int32)


def block_table(cu_seqlens: Tensor, size: int, lens: list[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Selection blocks of every sequence: ``(block_seq, block_start_rel, block_offset [NSEQ])``.

    ``block_start_rel`` is relative to the sequence; ``block_offset`` is the global id of each
    sequence's block 0.
    """
    seq, start = tile_table(cu_seqlens, size, lens)
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    counts = (lens + size - 1) // size
    offset = torch.cumsum(counts, 0) - counts
    return seq, (start.long() - cu_seqlens[:-1].long()[seq.long()]).to(torch.int32), offset


def positions(cu_seqlens: Tensor, n_tokens: int) -> tuple[Tensor, Tensor]:
    """Sequence id and position inside the sequence of every packed token, int64 ``[N]`` each."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seq = torch.repeat_interleave(torch.arange(lens.numel(), device=lens.device), lens, output_size=n_tokens)
    return seq, torch.arange(n_tokens, device=lens.device) - cu_seqlens[:-1].long()[seq]


def tile_union(block_indices: Tensor, tile_start: Tensor, cu_seqlens: Tensor, tile_seq: Tensor, tokens_per_tile: int):
    """Union of the blocks selected by the tokens of each query tile, per KV head, as CSR.

    Args:
        block_indices: int ``[N, HKV, S]``, ``-1`` = empty slot.
        tile_start: int32 ``[NT]`` first token of each tile.
        cu_seqlens: int32 ``[NSEQ + 1]``.
        tile_seq: int32 ``[NT]``.
        tokens_per_tile: TT.

    Returns:
        ``(offsets int32 [NT·HKV + 1], blocks int32 [total])``, blocks ascending within a tile.
    """
    N, _HKV, S = block_indices.shape
    tok = tile_start.long()[:, None] + torch.arange(tokens_per_tile, device=tile_start.device)
    valid = tok < cu_seqlens[1:].long()[tile_seq.long()][:, None]  # [NT, TT]
    idx = block_indices[tok.clamp(max=N - 1)].long()  # [NT, TT, HKV, S]
    idx = torch.where(valid[:, :, None, None] & (idx >= 0), idx, _BIG)
    idx = idx.permute(0, 2, 1, 3).reshape(-1, tokens_per_tile * S).sort(-1).values
    repeat = torch.zeros_like(idx, dtype=torch.bool)
    repeat[:, 1:] = idx[:, 1:] == idx[:, :-1]
    idx = torch.where(repeat, _BIG, idx).sort(-1).values
    keep = idx < _BIG
    counts = keep.sum(-1)
    offsets = torch.zeros(counts.numel() + 1, device=idx.device, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    return offsets.to(torch.int32), idx[keep].to(torch.int32)


def token_block_offsets(cu_seqlens: Tensor, select_block: int, n_tokens: int, lens: list[int] | None = None) -> Tensor:
    """Global id of block 0 of each packed token's sequence, int64 ``[N]``."""
    seq, _ = positions(cu_seqlens, n_tokens)
    return block_table(cu_seqlens, select_block, lens)[2][seq]


def _sorted_selection_rows(
    block_indices: Tensor,
    cu_seqlens: Tensor,
    select_block: int,
    nb: int,
    lens: list[int] | None = None,
    token_offset: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """CSR row ``h·NB + b`` of every selection (``HKV·NB`` for empty slots), stably sorted: ``(row, order int64)``,
    the rows in the narrowest integer type that holds them (:func:`~nsa_kernels.csr.csr_keys`).
    ``token_offset``: :func:`token_block_offsets`, if already built.
    """
    N = block_indices.shape[0]
    if token_offset is None:
        token_offset = token_block_offsets(cu_seqlens, select_block, N, lens)
    return torch.sort(csr_keys(block_indices, token_offset, nb), stable=True)


def reverse_index(block_indices: Tensor, cu_seqlens: Tensor, select_block: int) -> tuple[Tensor, Tensor]:
    """CSR of the tokens that selected each (KV head, selection block), tokens ascending.

    Built with one stable sort of the ``N·HKV·S`` (head, global block) keys, i.e. a counting sort.

    Returns:
        ``(offsets int32 [HKV·NB + 1], tokens int32 [nnz])``; row ``h·NB + b`` lists the tokens
        whose KV head ``h`` selected global block ``b``.
    """
    _N, HKV, S = block_indices.shape
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    nb = int(((lens + select_block - 1) // select_block).sum())
    key, order = _sorted_selection_rows(block_indices, cu_seqlens, select_block, nb)
    counts = torch.bincount(key.long(), minlength=HKV * nb + 1)[: HKV * nb]
    offsets = torch.zeros(HKV * nb + 1, device=key.device, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    nnz = int(offsets[-1])
    return offsets.to(torch.int32), (order[:nnz] // (HKV * S)).to(torch.int32)


def selection_csr_size(N: int, HKV: int, select_block: int, lens: list[int]) -> tuple[int, int]:
    """``(big, rows)`` of the block-outer CSR: its row keys are ``row · big + token`` over ``rows`` CSR rows."""
    return max(N, 1), HKV * tile_count(lens, select_block)


def selection_csr(
    block_indices: Tensor, cu_seqlens: Tensor, select_block: int, lens: list[int], token_offset: Tensor | None = None
) -> tuple[Tensor, Tensor, int, int]:
    """CSR of the selections per (KV head, global block) without a device sync; the block-outer plan.

    Same order as :func:`reverse_index` (one stable sort), but the entry list keeps its full length ``N·HKV·S``
    (empty slots sort past the last row and are never inside a row's range) and holds the flat position
    ``(t·HKV + h)·S + slot`` of each selection; rows are bounded by binary search on the row keys.

    Returns:
        ``(entries int32 [N·HKV·S], row_key int64, big, rows)``: ``row_key`` is ``row · big + token`` per entry,
        ascending, so ``searchsorted(row_key, r · big + t)`` bounds the entries of tokens ``< t`` in row ``r``
        (:func:`selection_csr_size`). ``token_offset`` as in :func:`_sorted_selection_rows`.
    """
    N, HKV, S = block_indices.shape
    big, rows = selection_csr_size(N, HKV, select_block, lens)
    key, order = _sorted_selection_rows(block_indices, cu_seqlens, select_block, rows // HKV, lens, token_offset)
    return *csr_entries(key, order, big, HKV, S), big, rows


def compressed_offsets(cu_seqlens: Tensor, compress_block: int, compress_stride: int) -> Tensor:
    """int32 ``[NSEQ + 1]`` offsets of each sequence's complete compressed blocks."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    nc = torch.where(lens >= compress_block, (lens - compress_block) // compress_stride + 1, 0)
    out = torch.zeros(nc.numel() + 1, device=lens.device, dtype=torch.int64)
    out[1:] = torch.cumsum(nc, 0)
    return out.to(torch.int32)

"""Host-side index preparation: varlen tile tables, per-tile block unions and the CSR reverse index.

These are small integer tensors built with PyTorch sort/scan primitives (deterministic, stable sorts),
never a T×T or T×NS mask: every table is O(N·HKV·S) at most.

Shape legend:
    NSEQ packed sequences, N packed tokens, HKV KV heads, S selected blocks per query,
    NT query tiles of TT tokens, NB selection blocks over all sequences, NW work items.
"""

from __future__ import annotations

import torch
from torch import Tensor

_BIG = 2**30


def tile_table(cu_seqlens: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Tiles of ``size`` consecutive positions inside each sequence.

    Args:
        cu_seqlens: int32 ``[NSEQ + 1]`` offsets.
        size: positions per tile.

    Returns:
        ``(tile_seq, tile_start)`` int32 ``[NT]``: the sequence of each tile and its first position,
        as an offset into the packed axis that ``cu_seqlens`` describes.
    """
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    counts = (lens + size - 1) // size
    total = int(counts.sum())
    seq = torch.repeat_interleave(torch.arange(counts.numel(), device=lens.device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    start = cu_seqlens[:-1].long()[seq] + (torch.arange(total, device=lens.device) - first[seq]) * size
    return seq.to(torch.int32), start.to(torch.int32)


def block_table(cu_seqlens: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Selection blocks of every sequence: ``(block_seq, block_start_rel, block_offset [NSEQ])``.

    ``block_start_rel`` is relative to the sequence; ``block_offset`` is the global id of each
    sequence's block 0.
    """
    seq, start = tile_table(cu_seqlens, size)
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


def reverse_index(
    block_indices: Tensor, cu_seqlens: Tensor, select_block: int, entries: bool = False
) -> tuple[Tensor, Tensor]:
    """CSR of the tokens that selected each (KV head, selection block), tokens ascending.

    Built with one stable sort of the ``N·HKV·S`` (head, global block) keys, i.e. a counting sort.

    Returns:
        ``(offsets int32 [HKV·NB + 1], tokens int32 [nnz])``; row ``h·NB + b`` lists the tokens
        whose KV head ``h`` selected global block ``b``. With ``entries`` the list holds the flat
        position ``(t·HKV + h)·S + slot`` of each selection in ``block_indices`` instead of ``t``.
    """
    N, HKV, S = block_indices.shape
    seq, _ = positions(cu_seqlens, N)
    _, _, offset = block_table(cu_seqlens, select_block)
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    nb = int(((lens + select_block - 1) // select_block).sum())
    idx = block_indices.long()
    key = torch.arange(HKV, device=idx.device).view(1, HKV, 1) * nb + offset[seq].view(N, 1, 1) + idx
    key = torch.where(idx >= 0, key, HKV * nb).flatten()
    token = torch.arange(N, device=idx.device).view(N, 1, 1).expand(N, HKV, S).flatten()
    key, order = torch.sort(key, stable=True)
    counts = torch.bincount(key, minlength=HKV * nb + 1)[: HKV * nb]
    offsets = torch.zeros(HKV * nb + 1, device=idx.device, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    nnz = int(offsets[-1])
    if entries:
        return offsets.to(torch.int32), order[:nnz].to(torch.int32)
    return offsets.to(torch.int32), token[order][:nnz].to(torch.int32)


def work_chunks(lo: Tensor, hi: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split the entry ranges ``[lo[r], hi[r])`` of every CSR row into work items of at most ``chunk`` entries.

    Returns:
        ``(item_row, item_lo, item_hi)`` int32 ``[NW]`` (items of a row consecutive) and ``row_first``
        int32 ``[rows + 1]``, the first item of each row.
    """
    lo, hi = lo.long(), hi.long()
    n = (hi - lo + chunk - 1) // chunk
    first = torch.zeros(n.numel() + 1, device=lo.device, dtype=torch.int64)
    first[1:] = torch.cumsum(n, 0)
    total = int(first[-1])
    row = torch.repeat_interleave(torch.arange(n.numel(), device=lo.device), n, output_size=total)
    start = lo[row] + (torch.arange(total, device=lo.device) - first[row]) * chunk
    end = torch.minimum(start + chunk, hi[row])
    return row.to(torch.int32), start.to(torch.int32), end.to(torch.int32), first.to(torch.int32)


def row_token_keys(offsets: Tensor, entries: Tensor, per_token: int) -> tuple[Tensor, int]:
    """``(row · BIG + token)`` int64 per entry, ascending over the whole CSR list, and ``BIG`` (> any token).

    Tokens ascend inside a row, so one binary search per bound (``searchsorted`` of ``r · BIG + t``) finds
    the entry range of tokens ``[t_lo, t_hi)`` in every row; ``entries // per_token`` is the token.
    """
    rows = offsets.numel() - 1
    counts = (offsets[1:] - offsets[:-1]).long()
    row_of = torch.repeat_interleave(torch.arange(rows, device=offsets.device), counts, output_size=entries.numel())
    big = int(entries.max()) // per_token + 1 if entries.numel() else 1
    return row_of * big + entries.long() // per_token, big


def compressed_offsets(cu_seqlens: Tensor, compress_block: int, compress_stride: int) -> Tensor:
    """int32 ``[NSEQ + 1]`` offsets of each sequence's complete compressed blocks."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    nc = torch.where(lens >= compress_block, (lens - compress_block) // compress_stride + 1, 0)
    out = torch.zeros(nc.numel() + 1, device=lens.device, dtype=torch.int64)
    out[1:] = torch.cumsum(nc, 0)
    return out.to(torch.int32)

"""Readable pure-PyTorch reference of native sparse attention, one function per branch.

Semantics are the clean mode of the VideoNSA re-implementation (causal compression over complete
blocks, importance from the compression probabilities, exact top-n with forced blocks, token-level
causal selection, a window that ends at the query). Every kernel is tested against this file.

Shape legend:
    B batch, T tokens, HQ query heads, HKV key/value heads, G = HQ / HKV, D head dim,
    NC compressed blocks, NS selection blocks, S selected blocks per query (``n``),
    C queries in one chunk, K keys gathered for one query.

Query head ``h`` reads KV head ``h // G`` (the Qwen2.5-VL mapping). All functions take
``[B, T, H, D]`` tensors of one sequence per batch row; ``nsa_reference`` adds varlen packing.
The reference computes in float32 (float64 for float64 inputs) and processes queries in chunks, so
selection never materialises a T×T mask: memory is O(C·S·s·D) per chunk.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from nsa_core.config import NSAConfig
from nsa_core.ops.types import NSAAux

QUERY_CHUNK = 128
"""Queries processed together; bounds the gathered keys to QUERY_CHUNK·K per KV head."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64, everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def num_compressed_blocks(seq_len: int, config: NSAConfig) -> int:
    """Complete compressed blocks in a sequence: block i covers ``[i·d, i·d + l)``."""
    if seq_len < config.compress_block:
        return 0
    return (seq_len - config.compress_block) // config.compress_stride + 1


def num_selection_blocks(seq_len: int, config: NSAConfig) -> int:
    """Selection blocks ``[j·s, (j+1)·s)`` covering a sequence, the last one possibly partial."""
    return math.ceil(seq_len / config.select_block)


def compress_kv(k: Tensor, v: Tensor, config: NSAConfig) -> tuple[Tensor, Tensor]:
    """Mean-pool keys and values over every complete compression block.

    Args:
        k: keys ``[B, T, HKV, D]``.
        v: values ``[B, T, HKV, D]``.
        config: operator configuration (``compress_block``, ``compress_stride``).

    Returns:
        ``(k_cmp, v_cmp)``, each ``[B, NC, HKV, D]``. A trailing partial block is dropped: no query
        may see it, because a compressed block is visible only once complete.
    """
    l, d = config.compress_block, config.compress_stride
    nc = num_compressed_blocks(k.shape[1], config)
    if nc == 0:
        empty = k.new_zeros(k.shape[0], 0, *k.shape[2:])
        return empty, empty.clone()
    k_cmp = k.unfold(1, l, d).mean(-1)  # [B, NC, HKV, D]
    v_cmp = v.unfold(1, l, d).mean(-1)
    return k_cmp, v_cmp


def _masked_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Softmax attention of grouped queries over per-query key sets.

    Args:
        q: ``[B, C, HKV, G, D]``.
        k: ``[B, C or 1, HKV, K, D]``.
        v: ``[B, C or 1, HKV, K, D]``.
        valid: bool, broadcastable to ``[B, C, HKV, 1, K]``.
        scale: softmax scale.

    Returns:
        ``(o [B, C, HKV, G, D], lse [B, C, HKV, G])``. A query with no valid key gets ``o = 0`` and
        ``lse = -inf`` (the log of an empty sum), with finite gradients.
    """
    if k.shape[3] == 0:
        return torch.zeros_like(q), q.new_full(q.shape[:-1], float("-inf"))
    shared = k.shape[1] == 1 and q.shape[1] != 1
    if shared:
        scores = torch.einsum("bchgd,bhkd->bchgk", q, k[:, 0]) * scale
    else:
        scores = torch.einsum("bchgd,bchkd->bchgk", q, k) * scale
    scores = scores.masked_fill(~valid, float("-inf"))
    row_max = scores.amax(-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(scores - row_max)
    denom = p.sum(-1, keepdim=True)
    has_key = denom > 0
    safe_denom = torch.where(has_key, denom, torch.ones_like(denom))
    pv = torch.einsum("bchgk,bhkd->bchgd", p, v[:, 0]) if shared else torch.einsum("bchgk,bchkd->bchgd", p, v)
    o = pv / safe_denom
    lse = torch.where(has_key, row_max + torch.log(safe_denom), torch.full_like(denom, float("-inf")))
    return o, lse.squeeze(-1)


def _grouped(q: Tensor, num_kv_heads: int) -> Tensor:
    """``[B, T, HQ, D] -> [B, T, HKV, G, D]`` with query head ``h`` in group ``h // G``."""
    B, T, HQ, D = q.shape
    return q.reshape(B, T, num_kv_heads, HQ // num_kv_heads, D)


def _ungrouped(o: Tensor) -> Tensor:
    """``[B, T, HKV, G, ...] -> [B, T, HQ, ...]``."""
    return o.flatten(2, 3)


def _chunks(seq_len: int) -> list[tuple[int, int]]:
    return [(start, min(start + QUERY_CHUNK, seq_len)) for start in range(0, seq_len, QUERY_CHUNK)]


def _as_blocks(x: Tensor, block: int) -> Tensor:
    """``[B, T, HKV, D] -> [B, NS, HKV, block, D]``, zero-padding a trailing partial block."""
    B, T, HKV, D = x.shape
    padded = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, -T % block))
    return padded.view(B, -1, block, HKV, D).transpose(2, 3)


def _gather_blocks(blocks: Tensor, idx: Tensor) -> Tensor:
    """Gather ``blocks [B, NS, HKV, s, D]`` at block ids ``idx [B, C, HKV, S]`` -> ``[B, C, HKV, S·s, D]``."""
    B, _, HKV, _, _ = blocks.shape
    batch = torch.arange(B, device=idx.device).view(B, 1, 1, 1)
    head = torch.arange(HKV, device=idx.device).view(1, 1, HKV, 1)
    return blocks[batch, idx.clamp(min=0), head].flatten(3, 4)


def compression_attention(
    q: Tensor, k_cmp: Tensor, v_cmp: Tensor, config: NSAConfig, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Attention of every query over the compressed blocks that are complete at its position.

    Block i (covering ``[i·d, i·d + l)``) is visible to query t iff ``i·d + l <= t + 1``.

    Args:
        q: queries ``[B, T, HQ, D]``.
        k_cmp: compressed keys ``[B, NC, HKV, D]`` from :func:`compress_kv`.
        v_cmp: compressed values ``[B, NC, HKV, D]``.
        config: operator configuration.
        scale: softmax scale; ``None`` uses ``config.softmax_scale(D)``.

    Returns:
        ``(o [B, T, HQ, D], lse [B, T, HQ])``; queries that see no block get 0 and ``-inf``.
    """
    scale = config.softmax_scale(q.shape[-1]) if scale is None else scale
    HKV, nc = k_cmp.shape[2], k_cmp.shape[1]
    qg = _grouped(q, HKV)
    block_last = torch.arange(nc, device=q.device) * config.compress_stride + config.compress_block - 1
    kc, vc = k_cmp.transpose(1, 2).unsqueeze(1), v_cmp.transpose(1, 2).unsqueeze(1)  # [B, 1, HKV, NC, D]
    outs, lses = [], []
    for start, end in _chunks(q.shape[1]):
        t = torch.arange(start, end, device=q.device)
        valid = (block_last[None, :] <= t[:, None]).view(1, end - start, 1, 1, nc)
        o, lse = _masked_attention(qg[:, start:end], kc, vc, valid, scale)
        outs.append(o)
        lses.append(lse)
    return _ungrouped(torch.cat(outs, 1)), _ungrouped(torch.cat(lses, 1))


def compression_to_selection_weights(nc: int, ns: int, config: NSAConfig, device: torch.device | None = None) -> Tensor:
    """Overlap weights ``W [NC, NS]`` mapping compression probabilities onto selection blocks.

    ``W[i, j] = |[i·d, i·d + l) ∩ [j·s, (j+1)·s)| / d``: the overlap in stride units, the general
    geometry of the NSA paper (Eq. 9). For ``l = d = s`` it is the identity; for ``l=32, d=16,
    s=64`` block j gets weights 1, 2, 2, 2, 1 from compressed blocks ``4j-1 … 4j+3``.
    """
    i = torch.arange(nc, device=device, dtype=torch.float64).unsqueeze(1) * config.compress_stride
    j = torch.arange(ns, device=device, dtype=torch.float64).unsqueeze(0) * config.select_block
    overlap = torch.minimum(i + config.compress_block, j + config.select_block) - torch.maximum(i, j)
    return overlap.clamp(min=0) / config.compress_stride


@torch.no_grad()
def selection_scores(
    q: Tensor, k_cmp: Tensor, lse_cmp: Tensor, config: NSAConfig, scale: float | None = None
) -> Tensor:
    """Block importance shared by the G query heads of each KV head (NSA Eq. 9-10).

    The compression attention probabilities ``exp(q·k_cmp·scale - lse)`` of the visible blocks are
    mapped onto selection blocks with :func:`compression_to_selection_weights` and summed over the
    heads of a group. Selection is discrete, so no gradient flows through the scores.

    Args:
        q: queries ``[B, T, HQ, D]``.
        k_cmp: compressed keys ``[B, NC, HKV, D]``.
        lse_cmp: compression log-sum-exp ``[B, T, HQ]`` from :func:`compression_attention`.
        config: operator configuration.
        scale: softmax scale; ``None`` uses ``config.softmax_scale(D)``.

    Returns:
        Scores ``[B, T, HKV, NS]`` in the compute dtype.
    """
    scale = config.softmax_scale(q.shape[-1]) if scale is None else scale
    B, T, HQ, _ = q.shape
    HKV, nc = k_cmp.shape[2], k_cmp.shape[1]
    ns = num_selection_blocks(T, config)
    weights = compression_to_selection_weights(nc, ns, config, q.device).to(q.dtype)
    block_last = torch.arange(nc, device=q.device) * config.compress_stride + config.compress_block - 1
    qg, lg = _grouped(q, HKV), lse_cmp.reshape(B, T, HKV, HQ // HKV)
    scores = []
    for start, end in _chunks(T):
        t = torch.arange(start, end, device=q.device)
        logits = torch.einsum("bchgd,bnhd->bchgn", qg[:, start:end], k_cmp) * scale
        p = torch.exp(logits - lg[:, start:end, ..., None])
        p = p.masked_fill(~(block_last[None, :] <= t[:, None]).view(1, end - start, 1, 1, nc), 0.0)
        scores.append(p.sum(3) @ weights)
    return torch.cat(scores, 1)


def select_blocks(scores: Tensor, config: NSAConfig) -> Tensor:
    """Exact top-n selection blocks per query and KV head, with forced blocks.

    Only blocks that start at or before the query (``j·s <= t``) are candidates. The first
    ``forced_initial`` blocks and the ``forced_local`` most recent ones (the query's own block
    ``t // s`` and the ones before it) are always selected and count inside ``n``; the rest are
    filled by descending score, ties going to the more recent block. With fewer candidates than
    ``n`` all of them are selected.

    Args:
        scores: block importance ``[B, T, HKV, NS]``.
        config: operator configuration.

    Returns:
        int32 block indices ``[B, T, HKV, n]`` in ascending order, unfilled slots ``-1`` at the end.
    """
    B, T, HKV, ns = scores.shape
    n = config.num_selected
    j = torch.arange(ns, device=scores.device)
    current = torch.arange(T, device=scores.device) // config.select_block
    visible = j[None, :] <= current[:, None]  # [T, NS]
    forced = (j[None, :] < config.forced_initial) | (j[None, :] > current[:, None] - config.forced_local)
    key = torch.where((forced & visible)[None, :, None, :], torch.inf, scores.double())
    key = torch.where(visible[None, :, None, :], key, -torch.inf)
    _, order = torch.sort(key.flip(-1), dim=-1, descending=True, stable=True)
    top = (ns - 1 - order)[..., : min(n, ns)]
    chosen_key = torch.gather(key, -1, top)
    top = torch.where(chosen_key == -torch.inf, ns, top).sort(-1).values
    top = torch.where(top == ns, -1, top)
    if top.shape[-1] < n:
        top = torch.cat([top, top.new_full((B, T, HKV, n - top.shape[-1]), -1)], -1)
    return top.to(torch.int32)


def _compact_slots(idx: Tensor) -> Tensor:
    """Move empty slots (-1) last and drop the columns that are empty in every row of the chunk."""
    used = int((idx >= 0).sum(-1).max()) if idx.numel() else 0
    empty_last = idx.masked_fill(idx < 0, torch.iinfo(idx.dtype).max).sort(-1).values[..., : max(used, 1)]
    return empty_last.masked_fill(empty_last == torch.iinfo(idx.dtype).max, -1)


def selection_attention(
    q: Tensor, k: Tensor, v: Tensor, block_indices: Tensor, config: NSAConfig, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Attention over the tokens of the selected blocks, with a token-level causal mask.

    Args:
        q: queries ``[B, T, HQ, D]``.
        k: keys ``[B, T, HKV, D]``.
        v: values ``[B, T, HKV, D]``.
        block_indices: ``[B, T, HKV, S]`` block ids, ``-1`` for an empty slot; no id may repeat in a row.
        config: operator configuration (``select_block``).
        scale: softmax scale; ``None`` uses ``config.softmax_scale(D)``.

    Returns:
        ``(o [B, T, HQ, D], lse [B, T, HQ])``.
    """
    scale = config.softmax_scale(q.shape[-1]) if scale is None else scale
    T, HKV, s = q.shape[1], k.shape[2], config.select_block
    qg = _grouped(q, HKV)
    k_blocks, v_blocks = _as_blocks(k, s), _as_blocks(v, s)  # [B, NS, HKV, s, D]
    offsets = torch.arange(s, device=q.device)
    outs, lses = [], []
    for start, end in _chunks(T):
        idx = _compact_slots(block_indices[:, start:end].long())  # [B, C, HKV, S' <= S]
        positions = (idx[..., None] * s + offsets).flatten(-2)  # [B, C, HKV, S'·s]
        t = torch.arange(start, end, device=q.device).view(1, end - start, 1, 1)
        valid = (idx[..., None] >= 0).expand(*idx.shape, s).flatten(-2) & (positions <= t)
        o, lse = _masked_attention(
            qg[:, start:end], _gather_blocks(k_blocks, idx), _gather_blocks(v_blocks, idx), valid.unsqueeze(3), scale
        )
        outs.append(o)
        lses.append(lse)
    return _ungrouped(torch.cat(outs, 1)), _ungrouped(torch.cat(lses, 1))


def window_attention(
    q: Tensor, k: Tensor, v: Tensor, config: NSAConfig, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Sliding-window attention over the ``w`` keys ``[t - w + 1, t]`` (FlashAttention ``window_size=(w-1, 0)``).

    Args:
        q: queries ``[B, T, HQ, D]``.
        k: keys ``[B, T, HKV, D]``.
        v: values ``[B, T, HKV, D]``.
        config: operator configuration (``window``).
        scale: softmax scale; ``None`` uses ``config.softmax_scale(D)``.

    Returns:
        ``(o [B, T, HQ, D], lse [B, T, HQ])``.
    """
    scale = config.softmax_scale(q.shape[-1]) if scale is None else scale
    T, HKV, w = q.shape[1], k.shape[2], config.window
    qg = _grouped(q, HKV)
    outs, lses = [], []
    for start, end in _chunks(T):
        first = max(0, start - w + 1)
        t = torch.arange(start, end, device=q.device)[:, None]
        pos = torch.arange(first, end, device=q.device)[None, :]
        valid = ((pos <= t) & (pos > t - w)).view(1, end - start, 1, 1, end - first)
        band_k = k[:, first:end].transpose(1, 2).unsqueeze(1)  # [B, 1, HKV, K, D]
        band_v = v[:, first:end].transpose(1, 2).unsqueeze(1)
        o, lse = _masked_attention(qg[:, start:end], band_k, band_v, valid, scale)
        outs.append(o)
        lses.append(lse)
    return _ungrouped(torch.cat(outs, 1)), _ungrouped(torch.cat(lses, 1))


def _nsa_one_batch(
    q: Tensor, k: Tensor, v: Tensor, gates: Tensor, config: NSAConfig, block_indices: Tensor | None
) -> tuple[Tensor, NSAAux]:
    scale = config.softmax_scale(q.shape[-1])
    aux = NSAAux()
    need_cmp = config.enabled("cmp") or (config.enabled("slc") and block_indices is None)
    if need_cmp:
        k_cmp, v_cmp = compress_kv(k, v, config)
        o_cmp, lse_cmp = compression_attention(q, k_cmp, v_cmp, config, scale)
        if config.enabled("cmp"):
            aux.outputs["cmp"], aux.lse["cmp"] = o_cmp, lse_cmp
    if config.enabled("slc"):
        if block_indices is None:
            aux.block_scores = selection_scores(q, k_cmp, lse_cmp, config, scale)
            block_indices = select_blocks(aux.block_scores, config)
        aux.block_indices = block_indices
        aux.outputs["slc"], aux.lse["slc"] = selection_attention(q, k, v, block_indices, config, scale)
    if config.enabled("swd"):
        aux.outputs["swd"], aux.lse["swd"] = window_attention(q, k, v, config, scale)
    gate_column = {"cmp": 0, "slc": 1, "swd": 2}
    o = sum(gates[..., gate_column[b], None] * aux.outputs[b] for b in config.branches)
    return o, aux


def nsa_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gates: Tensor,
    config: NSAConfig,
    *,
    cu_seqlens: Tensor | None = None,
    block_indices: Tensor | None = None,
    return_aux: bool = False,
) -> Tensor | tuple[Tensor, NSAAux]:
    """Gated sum of the enabled branches; the ``reference`` backend of :func:`nsa_core.nsa_attention`.

    Inputs are assumed validated (see ``nsa_attention`` for shapes). Packed sequences given by
    ``cu_seqlens`` are processed one at a time, so they never see each other; block ids are
    relative to each sequence's start. Aux tensors of packed sequences are concatenated along T,
    block scores zero-padded to the longest sequence's NS.
    """
    out_dtype = q.dtype
    dtype = compute_dtype(q.dtype)
    q, k, v, gates = (x.to(dtype) for x in (q, k, v, gates))
    if cu_seqlens is None:
        o, aux = _nsa_one_batch(q, k, v, gates, config, block_indices)
        return (o.to(out_dtype), aux) if return_aux else o.to(out_dtype)
    bounds = cu_seqlens.tolist()
    pieces = []
    for start, end in itertools.pairwise(bounds):
        if end == start:
            continue
        part = slice(start, end)
        indices = None if block_indices is None else block_indices[:, part]
        pieces.append(_nsa_one_batch(q[:, part], k[:, part], v[:, part], gates[:, part], config, indices))
    o = torch.cat([p[0] for p in pieces], 1) if pieces else q.new_zeros(q.shape)
    if not return_aux:
        return o.to(out_dtype)
    return o.to(out_dtype), NSAAux.concat([p[1] for p in pieces])

"""Hybrid attention of VideoNSA clean mode (spec §5.2): NSA on vision rows, dense GQA on text rows.

Shape legend: B batch, TQ query rows of this call, TK keys (cached + new), HQ query heads,
HKV key/value heads, G = HQ / HKV (query head h reads KV head h // G), D head dim, C hidden size,
N packed vision keys, M vision query rows, NT text rows per sample (padded).

Queries and keys arrive already projected and rotated (M-RoPE is applied before the split, as in
stock Qwen2.5-VL), so every branch sees rotated vectors. Neither branch runs over the full length:
text rows are gathered and attend densely; vision rows are compacted per sample into their vision
subsequence and run through :func:`nsa_core.nsa_attention` as packed varlen sequences, so vision
rows never read text keys and samples never see each other. Outputs are scattered back to their rows;
padding rows get 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from nsa_core.config import NSAConfig
from nsa_core.layers.routing import TokenRouting, gather_text_rows, pack_vision
from nsa_core.ops import nsa_attention

GateFn = Callable[[Tensor], Tensor]
"""Maps gate inputs ``[M, C]`` to gates ``[M, HQ, 3]`` in [0, 1], order (cmp, slc, swd)."""


def dense_rows_attention(
    q: Tensor, k: Tensor, v: Tensor, rows: Tensor, row_valid: Tensor, key_valid: Tensor | None, scale: float
) -> Tensor:
    """Causal GQA for selected query rows over all earlier, non-padding keys.

    Args:
        q: queries of those rows ``[B, NT, HQ, D]``.
        k: keys ``[B, TK, HKV, D]``.
        v: values ``[B, TK, HKV, D]``.
        rows: long ``[B, NT]`` query row of each gathered query; row i sits at key position ``TK - TQ + i``,
            so ``rows`` must already include that offset (see :func:`hybrid_attention`).
        row_valid: bool ``[B, NT]``; invalid rows see every key (their output is meaningless and discarded).
        key_valid: bool ``[B, TK]`` non-padding keys, or ``None``.
        scale: softmax scale.

    Returns:
        ``[B, NT, HQ, D]``.
    """
    TK = k.shape[1]
    allowed = torch.arange(TK, device=q.device)[None, None, :] <= rows[:, :, None]  # [B, NT, TK]
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]
    allowed = allowed | ~row_valid[:, :, None]
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=allowed[:, None],
        scale=scale,
        enable_gqa=True,
    )
    return o.transpose(1, 2)


def hybrid_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gate_input: Tensor,
    gate_fn: GateFn,
    routing: TokenRouting,
    config: NSAConfig,
    *,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """NSA for vision query rows over their sample's vision subsequence, dense causal GQA for text rows.

    Args:
        q: rotated queries of this call ``[B, TQ, HQ, D]``.
        k: rotated keys, cache included ``[B, TK, HKV, D]``; query row i is key position ``TK - TQ + i``.
        v: values ``[B, TK, HKV, D]``.
        gate_input: attention-module inputs of this call ``[B, TQ, C]``; gates are computed for vision rows only.
        gate_fn: gate inputs ``[M, C]`` -> gates ``[M, HQ, 3]``.
        routing: vision/text split and padding of the keys ``[B, TK]``.
        config: NSA hyper-parameters for the vision rows.
        scale: softmax scale for both branches; ``None`` uses ``config.softmax_scale(D)``.
        backend: NSA backend name passed to :func:`nsa_core.nsa_attention`.

    Returns:
        ``[B, TQ, HQ, D]``: NSA output on vision rows, dense output on text rows, 0 on padding rows.

    Raises:
        ValueError: when shapes disagree; the message names the argument.
    """
    B, TQ, HQ, D = q.shape
    if k.dim() != 4 or k.shape[0] != B or k.shape[3] != D or v.shape != k.shape:
        raise ValueError(f"k and v must be [B={B}, TK, HKV, D={D}], got k {tuple(k.shape)} and v {tuple(v.shape)}")
    TK = k.shape[1]
    if TK < TQ:
        raise ValueError(f"k has {TK} positions but q has {TQ} rows; the keys must include the queries")
    if tuple(routing.key_is_vision.shape) != (B, TK):
        raise ValueError(f"routing.key_is_vision must be [B, TK] = {(B, TK)}, got {tuple(routing.key_is_vision.shape)}")
    if gate_input.shape[:2] != (B, TQ):
        raise ValueError(f"gate_input must be [B={B}, TQ={TQ}, C], got {tuple(gate_input.shape)}")
    scale = config.softmax_scale(D) if scale is None else scale
    out = q.new_zeros(B, TQ, HQ, D)

    rows, row_valid = gather_text_rows(routing.query_is_text(TQ))
    if rows.shape[1] > 0:
        q_text = q.gather(1, rows[:, :, None, None].expand(-1, -1, HQ, D))  # [B, NT, HQ, D]
        o_text = dense_rows_attention(q_text, k, v, rows + (TK - TQ), row_valid, routing.key_valid, scale)
        batch = torch.arange(B, device=q.device)[:, None].expand_as(rows)
        out = out.index_put((batch[row_valid], rows[row_valid]), o_text[row_valid])

    packing = pack_vision(routing, TQ)
    if packing.query_slot.numel() > 0:
        N = packing.key_batch.numel()
        k_vis = k[packing.key_batch, packing.key_pos][None]  # [1, N, HKV, D]
        v_vis = v[packing.key_batch, packing.key_pos][None]
        q_rows = q[packing.query_batch, packing.query_row]  # [M, HQ, D]
        g_rows = gate_fn(gate_input[packing.query_batch, packing.query_row]).to(q.dtype)  # [M, HQ, 3]
        # Vision keys cached by an earlier call have no query here; their zero rows are causal no-ops.
        q_vis = q.new_zeros(N, HQ, D).index_put((packing.query_slot,), q_rows)[None]
        g_vis = q.new_zeros(N, HQ, 3).index_put((packing.query_slot,), g_rows)[None]
        scaled = config if config.softmax_scale(D) == scale else config.model_copy(update={"scale": scale})
        o_vis = nsa_attention(q_vis, k_vis, v_vis, g_vis, scaled, cu_seqlens=packing.cu_seqlens, backend=backend)
        out = out.index_put((packing.query_batch, packing.query_row), o_vis[0, packing.query_slot])
    return out

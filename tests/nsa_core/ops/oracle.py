"""Brute-force float64 oracle of clean-mode NSA, written independently of ``nsa_core.ops.reference``.

Every branch is a dense softmax over an explicit boolean key mask built with Python loops over
positions, so it shares no indexing logic with the reference it checks. Only for small T.

Shape legend: B batch, T tokens, HQ/HKV heads, G = HQ/HKV, D head dim, NC/NS block counts.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_softmax_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Dense attention per query head over an explicit mask.

    Args:
        q: ``[B, T, HQ, D]``.
        k: ``[B, K, HKV, D]``.
        v: ``[B, K, HKV, D]``.
        mask: bool ``[B, HKV, T, K]``, True where query t may read key j.
        scale: softmax scale.

    Returns:
        ``(o [B, T, HQ, D], lse [B, T, HQ])`` with 0 and -inf for rows without keys.
    """
    q, k, v = q.double(), k.double(), v.double()
    B, T, HQ, D = q.shape
    G = HQ // k.shape[2]
    o = torch.zeros(B, T, HQ, D, dtype=torch.float64)
    lse = torch.full((B, T, HQ), float("-inf"), dtype=torch.float64)
    for h in range(HQ):
        kv_head = h // G
        logits = torch.einsum("btd,bkd->btk", q[:, :, h], k[:, :, kv_head]) * scale
        m = mask[:, kv_head]
        for b in range(B):
            for t in range(T):
                keys = m[b, t].nonzero().flatten()
                if len(keys) == 0:
                    continue
                row = logits[b, t, keys]
                lse[b, t, h] = torch.logsumexp(row, 0)
                o[b, t, h] = torch.softmax(row, 0) @ v[b, keys, kv_head]
    return o, lse


def compress(x: Tensor, l: int, d: int) -> Tensor:
    """Mean of every complete block ``[i·d, i·d + l)``, ``[B, NC, H, D]``."""
    starts = list(range(0, x.shape[1] - l + 1, d))
    if not starts:
        return x.new_zeros(x.shape[0], 0, *x.shape[2:]).double()
    return torch.stack([x[:, s : s + l].double().mean(1) for s in starts], 1)


def compression_mask(B: int, HKV: int, T: int, NC: int, l: int, d: int) -> Tensor:
    mask = torch.zeros(B, HKV, T, NC, dtype=torch.bool)
    for t in range(T):
        for i in range(NC):
            mask[..., t, i] = i * d + l - 1 <= t
    return mask


def overlap_weights(NC: int, NS: int, l: int, d: int, s: int) -> Tensor:
    """Token-by-token overlap count of compressed block i and selection block j, in stride units."""
    w = torch.zeros(NC, NS, dtype=torch.float64)
    for i in range(NC):
        for j in range(NS):
            w[i, j] = len(set(range(i * d, i * d + l)) & set(range(j * s, (j + 1) * s))) / d
    return w


def importance(q: Tensor, k_cmp: Tensor, lse: Tensor, mask: Tensor, weights: Tensor, scale: float) -> Tensor:
    """``[B, T, HKV, NS]``: group-summed compression probabilities mapped onto selection blocks."""
    B, T, HQ, _ = q.shape
    HKV = k_cmp.shape[2]
    G = HQ // HKV
    scores = torch.zeros(B, T, HKV, weights.shape[1], dtype=torch.float64)
    for h in range(HQ):
        logits = torch.einsum("btd,bnd->btn", q[:, :, h].double(), k_cmp[:, :, h // G].double()) * scale
        p = torch.exp(logits - lse[:, :, h, None]) * mask[:, h // G]
        scores[:, :, h // G] += torch.nan_to_num(p, nan=0.0) @ weights
    return scores


def top_blocks(scores: Tensor, s: int, n: int, forced_initial: int, forced_local: int) -> list:
    """Nested lists ``[B][T][HKV]`` of selected block ids, ascending."""
    B, T, HKV, _ = scores.shape
    out = []
    for b in range(B):
        per_t = []
        for t in range(T):
            current = t // s
            per_h = []
            for h in range(HKV):
                candidates = list(range(current + 1))
                forced = {j for j in candidates if j < forced_initial or j > current - forced_local}
                rest = sorted(
                    (j for j in candidates if j not in forced), key=lambda j: (-float(scores[b, t, h, j]), -j)
                )
                chosen = sorted(forced) + rest
                per_h.append(sorted(chosen[:n]))
            per_t.append(per_h)
        out.append(per_t)
    return out


def selection_mask(blocks: list, T: int, HKV: int, s: int) -> Tensor:
    B = len(blocks)
    mask = torch.zeros(B, HKV, T, T, dtype=torch.bool)
    for b in range(B):
        for t in range(T):
            for h in range(HKV):
                for j in blocks[b][t][h]:
                    if j < 0:
                        continue
                    mask[b, h, t, j * s : min((j + 1) * s, t + 1)] = True
    return mask


def window_mask(B: int, HKV: int, T: int, w: int) -> Tensor:
    mask = torch.zeros(B, HKV, T, T, dtype=torch.bool)
    for t in range(T):
        mask[..., t, max(0, t - w + 1) : t + 1] = True
    return mask


def nsa_oracle(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gates: Tensor,
    l: int,
    d: int,
    s: int,
    n: int,
    w: int,
    forced_initial: int = 1,
    forced_local: int = 2,
    branches=("cmp", "slc", "swd"),
) -> dict:
    """All branches and the gated output of one batch of unpacked sequences, in float64."""
    B, T, _, D = q.shape
    HKV = k.shape[2]
    scale = D**-0.5
    k_cmp, v_cmp = compress(k, l, d), compress(v, l, d)
    NC, NS = k_cmp.shape[1], -(-T // s)
    cmask = compression_mask(B, HKV, T, NC, l, d)
    o_cmp, lse_cmp = masked_softmax_attention(q, k_cmp, v_cmp, cmask, scale)
    scores = importance(q, k_cmp, lse_cmp, cmask, overlap_weights(NC, NS, l, d, s), scale)
    blocks = top_blocks(scores, s, n, forced_initial, forced_local)
    o_slc, lse_slc = masked_softmax_attention(q, k, v, selection_mask(blocks, T, HKV, s), scale)
    o_swd, lse_swd = masked_softmax_attention(q, k, v, window_mask(B, HKV, T, w), scale)
    outputs = {"cmp": o_cmp, "slc": o_slc, "swd": o_swd}
    column = {"cmp": 0, "slc": 1, "swd": 2}
    o = sum(gates[..., column[c], None].double() * outputs[c] for c in branches)
    return {
        "o": o,
        "outputs": outputs,
        "lse": {"cmp": lse_cmp, "slc": lse_slc, "swd": lse_swd},
        "scores": scores,
        "blocks": blocks,
    }

"""Public NSA operator: input validation and backend dispatch."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from nsa_core.config import NSAConfig
from nsa_core.ops.backends import resolve_backend
from nsa_core.ops.reference import num_selection_blocks
from nsa_core.ops.types import NSAAux


def _check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gates: Tensor,
    config: NSAConfig,
    cu_seqlens: Tensor | None,
    block_indices: Tensor | None,
) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape [B, T, H, D], got {tuple(x.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    B, T, HQ, D = q.shape
    if k.shape[0] != B or k.shape[1] != T or k.shape[3] != D:
        raise ValueError(f"k/v shape {tuple(k.shape)} must be [B={B}, T={T}, HKV, D={D}] to match q {tuple(q.shape)}")
    HKV = k.shape[2]
    if HKV == 0 or HQ % HKV != 0:
        raise ValueError(f"the query heads of q ({HQ}) must be a multiple of the KV heads of k/v ({HKV})")
    if not q.is_floating_point():
        raise ValueError(f"q must be a floating-point tensor, got {q.dtype}")
    for name, x in (("k", k), ("v", v), ("gates", gates)):
        if x.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but q has {q.dtype}; cast them to one dtype")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; move them to one device")
    if tuple(gates.shape) != (B, T, HQ, 3):
        raise ValueError(
            f"gates must have shape [B, T, HQ, 3] = {(B, T, HQ, 3)} (order cmp, slc, swd), got {tuple(gates.shape)}"
        )
    if cu_seqlens is not None:
        _check_cu_seqlens(cu_seqlens, B, T, q.device)
    if block_indices is not None:
        _check_block_indices(block_indices, B, T, HKV, config, cu_seqlens, q.device)


def _check_cu_seqlens(cu_seqlens: Tensor, B: int, T: int, device: torch.device) -> None:
    if B != 1:
        raise ValueError(f"cu_seqlens requires packed inputs with batch size 1, got B={B}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError("cu_seqlens must be a 1-D int32/int64 tensor [N + 1] of sequence boundaries")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {device}")
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != T:
        raise ValueError(f"cu_seqlens must start at 0 and end at T={T}, got {bounds[0]} … {bounds[-1]}")
    if any(b < a for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {bounds}")


def _check_block_indices(
    block_indices: Tensor,
    B: int,
    T: int,
    HKV: int,
    config: NSAConfig,
    cu_seqlens: Tensor | None,
    device: torch.device,
) -> None:
    if block_indices.dim() != 4 or tuple(block_indices.shape[:3]) != (B, T, HKV):
        raise ValueError(
            f"block_indices must have shape [B, T, HKV, n] = [{B}, {T}, {HKV}, n], got {tuple(block_indices.shape)}"
        )
    if block_indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"block_indices must be int32 or int64, got {block_indices.dtype}")
    if block_indices.device != device:
        raise ValueError(f"block_indices is on {block_indices.device} but q is on {device}")
    longest = T if cu_seqlens is None else int(cu_seqlens.diff().max())
    limit = num_selection_blocks(longest, config)
    if block_indices.numel() and (int(block_indices.min()) < -1 or int(block_indices.max()) >= limit):
        raise ValueError(
            f"block_indices must lie in [-1, {limit}) (-1 = empty slot), "
            f"got [{int(block_indices.min())}, {int(block_indices.max())}]"
        )
    ordered = block_indices.sort(-1).values
    if ((ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)).any():
        raise ValueError("block_indices repeats a block within one row; each block may be selected once")


def nsa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gates: Tensor,
    config: NSAConfig | None = None,
    *,
    cu_seqlens: Tensor | None = None,
    block_indices: Tensor | None = None,
    backend: str = "auto",
    return_aux: bool = False,
) -> Tensor | tuple[Tensor, NSAAux]:
    """Native sparse attention: ``o = g_cmp·o_cmp + g_slc·o_slc + g_swd·o_swd`` per query head.

    Clean-mode semantics (causal everywhere):

    - compression: attention over mean-pooled blocks ``[i·d, i·d + l)`` that are complete at the
      query (``i·d + l <= t + 1``); a query that sees none gets 0 from this branch;
    - selection: the compression probabilities are mapped onto ``s``-token blocks by overlap (NSA
      Eq. 9), summed over the ``G`` query heads of a KV head (Eq. 10, one block set per group) and
      the exact top ``n`` blocks with ``j·s <= t`` are kept, the first ``forced_initial`` and last
      ``forced_local`` blocks always included; attention then covers those blocks' tokens up to t;
    - window: attention over the ``w`` tokens ending at the query.

    Args:
        q: queries ``[B, T, HQ, D]``.
        k: keys ``[B, T, HKV, D]``; ``HQ`` must be a multiple of ``HKV``; query head h uses KV head ``h // G``.
        v: values ``[B, T, HKV, D]``.
        gates: branch gates ``[B, T, HQ, 3]`` in [0, 1], order (cmp, slc, swd); not renormalised.
        config: operator hyper-parameters; ``None`` uses VideoNSA's defaults.
        cu_seqlens: int ``[N + 1]`` boundaries of packed sequences (requires ``B == 1``); sequences never
            see each other and block ids restart at each sequence.
        block_indices: int ``[B, T, HKV, n']`` selected blocks overriding the computed selection (-1 = empty).
        backend: ``"auto"`` (fastest available for the device; ``NSA_BACKEND`` overrides), ``"reference"``,
            or another registered backend such as ``"triton"``.
        return_aux: also return an :class:`NSAAux` with per-branch outputs, log-sum-exps, the selected
            block indices and the block scores.

    Returns:
        ``o [B, T, HQ, D]`` in the dtype of q, or ``(o, aux)`` when ``return_aux`` is set.

    Raises:
        ValueError: when an argument has the wrong shape, dtype, device or values; the message names it.
    """
    config = NSAConfig() if config is None else config
    _check_inputs(q, k, v, gates, config, cu_seqlens, block_indices)
    implementation = resolve_backend(backend, q.device, q.dtype)
    return implementation.forward(
        q, k, v, gates, config, cu_seqlens=cu_seqlens, block_indices=block_indices, return_aux=return_aux
    )

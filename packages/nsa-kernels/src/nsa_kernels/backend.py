"""The ``triton`` backend of nsa-core, found through the ``nsa_core.backends`` entry point.

This module is the single place where nsa-kernels touches nsa-core, and only lazily: nsa-core calls
:func:`triton_backend` while loading its plugins, so nsa-core is present by then. The kernels
themselves never import nsa-core (kernels ← core).
"""

from __future__ import annotations

import math

import torch

from nsa_kernels.nsa import nsa_func


def _supports(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)


def forward(q, k, v, gates, config, *, cu_seqlens=None, block_indices=None, return_aux=False):
    """``nsa_reference``'s signature on the Triton kernels; ``config`` is an ``nsa_core.NSAConfig``."""
    from nsa_core.ops.types import NSAAux

    if config.compress_kind != "mean":
        raise ValueError(f"compress_kind={config.compress_kind!r} is not implemented by the triton backend")
    out = nsa_func(
        q, k, v, gates,
        compress_block=config.compress_block, compress_stride=config.compress_stride,
        select_block=config.select_block, num_selected=config.num_selected,
        forced_initial=config.forced_initial, forced_local=config.forced_local, window=config.window,
        branches=tuple(config.branches), scale=config.softmax_scale(q.shape[-1]),
        cu_seqlens=cu_seqlens, block_indices=block_indices, return_aux=return_aux,
    )  # fmt: skip
    if not return_aux:
        return out
    o, aux = out
    scores = aux["block_scores"]
    if scores is not None:
        longest = q.shape[1] if cu_seqlens is None else int(cu_seqlens.diff().max())
        scores = scores[..., : math.ceil(longest / config.select_block)]
    return o, NSAAux(outputs=aux["outputs"], lse=aux["lse"], block_indices=aux["block_indices"], block_scores=scores)


def triton_backend():
    """Zero-argument factory named by the entry point: the ``triton`` :class:`nsa_core.ops.backends.Backend`."""
    from nsa_core.ops.backends import Backend

    return Backend(name="triton", forward=forward, supports=_supports, priority=10)

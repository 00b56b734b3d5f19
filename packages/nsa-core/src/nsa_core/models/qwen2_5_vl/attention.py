"""The hybrid attention as a transformers attention function, registered as ``attn_implementation="videonsa"``.

Shape legend: B batch, TQ query rows, TK keys (cache included), HQ query heads, HKV KV heads, D head dim, C hidden.

Stock ``Qwen2_5_VLAttention.forward`` projects q/k/v, applies M-RoPE, updates the KV cache and then
calls the attention function selected by ``config._attn_implementation``; registering the hybrid
attention under a name reuses all of that unchanged. The routing (which rows are vision tokens, the
padding mask, the settings) and the gate inputs reach the function through the kwargs that the
stock modules forward, injected by the hooks of :mod:`nsa_core.models.qwen2_5_vl.convert`. Calls
without vision query rows (text-only inputs, decode steps) run stock ``sdpa`` on the stock mask, so
they are identical to stock Qwen2.5-VL under any NSA setting and decode is dense over the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from nsa_core.layers import GateFn, TokenRouting, hybrid_attention
from nsa_core.models.qwen2_5_vl.settings import ATTN_IMPLEMENTATION, VideoNSASettings


@dataclass(frozen=True)
class NSAForwardContext:
    """Per-forward routing shared by all LLM layers (passed as the ``nsa_context`` kwarg).

    Attributes:
        routing: vision/text split and padding of the keys ``[B, TK]``.
        settings: the model's NSA settings at the time of the call.
        has_vision_queries: whether any query row of this call is a vision token (decided once per forward).
    """

    routing: TokenRouting
    settings: VideoNSASettings
    has_vision_queries: bool


def _constant_gates(values: tuple[float, float, float], num_heads: int) -> GateFn:
    def gate_fn(hidden: Tensor) -> Tensor:
        gates = torch.tensor(values, dtype=hidden.dtype, device=hidden.device)
        return gates.expand(hidden.shape[0], num_heads, 3)

    return gate_fn


def videonsa_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    nsa_context: NSAForwardContext | None = None,
    nsa_gate_input: Tensor | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """Hybrid attention with the ``AttentionInterface`` signature.

    Args:
        module: the stock ``Qwen2_5_VLAttention`` (with an ``nsa_gate`` child after conversion).
        query: rotated queries ``[B, HQ, TQ, D]``.
        key: rotated keys from the cache ``[B, HKV, TK, D]`` (not repeated for GQA).
        value: values ``[B, HKV, TK, D]``.
        attention_mask: the stock ``sdpa`` mask ``[B, 1, TQ, TK]`` or ``None``; used only on the dense fallback,
            the hybrid path builds its masks from ``nsa_context`` (absolute causal order plus padding).
        scaling: softmax scale.
        dropout: attention dropout, used only on the dense fallback (Qwen2.5-VL trains with 0).
        nsa_context: routing of this forward; ``None`` runs the dense fallback.
        nsa_gate_input: the attention module's input ``[B, TQ, C]``, from which the gates are computed.
        **kwargs: the remaining stock kwargs, forwarded to the dense fallback.

    Returns:
        ``(output [B, TQ, HQ, D], None)``.
    """
    if nsa_context is None or not nsa_context.has_vision_queries:
        return ALL_ATTENTION_FUNCTIONS["sdpa"](
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if nsa_gate_input is None:
        raise ValueError("nsa_gate_input is missing: convert the model with convert_to_nsa(model) before running it")
    settings = nsa_context.settings
    if settings.fixed_gates is not None:
        gate_fn = _constant_gates(settings.fixed_gates, query.shape[1])
    elif hasattr(module, "nsa_gate"):
        gate_fn = module.nsa_gate
    else:
        raise ValueError("this attention module has no nsa_gate: convert the model with convert_to_nsa(model)")
    if torch.is_autocast_enabled(query.device.type):
        # Like sdpa under autocast: M-RoPE's fp32 cos/sin promote q and k to fp32, the kernels want bf16/fp16.
        dtype = torch.get_autocast_dtype(query.device.type)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    out = hybrid_attention(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        nsa_gate_input,
        gate_fn,
        nsa_context.routing,
        settings.nsa,
        scale=scaling,
        backend=settings.backend,
    )
    return out, None


def register_videonsa_attention() -> None:
    """Register the hybrid attention and its mask format (stock ``sdpa`` bool masks) under ``"videonsa"``."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, videonsa_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)

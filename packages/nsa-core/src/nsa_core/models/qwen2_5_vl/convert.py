"""Turn a loaded stock Qwen2.5-VL into VideoNSA: gates, routing hooks, the sparse/dense switch, run-time overrides.

Shape legend: B batch, TQ tokens of this call, TK keys (cache included), C hidden size.

Conversion adds an ``nsa_gate`` child to every LLM ``self_attn`` (so the gates are ordinary
parameters that ``save_pretrained`` writes and ``from_pretrained`` reads), stores the settings in
``config.nsa`` and installs three forward hooks; the vision tower is untouched:

1. on ``Qwen2_5_VLModel``: vision rows are the image/video placeholder positions of ``input_ids``
   (``config.image_token_id`` / ``video_token_id``; or the placeholder embeddings when only
   ``inputs_embeds`` is given), read before the vision features replace them;
2. on the language model: builds the per-forward :class:`NSAForwardContext` (keys' vision mask,
   cached positions included, and the 2-D padding mask) and passes it down as a kwarg that the stock
   decoder layers forward to their attention; a post-hook stores the keys' vision mask on the
   returned cache, so a later call with new vision rows knows which cached keys are vision;
3. on every ``self_attn``: passes the module's input as ``nsa_gate_input``, the gates' input.

Kwargs survive gradient checkpointing's recomputation, unlike module state. In ``dense`` mode the
hooks inject nothing and the stock attention runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Qwen2_5_VLModel

from nsa_core.config import NSAConfig
from nsa_core.layers import GateKind, NSAGate, TokenRouting
from nsa_core.models.qwen2_5_vl.attention import NSAForwardContext, register_videonsa_attention
from nsa_core.models.qwen2_5_vl.settings import ATTN_IMPLEMENTATION, CONFIG_KEY, VideoNSASettings

CACHE_ROUTING_ATTR = "nsa_key_is_vision"
"""Attribute of a KV cache holding the bool ``[B, TK]`` vision mask of its keys."""
_HOOKS_ATTR = "_nsa_hook_handles"


@dataclass
class _PendingVisionRows:
    rows: Tensor | None = None


def _vl_model(model: nn.Module) -> Qwen2_5_VLModel:
    if isinstance(model, Qwen2_5_VLModel):
        return model
    inner = getattr(model, "model", None)
    if isinstance(inner, Qwen2_5_VLModel):
        return inner
    raise ValueError(
        f"model must be a Qwen2_5_VLForConditionalGeneration or Qwen2_5_VLModel, got {type(model).__name__}"
    )


def _placeholder_rows(vl: Qwen2_5_VLModel, args: tuple, kwargs: dict[str, Any]) -> Tensor | None:
    """bool ``[B, TQ]``: image/video placeholder positions of this call."""
    ids = torch.tensor([vl.config.image_token_id, vl.config.video_token_id])
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    if input_ids is not None:
        return torch.isin(input_ids, ids.to(input_ids.device))
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        return None
    placeholders = vl.get_input_embeddings()(ids.to(embeds.device)).to(embeds.dtype)  # [2, C]
    return (embeds[:, :, None, :] == placeholders).all(-1).any(-1)


def _key_routing(query_is_vision: Tensor, kwargs: dict[str, Any]) -> tuple[TokenRouting, bool]:
    B, TQ = query_is_vision.shape
    has_vision = bool(query_is_vision.any())
    cache = kwargs.get("past_key_values")
    past = cache.get_seq_length() if cache is not None else 0
    key_is_vision = query_is_vision
    if past:
        earlier = getattr(cache, CACHE_ROUTING_ATTR, None)
        if earlier is None or tuple(earlier.shape) != (B, past):
            if has_vision:
                raise ValueError(
                    "past_key_values was filled without NSA routing (or reordered), so new vision rows cannot find "
                    "the earlier vision keys; run the vision tokens in a call whose cache came from this model"
                )
            earlier = query_is_vision.new_zeros(B, past)
        key_is_vision = torch.cat([earlier, query_is_vision], 1)
    mask = kwargs.get("attention_mask")
    key_valid = None
    if isinstance(mask, Tensor) and mask.dim() == 2:
        if tuple(mask.shape) != (B, past + TQ):
            raise ValueError(f"attention_mask must be [B, cached + new] = {(B, past + TQ)}, got {tuple(mask.shape)}")
        key_valid = mask.bool()
    elif mask is not None and has_vision:
        raise ValueError(
            "NSA routing needs a 2-D attention_mask [B, TK] (or None); 4-D masks and static caches are "
            "not supported with vision tokens"
        )
    return TokenRouting(key_is_vision, key_valid), has_vision


def _install_hooks(model: nn.Module, vl: Qwen2_5_VLModel) -> None:
    for handle in getattr(model, _HOOKS_ATTR, []):
        handle.remove()
    pending = _PendingVisionRows()
    top_config = model.config

    def capture(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        pending.rows = _placeholder_rows(vl, args, kwargs)

    def route(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        rows, pending.rows = pending.rows, None
        settings = VideoNSASettings.from_model_config(top_config)
        if rows is None or settings.attention != "nsa":
            return None
        routing, has_vision = _key_routing(rows, kwargs)
        return args, {**kwargs, "nsa_context": NSAForwardContext(routing, settings, has_vision)}

    def remember(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        context, cache = kwargs.get("nsa_context"), getattr(output, "past_key_values", None)
        if context is not None and cache is not None:
            setattr(cache, CACHE_ROUTING_ATTR, context.routing.key_is_vision)

    def pass_gate_input(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        if "nsa_context" not in kwargs:
            return None
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return args, {**kwargs, "nsa_gate_input": hidden}

    lm = vl.language_model
    handles = [
        vl.register_forward_pre_hook(capture, with_kwargs=True),
        lm.register_forward_pre_hook(route, with_kwargs=True),
        lm.register_forward_hook(remember, with_kwargs=True),
    ]
    handles += [layer.self_attn.register_forward_pre_hook(pass_gate_input, with_kwargs=True) for layer in lm.layers]
    setattr(model, _HOOKS_ATTR, handles)


def _attach_gates(vl: Qwen2_5_VLModel, settings: VideoNSASettings) -> None:
    text_config = vl.language_model.config
    for layer in vl.language_model.layers:
        attn = layer.self_attn
        existing = getattr(attn, "nsa_gate", None)
        if isinstance(existing, NSAGate) and (existing.kind, existing.temperature) == (
            settings.gate,
            settings.gate_temperature,
        ):
            continue
        gate = NSAGate(
            text_config.hidden_size, text_config.num_attention_heads, settings.gate, settings.gate_temperature
        )
        attn.nsa_gate = gate.to(device=attn.q_proj.weight.device, dtype=attn.q_proj.weight.dtype)


def _apply_attention_mode(model: nn.Module, settings: VideoNSASettings) -> None:
    name = ATTN_IMPLEMENTATION if settings.attention == "nsa" else settings.dense_implementation
    model.set_attn_implementation({"text_config": name})


def convert_to_nsa(
    model: nn.Module, nsa_config: NSAConfig | None = None, *, gate: GateKind | None = None, **settings: Any
) -> nn.Module:
    """Make a loaded stock Qwen2.5-VL a VideoNSA model, in place (idempotent; existing gates are kept).

    Args:
        model: ``Qwen2_5_VLForConditionalGeneration`` (or ``Qwen2_5_VLModel``).
        nsa_config: operator settings for the vision rows; ``None`` keeps the model's (VideoNSA defaults if new).
        gate: ``"mlp"`` (VideoNSA) or ``"linear"``; ``None`` keeps the model's. New gates start at ≈ 0.5.
        **settings: other :class:`VideoNSASettings` fields, e.g. ``attention="dense"`` or ``fixed_gates=(0.5,) * 3``.

    Returns:
        The same model, with gates, hooks, ``config.nsa`` and the attention implementation set.

    Raises:
        ValueError: for a model that is not Qwen2.5-VL or for invalid settings.
    """
    vl = _vl_model(model)
    register_videonsa_attention()
    changes = dict(settings)
    if nsa_config is not None:
        changes["nsa"] = nsa_config.model_dump(mode="json")
    if gate is not None:
        changes["gate"] = gate
    raw = {**VideoNSASettings.from_model_config(model.config).to_config_dict(), **changes}
    resolved = VideoNSASettings.model_validate(raw)
    _attach_gates(vl, resolved)
    setattr(model.config, CONFIG_KEY, resolved.to_config_dict())
    _install_hooks(model, vl)
    _apply_attention_mode(model, resolved)
    return model


def get_nsa_settings(model: nn.Module) -> VideoNSASettings:
    """The settings of a converted model, read from ``config.nsa``."""
    if getattr(model.config, CONFIG_KEY, None) is None:
        raise ValueError("model has no NSA settings: call convert_to_nsa(model) first")
    return VideoNSASettings.from_model_config(model.config)


def update_nsa_settings(model: nn.Module, **changes: Any) -> VideoNSASettings:
    """Change NSA settings at run time without reloading, e.g. ``window=512, num_selected=16, branches=("slc",)``.

    Keys of :class:`NSAConfig` update the operator settings; others (``attention``, ``fixed_gates``,
    ``backend``, ``dense_implementation``) the model settings. Takes effect at the next forward.

    Raises:
        ValueError: for unknown or structural keys and invalid values; the message names them.
    """
    updated = get_nsa_settings(model).updated(**changes)
    setattr(model.config, CONFIG_KEY, updated.to_config_dict())
    _apply_attention_mode(model, updated)
    return updated


def set_attention_mode(model: nn.Module, mode: str) -> VideoNSASettings:
    """Switch a converted model between ``"nsa"`` (hybrid) and ``"dense"`` (stock attention, gates unused).

    ``"dense"`` on NSA-trained weights is VideoNSA's dense transfer; ``"nsa"`` on dense weights is
    "NSA at test" (gates at their ≈ 0.5 initialisation, or ``update_nsa_settings(model, fixed_gates=...)``).
    """
    if mode not in ("nsa", "dense"):
        raise ValueError(f"mode must be 'nsa' or 'dense', got {mode!r}")
    return update_nsa_settings(model, attention=mode)

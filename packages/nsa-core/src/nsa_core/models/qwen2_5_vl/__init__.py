"""VideoNSA on stock transformers ``Qwen2_5_VLForConditionalGeneration``: registration and hooks, no copied modeling.

Entry points: :func:`convert_to_nsa` (a loaded model becomes VideoNSA), :func:`load_nsa_model` (a
local checkpoint, dense or NSA), :func:`set_attention_mode` (``"nsa"`` / ``"dense"``) and
:func:`update_nsa_settings` (run-time budget and branch overrides).
"""

from nsa_core.models.qwen2_5_vl.attention import NSAForwardContext, register_videonsa_attention, videonsa_attention
from nsa_core.models.qwen2_5_vl.convert import (
    CACHE_ROUTING_ATTR,
    convert_to_nsa,
    get_nsa_settings,
    set_attention_mode,
    update_nsa_settings,
)
from nsa_core.models.qwen2_5_vl.loading import load_nsa_model
from nsa_core.models.qwen2_5_vl.settings import ATTN_IMPLEMENTATION, CONFIG_KEY, VideoNSASettings

__all__ = [
    "ATTN_IMPLEMENTATION",
    "CACHE_ROUTING_ATTR",
    "CONFIG_KEY",
    "NSAForwardContext",
    "VideoNSASettings",
    "convert_to_nsa",
    "get_nsa_settings",
    "load_nsa_model",
    "register_videonsa_attention",
    "set_attention_mode",
    "update_nsa_settings",
    "videonsa_attention",
]

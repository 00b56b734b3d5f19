"""NSA operator contract and readable reference, the hybrid attention layer and the Qwen2.5-VL integration."""

from nsa_core.config import BRANCHES, NSAConfig
from nsa_core.ops import NSAAux, nsa_attention

__all__ = ["BRANCHES", "NSAAux", "NSAConfig", "nsa_attention"]

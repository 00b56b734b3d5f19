"""Functional NSA: the public operator, its per-branch reference functions and the backend registry."""

from nsa_core.ops.attention import nsa_attention
from nsa_core.ops.backends import Backend, available_backends, register_backend, resolve_backend
from nsa_core.ops.reference import (
    compress_kv,
    compression_attention,
    compression_to_selection_weights,
    num_compressed_blocks,
    num_selection_blocks,
    select_blocks,
    selection_attention,
    selection_scores,
    window_attention,
)
from nsa_core.ops.types import NSAAux

__all__ = [
    "Backend",
    "NSAAux",
    "available_backends",
    "compress_kv",
    "compression_attention",
    "compression_to_selection_weights",
    "nsa_attention",
    "num_compressed_blocks",
    "num_selection_blocks",
    "register_backend",
    "resolve_backend",
    "select_blocks",
    "selection_attention",
    "selection_scores",
    "window_attention",
]

"""Typed, frozen configuration of the NSA operator.

Symbols follow the NSA paper (arXiv 2502.11089): compression block ``l`` and stride ``d``,
selection block ``s`` (the paper's ``l'``), ``n`` selected blocks, window ``w``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Branch = Literal["cmp", "slc", "swd"]
BRANCHES: tuple[Branch, ...] = ("cmp", "slc", "swd")
"""Branch order used everywhere, including the last axis of the gates."""


class NSAConfig(BaseModel):
    """Hyper-parameters of native sparse attention (clean mode).

    The defaults are VideoNSA's: mean-pooled 64-token compression blocks, 32 selected 64-token
    blocks of which the first block and the two most recent ones are forced, and a 256-token
    sliding window.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    compress_block: int = Field(64, ge=1)
    """Compression block length ``l`` in tokens."""
    compress_stride: int = Field(64, ge=1)
    """Compression stride ``d`` in tokens; ``d < l`` gives overlapping compressed blocks."""
    compress_kind: Literal["mean"] = "mean"
    """How a block of keys/values becomes one compressed key/value (φ). Only ``mean`` for now."""
    select_block: int = Field(64, ge=1)
    """Selection block length ``s`` (the paper's ``l'``)."""
    num_selected: int = Field(32, ge=1)
    """Selected blocks per query and KV head, ``n``. Exact: never rounded to a power of two."""
    forced_initial: int = Field(1, ge=0)
    """Leading blocks (0, 1, ...) always selected; counted inside ``num_selected``."""
    forced_local: int = Field(2, ge=0)
    """Most recent blocks (the query's own block, then the previous ones) always selected; inside ``num_selected``."""
    window: int = Field(256, ge=1)
    """Sliding-window length ``w``: the query and the ``w - 1`` tokens before it."""
    branches: tuple[Branch, ...] = BRANCHES
    """Enabled branches; a disabled branch contributes nothing, whatever its gate."""
    scale: float | None = Field(None, gt=0)
    """Softmax scale; ``None`` means ``1 / sqrt(D)``."""

    @model_validator(mode="after")
    def _check_consistency(self) -> NSAConfig:
        if self.compress_stride > self.compress_block:
            raise ValueError(
                f"compress_stride ({self.compress_stride}) must be <= compress_block ({self.compress_block}); "
                "a larger stride would skip tokens"
            )
        if self.forced_initial + self.forced_local > self.num_selected:
            raise ValueError(
                f"forced_initial + forced_local ({self.forced_initial} + {self.forced_local}) must be <= "
                f"num_selected ({self.num_selected}); forced blocks are counted inside num_selected"
            )
        if not self.branches:
            raise ValueError("branches must name at least one of 'cmp', 'slc', 'swd'")
        if len(set(self.branches)) != len(self.branches):
            raise ValueError(f"branches has duplicates: {self.branches}")
        object.__setattr__(self, "branches", tuple(b for b in BRANCHES if b in self.branches))
        return self

    def enabled(self, branch: Branch) -> bool:
        """Whether ``branch`` contributes to the output."""
        return branch in self.branches

    def softmax_scale(self, head_dim: int) -> float:
        """The softmax scale for a head dimension: ``scale`` or ``1 / sqrt(head_dim)``."""
        return self.scale if self.scale is not None else head_dim**-0.5

    def attention_budget(self) -> int:
        """Keys a late query attends to through selection and window, ``n·s + w`` (paper §9.4)."""
        return self.num_selected * self.select_block + self.window

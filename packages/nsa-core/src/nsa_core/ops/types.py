"""Auxiliary outputs of the NSA operator, for analyses (gate statistics, sinks, selection maps)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from nsa_core.config import Branch


@dataclass
class NSAAux:
    """Per-branch intermediates returned by ``nsa_attention(..., return_aux=True)``.

    Attributes:
        outputs: ungated output ``[B, T, HQ, D]`` of each enabled branch.
        lse: natural-log log-sum-exp ``[B, T, HQ]`` of each enabled branch (``-inf`` where a query
            sees no key), in the scaled-logit domain.
        block_indices: selected blocks ``[B, T, HKV, n]`` (``-1`` = empty), ``None`` without selection.
        block_scores: importance ``[B, T, HKV, NS]`` the selection ranked, ``None`` when selection
            is disabled or ``block_indices`` were given.
    """

    outputs: dict[Branch, Tensor] = field(default_factory=dict)
    lse: dict[Branch, Tensor] = field(default_factory=dict)
    block_indices: Tensor | None = None
    block_scores: Tensor | None = None

    @staticmethod
    def concat(parts: list[NSAAux]) -> NSAAux:
        """Join the aux of consecutive packed sequences along T (block scores zero-padded on NS)."""
        if not parts:
            return NSAAux()
        first = parts[0]
        joined = NSAAux(
            outputs={b: torch.cat([p.outputs[b] for p in parts], 1) for b in first.outputs},
            lse={b: torch.cat([p.lse[b] for p in parts], 1) for b in first.lse},
        )
        if first.block_indices is not None:
            joined.block_indices = torch.cat([p.block_indices for p in parts], 1)
        if first.block_scores is not None:
            ns = max(p.block_scores.shape[-1] for p in parts)
            joined.block_scores = torch.cat(
                [torch.nn.functional.pad(p.block_scores, (0, ns - p.block_scores.shape[-1])) for p in parts], 1
            )
        return joined

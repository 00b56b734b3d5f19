"""Per-head branch gates of the hybrid attention (VideoNSA §3.5, clean mode §5.2 item 6).

Shape legend: N rows (vision tokens), C hidden size, HQ query heads; the last axis of a gate tensor
holds the branches in the order (cmp, slc, swd).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

GateKind = Literal["mlp", "linear"]

GATE_TEMPERATURE = 0.3
"""VideoNSA's temperature τ: gates are ``sigmoid(logits / τ)``."""
GATE_INIT_STD = 0.02
"""Std of the gate weights at initialisation; with zero biases every gate starts at about 0.5."""


class NSAGate(nn.Module):
    """Gates ``sigmoid(f(h) / τ)`` with one value per query head and branch.

    ``kind="mlp"`` is VideoNSA's gate: ``Linear(C→C, bias) → GELU → Linear(C→3·HQ, bias)``
    (``g_proj_1``, ``g_proj_2``, the released parameter names). ``kind="linear"`` is the lighter
    ``Linear(C→3·HQ, bias)`` (``g_proj``), as in FLA's NSA layer. Weights start as N(0, 0.02) and
    biases as 0, so the logits are small and the gates start near 0.5.

    Args:
        hidden_size: ``C``, the width of the attention module's input.
        num_heads: ``HQ``, query heads.
        kind: ``"mlp"`` or ``"linear"``.
        temperature: ``τ`` (> 0); smaller values make the gates sharper.
    """

    def __init__(
        self, hidden_size: int, num_heads: int, kind: GateKind = "mlp", temperature: float = GATE_TEMPERATURE
    ) -> None:
        super().__init__()
        if kind not in ("mlp", "linear"):
            raise ValueError(f"kind must be 'mlp' or 'linear', got {kind!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.num_heads = num_heads
        self.kind = kind
        self.temperature = temperature
        if kind == "mlp":
            self.g_proj_1 = nn.Linear(hidden_size, hidden_size, bias=True)
            self.g_proj_2 = nn.Linear(hidden_size, 3 * num_heads, bias=True)
        else:
            self.g_proj = nn.Linear(hidden_size, 3 * num_heads, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the weights from N(0, 0.02) and zero the biases (gates ≈ 0.5)."""
        for layer in self.children():
            nn.init.normal_(layer.weight, std=GATE_INIT_STD)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """Gates for the given rows.

        Args:
            hidden: ``[..., C]`` attention-module inputs (after the layer's input norm).

        Returns:
            ``[..., HQ, 3]`` gates in (0, 1), branch order (cmp, slc, swd).
        """
        logits = self.g_proj_2(F.gelu(self.g_proj_1(hidden))) if self.kind == "mlp" else self.g_proj(hidden)
        return torch.sigmoid(logits / self.temperature).unflatten(-1, (self.num_heads, 3))

    def extra_repr(self) -> str:
        return f"kind={self.kind}, num_heads={self.num_heads}, temperature={self.temperature}"

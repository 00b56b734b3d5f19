"""Shared inputs and error metrics for the kernel tests."""

from __future__ import annotations

import torch
from torch import Tensor

from nsa_core.config import NSAConfig


def make_inputs(B: int, T: int, HKV: int, G: int, D: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0):
    """Random ``q, k, v, gates`` that require grad, with a fixed seed."""
    gen = torch.Generator(device=device).manual_seed(seed)
    HQ = HKV * G
    q = torch.randn(B, T, HQ, D, generator=gen, device=device).to(dtype).requires_grad_()
    k = torch.randn(B, T, HKV, D, generator=gen, device=device).to(dtype).requires_grad_()
    v = torch.randn(B, T, HKV, D, generator=gen, device=device).to(dtype).requires_grad_()
    gates = torch.rand(B, T, HQ, 3, generator=gen, device=device).to(dtype).requires_grad_()
    return q, k, v, gates


def rel_err(x: Tensor, ref: Tensor) -> float:
    """Relative L2 error of ``x`` against ``ref``, both taken in float64, non-finite entries compared as equal."""
    x, ref = x.detach().double(), ref.detach().double()
    both_inf = ~torch.isfinite(ref) & (x == ref)
    x, ref = torch.where(both_inf, 0.0, x), torch.where(both_inf, 0.0, ref)
    return float((x - ref).norm() / ref.norm().clamp_min(1e-12))


def small_config(**overrides) -> NSAConfig:
    """A geometry small enough for interpreter runs: 16-token blocks, 5 selected, 40-token window."""
    fields = dict(
        compress_block=16, compress_stride=16, select_block=16, num_selected=5, forced_initial=1, forced_local=2,
        window=40,
    )  # fmt: skip
    fields.update(overrides)
    return NSAConfig(**fields)

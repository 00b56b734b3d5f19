"""Gated combine ``o = Σ_c gate_c · o_c`` and its backward (gate gradients and per-branch deltas).

Shape legend:
    R = N·HQ rows (token, query head), D head dim (BD its tile), C = 3 branches (cmp, slc, swd).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def combine_fwd_kernel_gate(
    o_cmp,  # [R, D]
    o_slc,  # [R, D]
    o_swd,  # [R, D]
    gates,  # [R, 3]
    o,  # [R, D]
    R,
    D: tl.constexpr,
    BD: tl.constexpr,
    BR: tl.constexpr,
    USE_CMP: tl.constexpr,
    USE_SLC: tl.constexpr,
    USE_SWD: tl.constexpr,
):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    d = tl.arange(0, BD)
    rows64 = rows.to(tl.int64)
    mask = (rows < R)[:, None] & (d[None, :] < D)
    offs = rows64[:, None] * D + d[None, :]
    acc = tl.zeros([BR, BD], tl.float32)
    if USE_CMP:
        g = tl.load(gates + rows64 * 3, mask=rows < R, other=0.0).to(tl.float32)
        acc += g[:, None] * tl.load(o_cmp + offs, mask=mask, other=0.0).to(tl.float32)
    if USE_SLC:
        g = tl.load(gates + rows64 * 3 + 1, mask=rows < R, other=0.0).to(tl.float32)
        acc += g[:, None] * tl.load(o_slc + offs, mask=mask, other=0.0).to(tl.float32)
    if USE_SWD:
        g = tl.load(gates + rows64 * 3 + 2, mask=rows < R, other=0.0).to(tl.float32)
        acc += g[:, None] * tl.load(o_swd + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(o + offs, acc.to(o.dtype.element_ty), mask=mask)


@triton.jit
def _gate_grad(
    g_out,
    oc,
    offs,
    mask,
    gates,
    dgates,
    delta,
    gated,
    rows64,
    row_ok,
    R,
    D,
    C: tl.constexpr,
    USE: tl.constexpr,
    SLOT: tl.constexpr,
):
    # gate gradient and delta of branch C; with SLOT >= 0 also its gated dO (dO · gate, rounded once)
    if USE:
        dg = tl.sum(g_out * tl.load(oc + offs, mask=mask, other=0.0).to(tl.float32), 1)
        g = tl.load(gates + rows64 * 3 + C, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(delta + C * R + rows64, g * dg, mask=row_ok)
        if SLOT >= 0:
            tl.store(gated + SLOT * R * D + offs, (g_out * g[:, None]).to(gated.dtype.element_ty), mask=mask)
    else:
        dg = tl.zeros_like(rows64).to(tl.float32)
    tl.store(dgates + rows64 * 3 + C, dg.to(dgates.dtype.element_ty), mask=row_ok)


@triton.jit
def combine_bwd_kernel_gate(
    do,  # [R, D]
    o_cmp,
    o_slc,
    o_swd,
    gates,  # [R, 3]
    dgates,  # [R, 3]
    delta,  # [3, R] fp32: gate_c · rowsum(dO · o_c)
    gated,  # [NG, R, D]: dO · gate_c of the branches with a slot
    R,
    D: tl.constexpr,
    BD: tl.constexpr,
    BR: tl.constexpr,
    USE_CMP: tl.constexpr,
    USE_SLC: tl.constexpr,
    USE_SWD: tl.constexpr,
    SLOT_CMP: tl.constexpr,
    SLOT_SLC: tl.constexpr,
    SLOT_SWD: tl.constexpr,
):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    d = tl.arange(0, BD)
    rows64 = rows.to(tl.int64)
    row_ok = rows < R
    mask = row_ok[:, None] & (d[None, :] < D)
    offs = rows64[:, None] * D + d[None, :]
    g_out = tl.load(do + offs, mask=mask, other=0.0).to(tl.float32)
    common = (gates, dgates, delta, gated, rows64, row_ok, R, D)
    _gate_grad(g_out, o_cmp, offs, mask, *common, 0, USE_CMP, SLOT_CMP)
    _gate_grad(g_out, o_slc, offs, mask, *common, 1, USE_SLC, SLOT_SLC)
    _gate_grad(g_out, o_swd, offs, mask, *common, 2, USE_SWD, SLOT_SWD)


def combine_fwd(outputs: dict[str, torch.Tensor], gates: torch.Tensor) -> torch.Tensor:
    """``Σ_c gates[..., c] · outputs[c]`` over the enabled branches, in the dtype of the outputs."""
    first = next(iter(outputs.values()))
    N, HQ, D = first.shape
    R = N * HQ
    o = torch.empty_like(first)
    BR = 32
    combine_fwd_kernel_gate[(triton.cdiv(R, BR),)](
        outputs.get("cmp", first), outputs.get("slc", first), outputs.get("swd", first), gates, o, R,
        D=D, BD=max(triton.next_power_of_2(D), 16), BR=BR,
        USE_CMP="cmp" in outputs, USE_SLC="slc" in outputs, USE_SWD="swd" in outputs,
    )  # fmt: skip
    return o


def combine_bwd(
    do: torch.Tensor, outputs: dict[str, torch.Tensor], gates: torch.Tensor, gate_grads: tuple[str, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Returns ``(dgates [N, HQ, 3], delta [3, N, HQ] fp32, gated)``; disabled branches get zero gate gradient.

    ``gated`` maps each enabled branch named in ``gate_grads`` to its gated gradient ``dO · gate`` ``[N, HQ, D]``
    (dO's dtype), written in the same pass, so the branch backwards need not gate dO row by row.
    """
    N, HQ, D = do.shape
    R = N * HQ
    first = next(iter(outputs.values()))
    dgates = torch.empty_like(gates)
    delta = torch.empty(3, N, HQ, device=do.device, dtype=torch.float32)
    names = [name for name in ("cmp", "slc", "swd") if name in gate_grads and name in outputs]
    gated = torch.empty(len(names), N, HQ, D, device=do.device, dtype=do.dtype) if names else do
    slots = {f"SLOT_{name.upper()}": names.index(name) if name in names else -1 for name in ("cmp", "slc", "swd")}
    BR = 32
    combine_bwd_kernel_gate[(triton.cdiv(R, BR),)](
        do, outputs.get("cmp", first), outputs.get("slc", first), outputs.get("swd", first), gates, dgates, delta,
        gated, R, D=D, BD=max(triton.next_power_of_2(D), 16), BR=BR,
        USE_CMP="cmp" in outputs, USE_SLC="slc" in outputs, USE_SWD="swd" in outputs, **slots,
    )  # fmt: skip
    return dgates, delta, {name: gated[i] for i, name in enumerate(names)}

"""Mean-pool compression of keys and values (φ = mean over ``[i·CS, i·CS + CL)``), forward and backward.

Shape legend:
    N packed tokens, NC compressed keys over all sequences, HKV KV heads, D head dim (BD its tile),
    CL compression block, CS stride, BT tokens per backward program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nsa_kernels.index import cached, positions, tile_table


@triton.jit
def pool_fwd_kernel_mean(
    k,  # [N, HKV, D]
    v,  # [N, HKV, D]
    k_cmp,  # [NC, HKV, D]
    v_cmp,  # [NC, HKV, D]
    cmp_seq,  # [NC] sequence of each compressed key
    cmp_rel,  # [NC] index inside its sequence
    cu_seqlens,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    CL: tl.constexpr,
    BL: tl.constexpr,
    CS: tl.constexpr,
):
    c = tl.program_id(0)
    h = tl.program_id(1)
    bos = tl.load(cu_seqlens + tl.load(cmp_seq + c))
    first = bos + tl.load(cmp_rel + c) * CS
    rows = first + tl.arange(0, BL)
    d = tl.arange(0, BD)
    mask = (tl.arange(0, BL) < CL)[:, None] & (d[None, :] < D)
    offs = rows.to(tl.int64)[:, None] * (HKV * D) + h * D + d[None, :]
    km = tl.sum(tl.load(k + offs, mask=mask, other=0.0).to(tl.float32), 0) / CL
    vm = tl.sum(tl.load(v + offs, mask=mask, other=0.0).to(tl.float32), 0) / CL
    out = c.to(tl.int64) * (HKV * D) + h * D + d
    tl.store(k_cmp + out, km.to(k_cmp.dtype.element_ty), mask=d < D)
    tl.store(v_cmp + out, vm.to(v_cmp.dtype.element_ty), mask=d < D)


@triton.jit
def pool_bwd_kernel_mean(
    dk_cmp,  # [NC, HKV, D] fp32
    dv_cmp,  # [NC, HKV, D] fp32
    dk,  # [N, HKV, D] fp32, accumulated (ACCUMULATE)
    dv,  # [N, HKV, D] fp32
    dk_out,  # [N, HKV, D] the sum, in its own dtype (may be dk)
    dv_out,  # [N, HKV, D]
    cu_seqlens,
    cu_keys,  # [NSEQ + 1] compressed offsets
    tile_seq,
    tile_start,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BT: tl.constexpr,
    CL: tl.constexpr,
    CS: tl.constexpr,
    ACCUMULATE: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    seq = tl.load(tile_seq + pid)
    bos = tl.load(cu_seqlens + seq)
    eos = tl.load(cu_seqlens + seq + 1)
    kbos = tl.load(cu_keys + seq)
    nks = tl.load(cu_keys + seq + 1) - kbos
    t = tl.load(tile_start + pid) + tl.arange(0, BT)
    t_ok = t < eos
    t_rel = t - bos
    d = tl.arange(0, BD)
    gk = tl.zeros([BT, BD], tl.float32)
    gv = tl.zeros([BT, BD], tl.float32)
    for j in tl.static_range(0, (CL + CS - 1) // CS):
        i = t_rel // CS - j
        ok = t_ok & (i >= 0) & (i < nks) & (t_rel < i * CS + CL)
        offs = (kbos + i).to(tl.int64)[:, None] * (HKV * D) + h * D + d[None, :]
        m = ok[:, None] & (d[None, :] < D)
        gk += tl.load(dk_cmp + offs, mask=m, other=0.0)
        gv += tl.load(dv_cmp + offs, mask=m, other=0.0)
    gk = gk / CL
    gv = gv / CL
    offs = t.to(tl.int64)[:, None] * (HKV * D) + h * D + d[None, :]
    m = t_ok[:, None] & (d[None, :] < D)
    if ACCUMULATE:
        gk += tl.load(dk + offs, mask=m, other=0.0)
        gv += tl.load(dv + offs, mask=m, other=0.0)
    tl.store(dk_out + offs, gk.to(dk_out.dtype.element_ty), mask=m)
    tl.store(dv_out + offs, gv.to(dv_out.dtype.element_ty), mask=m)


def pool_fwd(
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    cu_keys: torch.Tensor,
    *,
    compress_block: int,
    compress_stride: int,
    cmp_lens: list[int] | None = None,
    memo: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compressed keys and values ``[NC, HKV, D]`` of packed ``k``/``v`` ``[N, HKV, D]``.

    ``cmp_lens``: host compressed lengths per sequence (no device sync), else read from ``cu_keys``; ``memo``:
    the table cache of the plan of this layout (:func:`~nsa_kernels.index.cached`).
    """
    _N, HKV, D = k.shape

    def key_positions():
        seq, rel = positions(cu_keys, int(cu_keys[-1]) if cmp_lens is None else sum(cmp_lens))
        return seq.to(torch.int32), rel.to(torch.int32)

    seq, rel = cached(memo, ("compressed_positions",), key_positions)
    NC = seq.numel()
    k_cmp = torch.empty(NC, HKV, D, device=k.device, dtype=k.dtype)
    v_cmp = torch.empty(NC, HKV, D, device=k.device, dtype=k.dtype)
    if NC:
        pool_fwd_kernel_mean[(NC, HKV)](
            k, v, k_cmp, v_cmp, seq, rel, cu_seqlens,
            HKV=HKV, D=D, BD=max(triton.next_power_of_2(D), 16), CL=compress_block,
            BL=triton.next_power_of_2(compress_block), CS=compress_stride,
        )  # fmt: skip
    return k_cmp, v_cmp


def pool_bwd(
    dk_cmp: torch.Tensor,
    dv_cmp: torch.Tensor,
    dkv: tuple[torch.Tensor, torch.Tensor] | None,
    n_tokens: int,
    cu_seqlens: torch.Tensor,
    cu_keys: torch.Tensor,
    *,
    compress_block: int,
    compress_stride: int,
    lens: list[int] | None = None,
    memo: dict | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spread ``dk_cmp``/``dv_cmp`` back onto the tokens, plus ``dkv`` (fp32 ``[N, HKV, D]``) if given.

    The sums are ``out_dtype``: fp32 into ``dkv`` (or new tensors), another dtype into new tensors (the last writer
    of the key gradients converts on its way out). ``lens``: host sequence lengths (no device sync); ``memo`` as in
    :func:`pool_fwd`.
    """
    _NC, HKV, D = dk_cmp.shape
    BT = 64
    accumulate = dkv is not None
    out = dkv
    if out is None or out_dtype != torch.float32:
        out = tuple(torch.empty(n_tokens, HKV, D, device=dk_cmp.device, dtype=out_dtype) for _ in range(2))
    tile_seq, tile_start = cached(memo, ("tiles", BT), lambda: tile_table(cu_seqlens, BT, lens))
    if tile_seq.numel():
        pool_bwd_kernel_mean[(tile_seq.numel(), HKV)](
            dk_cmp, dv_cmp, *(dkv or out), *out, cu_seqlens, cu_keys, tile_seq, tile_start,
            HKV=HKV, D=D, BD=max(triton.next_power_of_2(D), 16), BT=BT, CL=compress_block, CS=compress_stride,
            ACCUMULATE=accumulate,
        )  # fmt: skip
    return out

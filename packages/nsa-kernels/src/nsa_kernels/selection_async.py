"""Selection forward and backward with asynchronous row gathers (Gluon, Hopper): the same work items and outputs as
:func:`nsa_kernels.selection.slc_fwd_kernel_block` / :func:`~nsa_kernels.selection.slc_bwd_kernel_block`, which stay
the readable versions and the ones the CPU interpreter runs.

Triton issues the query/dO row gathers of a step only after the previous step's MMAs, so every step waits for
its gathers. Here the rows of step i + 1 are copied (``cp.async``) into the second of two shared-memory buffers
while step i runs its warpgroup MMAs.

- Forward: S = Q·Kᵀ and O = P·V. The copies are addressed by CSR entries loaded a step earlier, P stays in
  registers as the A operand of the PV product, and the output tile is staged through the step's query buffer so
  that it is stored in 16-byte row pieces. The partials are stored as streaming (``.cs``, evict-first in the L2): the
  merge reads them only after the launch, so they should not push out the query rows that other steps gather.
  64 KB of shared memory and 168 registers: 3 CTAs per SM.
- Backward: S = Q·Kᵀ, dP = dO·Vᵀ, the dQ partial dS·K, dV += Pᵀ·dO and dK += dSᵀ·Q. The step's LSE and delta rows
  are copied with its query/dO rows; P and dS go through shared memory, where the MMAs read them transposed; the dQ
  tile goes to shared memory and out in one TMA store to the step's own BM partial rows while dV/dK run, and those are
  waited for only once the next step's S/dP are issued (then that step's rows go out to the freed buffer). The CSR
  entries that address a step's copies are loaded into registers a step earlier, and the L2 is asked for them three
  steps on.
- Both apply the causal/sequence key mask only on the steps that need it (the block's own tokens come first in its
  CSR list); rows past the item are zero-filled copies whose products vanish.

Limits (the launcher falls back to the Triton kernel otherwise): compute capability 9.x, 16-bit inputs,
a D tile of 64 or 128 equal to D, and 64-key selection blocks (BN = 64, the MMA's M for dK/dV); the backward also
needs 16-bit dQ partials (an fp32 tile has no room in shared memory).

Shape legend as in :mod:`nsa_kernels.selection`.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from nsa_kernels.selection import (
    _block_softmax,
    _decode_entries,
    _entries,
    _load_entries,
    _masked_entries,
    _range_selection,
    _work_item,
)


@gluon.constexpr_function
def _mma_layout(M, N, num_warps):
    # a warpgroup MMA accumulator [M, N]: warps stacked along M while M has 16-row slices for them, then along N
    warps = [4, 1]
    while warps[0] * warps[1] < num_warps:
        if 16 * warps[0] < M:
            warps[0] *= 2
        else:
            warps[1] *= 2
    instr_n = min(256, N // warps[1])
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=warps, instr_shape=[16, instr_n, 16])


@gluon.constexpr_function
def _operand_layout():
    # shared memory of 16-bit MMA operand tiles, 128-byte swizzled
    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)


@gluon.constexpr_function
def _rows_layout(num_warps):
    # one value per thread along a row vector (the LSE/delta rows copied for a step)
    return gl.BlockedLayout([1], [32], [num_warps], [0])


@gluon.constexpr_function
def _gather_layout(num_warps):
    # rows of 16-bit elements in 8-element (16-byte: one cp.async) pieces, 8 threads per 64 columns, 4 rows per warp
    return gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])


@gluon.jit
def _rows_of(ent, base, hi, r, G: gl.constexpr, TT: gl.constexpr, HKV: gl.constexpr, S: gl.constexpr):
    # rows r = (token slot, head g) of the step whose first CSR entry is base, from its raw entries (loaded for the
    # token slots r // G): row mask, selection e, token t, g
    ok, e, t = _decode_entries(ent, base, hi, r // G, TT, HKV, S)
    return ok, e, t, r % G


@gluon.jit
def _step_rows(csr_ent, base, hi, r, G: gl.constexpr, TT: gl.constexpr, HKV: gl.constexpr, S: gl.constexpr):
    # _rows_of with the entries loaded here
    return _rows_of(_load_entries(csr_ent, base, hi, r // G, TT), base, hi, r, G, TT, HKV, S)


@gluon.jit
def _copy_rows(x, buf, t, head, ok, d, HQ: gl.constexpr, D: gl.constexpr):
    # start the copy of the [BM, D] rows (token t, query head) of a [N, HQ, D] tensor (zeros where not ok)
    async_copy.async_copy_global_to_shared(buf, x + t[:, None] * (HQ * D) + head[:, None] * D + d[None, :],
                                           mask=ok[:, None])  # fmt: skip


@gluon.jit
def _copy_step(q, do, q_buf, do_buf, ent, base, hi, h, r, d, G: gl.constexpr, TT: gl.constexpr, HQ: gl.constexpr,
               HKV: gl.constexpr, S: gl.constexpr, D: gl.constexpr):  # fmt: skip
    # start the copies of one step's query and dO rows (raw entries ent) as one commit group
    ok, _, t, g = _rows_of(ent, base, hi, r, G, TT, HKV, S)
    _copy_rows(q, q_buf, t, h * G + g, ok, d, HQ, D)
    _copy_rows(do, do_buf, t, h * G + g, ok, d, HQ, D)
    async_copy.commit_group()


@gluon.jit
def _copy_block(k, v, k_smem, v_smem, k0, bos, eos, h, n, d, HKV: gl.constexpr, SB: gl.constexpr, D: gl.constexpr):
    # start the copies of the work item's K/V block (zeros past the block or the sequence; committed with step 0)
    ok = (n < SB) & (k0 + n < eos - bos)
    offs = (bos + k0 + n).to(gl.int64)[:, None] * (HKV * D) + h * D + d[None, :]
    async_copy.async_copy_global_to_shared(k_smem, k + offs, mask=ok[:, None])
    async_copy.async_copy_global_to_shared(v_smem, v + offs, mask=ok[:, None])


@gluon.jit
def _copy_softmax_rows(lse, delta, lse_buf, delta_buf, ent, base, hi, h, r, G: gl.constexpr, TT: gl.constexpr,
                       HQ: gl.constexpr, HKV: gl.constexpr, S: gl.constexpr):  # fmt: skip
    # start the copies of one step's LSE and delta rows (raw entries ent; zeros for rows past the item: with their zero
    # query and dO rows, P = 1 there and every product they enter is 0)
    ok, _, t, g = _rows_of(ent, base, hi, r, G, TT, HKV, S)
    row = t * HQ + h * G + g
    async_copy.async_copy_global_to_shared(lse_buf, lse + row, mask=ok)
    async_copy.async_copy_global_to_shared(delta_buf, delta + row, mask=ok)


@gluon.jit
def _dkv_buffers(dtype: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr):
    # shared memory of a key-outer backward: the K/V tile, two steps of query/dO/LSE/delta rows, one step's P and dS
    SMEM: gl.constexpr = _operand_layout()
    FLAT: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    return (
        gl.allocate_shared_memory(dtype, [BN, D], SMEM),
        gl.allocate_shared_memory(dtype, [BN, D], SMEM),
        gl.allocate_shared_memory(dtype, [2, BM, D], SMEM),
        gl.allocate_shared_memory(dtype, [2, BM, D], SMEM),
        gl.allocate_shared_memory(dtype, [BM, BN], SMEM),
        gl.allocate_shared_memory(dtype, [BM, BN], SMEM),
        gl.allocate_shared_memory(gl.float32, [2, BM], FLAT),
        gl.allocate_shared_memory(gl.float32, [2, BM], FLAT),
    )


@gluon.jit
def _mask_keys(x, ok, t, bos, k0, n, key_limit, fill):
    # x where key n of the block (first key k0) is visible to the row of token t: the row is in the item, the key
    # lies before key_limit (the block's end or the sequence's) and at or before t; fill elsewhere
    limit = gl.minimum(gl.where(ok, (t - bos - k0).to(gl.int32) + 1, 0)[:, None], key_limit[None, :])
    return gl.where(n[None, :] < limit, x, fill)


@gluon.jit
def _prefetch_l2(ptrs, ok, fallback):
    # hint the L2 to fetch the lines at ptrs where ok (the asm's dummy result keeps it from being removed)
    gl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [gl.where(ok, ptrs, fallback)],
                              dtype=gl.int32, is_pure=False, pack=1)  # fmt: skip


@gluon.jit
def _issue_scores(q_buf, do_buf, k_smem, v_smem, S_L: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr):
    # start S = Q·Kᵀ and dP = dO·Vᵀ of one backward step, [BM, BN] fp32 each in layout S_L
    zeros = gl.zeros([BM, BN], gl.float32, S_L)
    s = warpgroup_mma(q_buf, k_smem.permute((1, 0)), zeros, use_acc=False, is_async=True)
    return s, warpgroup_mma(do_buf, v_smem.permute((1, 0)), zeros, use_acc=False, is_async=True)


@gluon.jit
def _softmax_rows(lse_buf, delta_buf, layout: gl.constexpr):
    # one step's base-2 LSE rows (+inf for rows without keys, so their P is 0) and delta rows, from shared memory
    lse_row = lse_buf.load(layout)
    return gl.where(lse_row == float("-inf"), float("inf"), lse_row * 1.4426950408889634), delta_buf.load(layout)


@gluon.jit
def _stage(pv, ds, p_smem, ds_smem):
    # one step's P (times the gates) and dS into shared memory for the dV / dK MMAs
    p_smem.store(pv.to(p_smem.dtype))
    ds_smem.store(ds.to(ds_smem.dtype))
    fence_async_shared()
    gl.thread_barrier()


@gluon.jit
def _stage_p_ds(p, dp, delta_row, gate, p_smem, ds_smem):
    # _stage of P and dS = P·(dP - delta) of one step, rows times gate unless it is None
    if gate is not None:
        _stage(p * gate[:, None], p * (dp * gate[:, None] - delta_row[:, None]), p_smem, ds_smem)
    else:
        _stage(p, p * (dp - delta_row[:, None]), p_smem, ds_smem)


@gluon.jit
def _step_products(s, dp, lse2, delta_row, gates, csr_ent, q_buf, do_buf, k_smem, p_smem, ds_smem, dv_acc, dk_acc,
                   base, hi, masked, bos, k0, h, r_s, n_s, key_limit, scale2, DQ_L: gl.constexpr, HQ: gl.constexpr,
                   HKV: gl.constexpr, G: gl.constexpr, TT: gl.constexpr, S: gl.constexpr, C: gl.constexpr):  # fmt: skip
    # a backward step once its S/dP MMAs are issued: P (key-masked on the steps that need it) and dS staged, times
    # the gates where C >= 0; then the dQ partial dS·K, dV += Pᵀ·dO and dK += dSᵀ·Q issued: (dq, dv_acc, dk_acc)
    BM: gl.constexpr = q_buf.shape[0]
    D: gl.constexpr = q_buf.shape[1]
    if C >= 0:
        ok_g, _e_gate, t_g, g_g = _step_rows(csr_ent, base, hi, r_s, G, TT, HKV, S)
        gate = gl.load(gates + (t_g * HQ + h * G + g_g) * 3 + C, mask=ok_g, other=0.0).to(gl.float32)
    else:
        gate = None
    s, dp = warpgroup_mma_wait(0, deps=[s, dp])
    p = gl.exp2(s * scale2 - lse2[:, None])
    if base < masked:
        ok, _e_mask, t, _g_mask = _step_rows(csr_ent, base, hi, r_s, G, TT, HKV, S)
        p = _mask_keys(p, ok, t, bos, k0, n_s, key_limit, 0.0)
    _stage_p_ds(p, dp, delta_row, gate, p_smem, ds_smem)
    dq = warpgroup_mma(ds_smem, k_smem, gl.zeros([BM, D], gl.float32, DQ_L), use_acc=False, is_async=True)
    dv_acc = warpgroup_mma(p_smem.permute((1, 0)), do_buf, dv_acc, is_async=True)
    dk_acc = warpgroup_mma(ds_smem.permute((1, 0)), q_buf, dk_acc, is_async=True)
    return dq, dv_acc, dk_acc


@gluon.jit
def _store_dkv_partial(dk_acc, dv_acc, dk_part, dv_part, row0, scale, DKV_L: gl.constexpr):
    # a work item's fp32 dK (times scale) and dV partials [BN, D] into rows row0.. of dk_part / dv_part
    BN: gl.constexpr = dk_acc.shape[0]
    D: gl.constexpr = dk_acc.shape[1]
    n_out = gl.arange(0, BN, gl.SliceLayout(1, DKV_L))
    d_out = gl.arange(0, D, gl.SliceLayout(0, DKV_L))
    offs = (row0 + n_out)[:, None] * D + d_out[None, :]
    gl.store(dk_part + offs, dk_acc * scale)
    gl.store(dv_part + offs, dv_acc)


@gluon.jit
def slc_fwd_kernel_block_async(
    q, k, v, o_part, lse_part, cu_seqlens, blk_seq, blk_start, csr_ent, item_row, item_lo, item_hi, NB, e_base, scale2,
    HQ: gl.constexpr, HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
    SB: gl.constexpr, S: gl.constexpr, BUFFERS: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    # arguments as slc_fwd_kernel_block (BD = D). The query rows of step i + BUFFERS - 1 are copied while step i
    # computes, from CSR entries loaded a step earlier; P stays in registers as the A operand of the PV product;
    # the output tile is staged through the step's query buffer (S is done with it) and stored in 16-byte pieces
    TT: gl.constexpr = BM // G
    GATHER: gl.constexpr = _gather_layout(num_warps)
    S_L: gl.constexpr = _mma_layout(BM, BN, num_warps)
    O_L: gl.constexpr = _mma_layout(BM, D, num_warps)
    P_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_L, k_width=2)
    SMEM: gl.constexpr = _operand_layout()
    dtype: gl.constexpr = q.dtype.element_ty

    pid = gl.program_id(0)
    h, k0, bos, eos, lo, hi = _work_item(item_row, item_lo, item_hi, blk_seq, blk_start, cu_seqlens, pid, NB)
    k_smem = gl.allocate_shared_memory(dtype, [BN, D], SMEM)
    v_smem = gl.allocate_shared_memory(dtype, [BN, D], SMEM)
    q_smem = gl.allocate_shared_memory(dtype, [BUFFERS, BM, D], SMEM)

    d = gl.arange(0, D, gl.SliceLayout(0, GATHER))
    _copy_block(k, v, k_smem, v_smem, k0, bos, eos, h, gl.arange(0, BN, gl.SliceLayout(1, GATHER)), d, HKV, SB, D)
    tok_g = gl.arange(0, BM, gl.SliceLayout(1, GATHER)) // G
    head_g = h * G + gl.arange(0, BM, gl.SliceLayout(1, GATHER)) % G
    for j in gl.static_range(BUFFERS - 1):
        ok_j, _, t_j = _entries(csr_ent, lo + j * TT, hi, tok_g, TT, HKV, S)
        _copy_rows(q, q_smem.index(j), t_j, head_g, ok_j, d, HQ, D)
        async_copy.commit_group()
    ent_copy = _load_entries(csr_ent, lo + (BUFFERS - 1) * TT, hi, tok_g, TT)

    r_s = gl.arange(0, BM, gl.SliceLayout(1, S_L))
    n_s = gl.arange(0, BN, gl.SliceLayout(0, S_L))
    key_limit = gl.where(n_s < SB, (eos - bos - k0).to(gl.int32), 0)
    masked = lo + _masked_entries(csr_ent, lo, hi, k0, bos, eos, n_s, HKV, S, SB, BN)
    for i in range(gl.cdiv(hi - lo, TT)):
        base = lo + i * TT
        ent_s = _load_entries(csr_ent, base, hi, r_s // G, TT)
        ent_o = _load_entries(csr_ent, base, hi, tok_g, TT)
        gl.thread_barrier()
        ok_c, _, t_c = _decode_entries(ent_copy, base + (BUFFERS - 1) * TT, hi, tok_g, TT, HKV, S)
        _copy_rows(q, q_smem.index((i + BUFFERS - 1) % BUFFERS), t_c, head_g, ok_c, d, HQ, D)
        async_copy.commit_group()
        ent_copy = _load_entries(csr_ent, base + BUFFERS * TT, hi, tok_g, TT)
        async_copy.wait_group(BUFFERS - 1)
        gl.thread_barrier()
        fence_async_shared()
        q_buf = q_smem.index(i % BUFFERS)
        s = warpgroup_mma(q_buf, k_smem.permute((1, 0)), gl.zeros([BM, BN], gl.float32, S_L), use_acc=False,
                          is_async=True)  # fmt: skip
        ok, e, t = _decode_entries(ent_s, base, hi, r_s // G, TT, HKV, S)
        s = warpgroup_mma_wait(0, deps=[s])
        if base < masked:
            s = _mask_keys(s, ok, t, bos, k0, n_s, key_limit, float("-inf"))
        p, lse_row = _block_softmax(s, scale2)
        gl.store(lse_part + (e - e_base) * G + r_s % G, lse_row, mask=ok, cache_modifier=".cs")
        p = gl.convert_layout(p.to(dtype), P_L)
        o = warpgroup_mma(p, v_smem, gl.zeros([BM, D], gl.float32, O_L), use_acc=False, is_async=True)
        ok_o, e_o, _ = _decode_entries(ent_o, base, hi, tok_g, TT, HKV, S)
        o = warpgroup_mma_wait(0, deps=[o])
        q_buf.store(o.to(dtype))
        gl.thread_barrier()
        rows = (e_o - e_base) * G + head_g - h * G
        gl.store(o_part + rows[:, None] * D + d[None, :], q_buf.load(GATHER), mask=ok_o[:, None], cache_modifier=".cs")
    async_copy.wait_group(0)


@gluon.jit
def slc_bwd_kernel_block_async(
    q, k, v, do, gates, lse, delta, dq_desc, part_row, dk_part, dv_part, cu_seqlens, blk_seq, blk_start, csr_ent,
    item_row, item_lo, item_hi, item_step, NB, e_base, h0, item_base, scale, scale2,
    HQ: gl.constexpr, HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
    SB: gl.constexpr, S: gl.constexpr, C: gl.constexpr, HR: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    # arguments as slc_bwd_kernel_block (BD = D), the dQ partials as a TMA descriptor of [rows, D] in [BM, D] boxes
    TT: gl.constexpr = BM // G
    GATHER: gl.constexpr = _gather_layout(num_warps)
    S_L: gl.constexpr = _mma_layout(BM, BN, num_warps)
    DQ_L: gl.constexpr = _mma_layout(BM, D, num_warps)
    DKV_L: gl.constexpr = _mma_layout(BN, D, num_warps)
    ROWS: gl.constexpr = _rows_layout(num_warps)
    dtype: gl.constexpr = q.dtype.element_ty

    pid = gl.program_id(0)
    h, k0, bos, eos, lo, hi = _work_item(item_row, item_lo, item_hi, blk_seq, blk_start, cu_seqlens, pid, NB)
    k_smem, v_smem, q_smem, do_smem, p_smem, ds_smem, lse_smem, delta_smem = _dkv_buffers(dtype, BM, BN, D)
    dq_smem = gl.allocate_shared_memory(dtype, [BM, D], dq_desc.layout)
    step0 = gl.load(item_step + pid)

    d = gl.arange(0, D, gl.SliceLayout(0, GATHER))
    n = gl.arange(0, BN, gl.SliceLayout(1, GATHER))
    _copy_block(k, v, k_smem, v_smem, k0, bos, eos, h, n, d, HKV, SB, D)
    r_gather = gl.arange(0, BM, gl.SliceLayout(1, GATHER))
    r_rows = gl.arange(0, BM, ROWS)
    ent_g = _load_entries(csr_ent, lo, hi, r_gather // G, TT)
    ent_r = _load_entries(csr_ent, lo, hi, r_rows // G, TT)
    _copy_softmax_rows(lse, delta, lse_smem.index(0), delta_smem.index(0), ent_r, lo, hi, h, r_rows, G, TT, HQ, HKV, S)
    _copy_step(q, do, q_smem.index(0), do_smem.index(0), ent_g, lo, hi, h, r_gather, d, G, TT, HQ, HKV, S, D)
    next_g = _load_entries(csr_ent, lo + TT, hi, r_gather // G, TT)
    next_r = _load_entries(csr_ent, lo + TT, hi, r_rows // G, TT)

    r_s = gl.arange(0, BM, gl.SliceLayout(1, S_L))
    n_s = gl.arange(0, BN, gl.SliceLayout(0, S_L))
    key_limit = gl.where(n_s < SB, (eos - bos - k0).to(gl.int32), 0)
    masked = lo + _masked_entries(csr_ent, lo, hi, k0, bos, eos, n_s, HKV, S, SB, BN)
    dk_acc = warpgroup_mma_init(gl.zeros([BN, D], gl.float32, DKV_L))
    dv_acc = warpgroup_mma_init(gl.zeros([BN, D], gl.float32, DKV_L))
    for i in range(gl.cdiv(hi - lo, TT)):
        base = lo + i * TT
        async_copy.wait_group(0)
        fence_async_shared()
        gl.thread_barrier()
        if i > 0:
            tma.async_copy_shared_to_global(dq_desc, [(step0 + i - 1) * BM, 0], dq_smem)
        q_buf = q_smem.index(i % 2)
        do_buf = do_smem.index(i % 2)
        s, dp = _issue_scores(q_buf, do_buf, k_smem, v_smem, S_L, BM, BN)
        dv_acc, dk_acc = warpgroup_mma_wait(2, deps=[dv_acc, dk_acc])
        gl.thread_barrier()
        _copy_softmax_rows(lse, delta, lse_smem.index((i + 1) % 2), delta_smem.index((i + 1) % 2), next_r, base + TT,
                           hi, h, r_rows, G, TT, HQ, HKV, S)  # fmt: skip
        _copy_step(q, do, q_smem.index((i + 1) % 2), do_smem.index((i + 1) % 2), next_g, base + TT, hi, h, r_gather,
                   d, G, TT, HQ, HKV, S, D)  # fmt: skip
        step_g = ent_g
        ent_g = next_g
        next_g = _load_entries(csr_ent, base + 2 * TT, hi, r_gather // G, TT)
        next_r = _load_entries(csr_ent, base + 2 * TT, hi, r_rows // G, TT)
        lse2, delta_row = _softmax_rows(lse_smem.index(i % 2), delta_smem.index(i % 2), gl.SliceLayout(1, S_L))
        dq, dv_acc, dk_acc = _step_products(s, dp, lse2, delta_row, gates, csr_ent, q_buf, do_buf, k_smem, p_smem,
                                            ds_smem, dv_acc, dk_acc, base, hi, masked, bos, k0, h, r_s, n_s,
                                            key_limit, scale2, DQ_L, HQ, HKV, G, TT, S, C)  # fmt: skip
        ahead = base + 3 * TT + r_s // G
        _prefetch_l2(csr_ent + ahead, ahead < hi, csr_ent)
        ok_dq, e_dq, t_dq, g_dq = _rows_of(step_g, base, hi, r_gather, G, TT, HKV, S)
        step_row = (step0 + i) * BM
        gl.store(part_row + _range_selection(e_dq, t_dq, e_base, h0, HKV, HR, S), step_row + r_gather,
                 mask=ok_dq & (g_dq == 0))  # fmt: skip
        dq = warpgroup_mma_wait(2, deps=[dq])
        tma.store_wait(0)
        dq_smem.store((dq * scale).to(dtype))
    dv_acc, dk_acc = warpgroup_mma_wait(0, deps=[dv_acc, dk_acc])
    async_copy.wait_group(0)
    if hi > lo:
        fence_async_shared()
        gl.thread_barrier()
        tma.async_copy_shared_to_global(dq_desc, [(step0 + gl.cdiv(hi - lo, TT) - 1) * BM, 0], dq_smem)
        tma.store_wait(0)
    _store_dkv_partial(dk_acc, dv_acc, dk_part, dv_part, (item_base + pid).to(gl.int64) * BN, scale, DKV_L)


def partial_descriptor(dq_part: torch.Tensor, block_m: int) -> TensorDescriptor:
    """TMA descriptor of the selection's dQ partials ``[R, D]`` (16-bit), in boxes of one backward step's rows."""
    return TensorDescriptor.from_tensor(dq_part, [block_m, dq_part.shape[-1]], _operand_layout())


def async_supported(q: torch.Tensor, D: int, BD: int, BN: int, BM: int) -> bool:
    """Whether the kernels here cover this call (else the Triton kernels run)."""
    return (
        BM % 64 == 0
        and q.is_cuda
        and torch.cuda.get_device_capability(q.device)[0] == 9
        and q.dtype in (torch.bfloat16, torch.float16)
        and D == BD
        and D in (64, 128)
        and BN == 64
    )

"""Selection backward in warp-specialised partitions (Gluon, Hopper): the work items, arguments and outputs of
:func:`nsa_kernels.selection_async.slc_bwd_kernel_block_async`, with the row gathers moved off the MMA warps.

Two partitions share a program:

- the consumers (the default partition, two warpgroups): per step S = Q·Kᵀ, dP = dO·Vᵀ, P and dS staged through
  shared memory, the dQ partial dS·K out by TMA, dV += Pᵀ·dO and dK += dSᵀ·Q. They wait for a step's rows on its
  buffer's mbarrier, and each thread releases the buffer of step i - 1 once that step's dV/dK are done (after the
  S/dP of step i are issued), so no copy wait shares the scoreboard with the dQ store (Triton's membar pass still
  puts a CTA barrier before each step's mbarrier wait; removing it measured flat).
- the producer (one warpgroup): the K/V block, then per step its query/dO rows, LSE and delta rows by ``cp.async``
  into a released buffer, completing the buffer's mbarrier, and the step's ``part_row`` entries. A step's CSR
  entries are loaded a step ahead (one per thread), and its row numbers reach the gathers' layout through shared
  memory before the producer waits for the buffer, so only the copies themselves follow the release.

Rows past the item are zero-filled copies with an LSE of 0: P = 1 there, dP = delta = 0, so every product they
enter is 0, as in the kernel this one replaces.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)

from nsa_kernels.selection import _decode_entries, _masked_entries, _range_selection, _work_item
from nsa_kernels.selection_async import (
    _copy_block,
    _dkv_buffers,
    _issue_scores,
    _mma_layout,
    _softmax_rows,
    _step_products,
    _store_dkv_partial,
)

CONSUMER_WARPS = gl.constexpr(8)
LAUNCH = {"PRODUCER_WARPS": 4, "PRODUCER_REGS": 56, "num_warps": 8, "maxnreg": 168}
"""Launch settings: the producer's warps and registers per thread (the consumers, the default partition, get what
``maxnreg`` over the program's 12 warps leaves: 224). With 40 or 24 producer registers the producer spills and
the kernel is 10 % and 27 % slower at 128K; 8 producer warps are slower too."""


@gluon.jit
def _row_entries(csr_ent, base, hi, r, G: gl.constexpr, BM: gl.constexpr):
    # each row's CSR entry (row r: token slot r // G of the step whose first entry is base; 0 past the item)
    slot = r // G
    return gl.load(csr_ent + base + slot, mask=(slot < BM // G) & (base + slot < hi), other=0)


@gluon.jit
def _gather_rows(q, do, q_buf, do_buf, rows, d, D: gl.constexpr):
    # start the copies of one step's query and dO rows (rows: a flat row of [N·HQ, D] each, -1 for a zero row)
    offs = rows.to(gl.int64)[:, None] * D + d[None, :]
    ok = (rows >= 0)[:, None]
    async_copy.async_copy_global_to_shared(q_buf, q + offs, mask=ok)
    async_copy.async_copy_global_to_shared(do_buf, do + offs, mask=ok)


@gluon.jit
def _producer(q, k, v, do, lse, delta, csr_ent, part_row, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem,
              row_smem, full, empty, k0, bos, eos, lo, hi, h, step0, e_base, h0, HQ: gl.constexpr,
              HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, SB: gl.constexpr,
              S: gl.constexpr, HR: gl.constexpr, PW: gl.constexpr):  # fmt: skip
    # fill buffer i % 2 with step i once the consumers released it, all copies completing full[i % 2]; the K/V
    # block goes with step 0
    TT: gl.constexpr = BM // G
    ROWS_L: gl.constexpr = gl.BlockedLayout([max(1, BM // (32 * PW))], [32], [PW], [0])
    GATHER: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [PW, 1], [1, 0])
    BN: gl.constexpr = k_smem.shape[0]
    d = gl.arange(0, D, gl.SliceLayout(0, GATHER))
    _copy_block(k, v, k_smem, v_smem, k0, bos, eos, h, gl.arange(0, BN, gl.SliceLayout(1, GATHER)), d, HKV, SB, D)
    r = gl.arange(0, BM, ROWS_L)
    ent = _row_entries(csr_ent, lo, hi, r, G, BM)
    for i in range(gl.cdiv(hi - lo, TT)):
        b = i % 2
        base = lo + i * TT
        ok, e, t = _decode_entries(ent, base, hi, r // G, TT, HKV, S)
        row = gl.where(ok, t * HQ + h * G + r % G, -1).to(gl.int32)
        gl.thread_barrier()
        row_smem.store(row)
        gl.thread_barrier()
        rows = row_smem.load(gl.SliceLayout(1, GATHER))
        ent = _row_entries(csr_ent, base + TT, hi, r, G, BM)
        mbarrier.wait(empty.index(b), ((i // 2) & 1) ^ 1)
        _gather_rows(q, do, q_smem.index(b), do_smem.index(b), rows, d, D)
        async_copy.async_copy_global_to_shared(lse_smem.index(b), lse + row, mask=ok)
        async_copy.async_copy_global_to_shared(delta_smem.index(b), delta + row, mask=ok)
        async_copy.commit_group()
        async_copy.mbarrier_arrive(full.index(b), increment_count=False)
        gl.store(part_row + _range_selection(e, t, e_base, h0, HKV, HR, S), (step0 + i) * BM + r,
                 mask=ok & (r % G == 0))  # fmt: skip
    async_copy.wait_group(0)


@gluon.jit
def _consumers(gates, csr_ent, dq_desc, dk_part, dv_part, k_smem, v_smem, q_smem, do_smem, p_smem, ds_smem, lse_smem,
               delta_smem, dq_smem, full, empty, k0, bos, eos, lo, hi, h, step0, row0, scale, scale2,
               HQ: gl.constexpr, HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr,
               SB: gl.constexpr, S: gl.constexpr, C: gl.constexpr):  # fmt: skip
    # the step chain of slc_bwd_kernel_block_async on the producer's buffers; the dQ tile leaves by TMA at the end
    # of its step, the dK/dV partials at the end of the item
    TT: gl.constexpr = BM // G
    BN: gl.constexpr = k_smem.shape[0]
    S_L: gl.constexpr = _mma_layout(BM, BN, CONSUMER_WARPS)
    DQ_L: gl.constexpr = _mma_layout(BM, D, CONSUMER_WARPS)
    DKV_L: gl.constexpr = _mma_layout(BN, D, CONSUMER_WARPS)
    dtype: gl.constexpr = q_smem.dtype
    r_s = gl.arange(0, BM, gl.SliceLayout(1, S_L))
    n_s = gl.arange(0, BN, gl.SliceLayout(0, S_L))
    key_limit = gl.where(n_s < SB, (eos - bos - k0).to(gl.int32), 0)
    masked = lo + _masked_entries(csr_ent, lo, hi, k0, bos, eos, n_s, HKV, S, SB, BN)
    dk_acc = warpgroup_mma_init(gl.zeros([BN, D], gl.float32, DKV_L))
    dv_acc = warpgroup_mma_init(gl.zeros([BN, D], gl.float32, DKV_L))
    for i in range(gl.cdiv(hi - lo, TT)):
        b = i % 2
        base = lo + i * TT
        mbarrier.wait(full.index(b), (i // 2) & 1)
        q_buf = q_smem.index(b)
        do_buf = do_smem.index(b)
        s, dp = _issue_scores(q_buf, do_buf, k_smem, v_smem, S_L, BM, BN)
        dv_acc, dk_acc = warpgroup_mma_wait(2, deps=[dv_acc, dk_acc])
        if i > 0:
            async_copy.mbarrier_arrive(empty.index(1 - b), increment_count=False)
        lse2, delta_row = _softmax_rows(lse_smem.index(b), delta_smem.index(b), gl.SliceLayout(1, S_L))
        dq, dv_acc, dk_acc = _step_products(s, dp, lse2, delta_row, gates, csr_ent, q_buf, do_buf, k_smem, p_smem,
                                            ds_smem, dv_acc, dk_acc, base, hi, masked, bos, k0, h, r_s, n_s,
                                            key_limit, scale2, DQ_L, HQ, HKV, G, TT, S, C)  # fmt: skip
        dq = warpgroup_mma_wait(2, deps=[dq])
        tma.store_wait(0)
        dq_smem.store((dq * scale).to(dtype))
        fence_async_shared()
        gl.thread_barrier()
        tma.async_copy_shared_to_global(dq_desc, [(step0 + i) * BM, 0], dq_smem)
    dv_acc, dk_acc = warpgroup_mma_wait(0, deps=[dv_acc, dk_acc])
    tma.store_wait(0)
    _store_dkv_partial(dk_acc, dv_acc, dk_part, dv_part, row0, scale, DKV_L)


@gluon.jit
def slc_bwd_kernel_block_ws(
    q, k, v, do, gates, lse, delta, dq_desc, part_row, dk_part, dv_part, cu_seqlens, blk_seq, blk_start, csr_ent,
    item_row, item_lo, item_hi, item_step, NB, e_base, h0, item_base, scale, scale2,
    HQ: gl.constexpr, HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
    SB: gl.constexpr, S: gl.constexpr, C: gl.constexpr, HR: gl.constexpr, PRODUCER_WARPS: gl.constexpr,
    PRODUCER_REGS: gl.constexpr,
    num_warps: gl.constexpr,
):  # fmt: skip
    # arguments as slc_bwd_kernel_block_async; num_warps = CONSUMER_WARPS, launched with LAUNCH
    dtype: gl.constexpr = q.dtype.element_ty
    pid = gl.program_id(0)
    h, k0, bos, eos, lo, hi = _work_item(item_row, item_lo, item_hi, blk_seq, blk_start, cu_seqlens, pid, NB)
    step0 = gl.load(item_step + pid)
    k_smem, v_smem, q_smem, do_smem, p_smem, ds_smem, lse_smem, delta_smem = _dkv_buffers(dtype, BM, BN, D)
    dq_smem = gl.allocate_shared_memory(dtype, [BM, D], dq_desc.layout)
    row_smem = gl.allocate_shared_memory(gl.int32, [BM], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    full = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for b in gl.static_range(2):
        mbarrier.init(full.index(b), count=32 * PRODUCER_WARPS)
        mbarrier.init(empty.index(b), count=32 * CONSUMER_WARPS)
    fence_async_shared()
    gl.warp_specialize(
        [
            (_consumers, (gates, csr_ent, dq_desc, dk_part, dv_part, k_smem, v_smem, q_smem, do_smem, p_smem, ds_smem,
                          lse_smem, delta_smem, dq_smem, full, empty, k0, bos, eos, lo, hi, h, step0,
                          (item_base + pid).to(gl.int64) * BN, scale, scale2, HQ, HKV, G, D, BM, SB, S, C)),
            (_producer, (q, k, v, do, lse, delta, csr_ent, part_row, k_smem, v_smem, q_smem, do_smem, lse_smem,
                         delta_smem, row_smem, full, empty, k0, bos, eos, lo, hi, h, step0, e_base, h0, HQ, HKV, G,
                         D, BM, SB, S, HR, PRODUCER_WARPS)),
        ],
        [PRODUCER_WARPS],
        [PRODUCER_REGS],
    )  # fmt: skip

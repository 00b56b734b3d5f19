"""Compression and window attention with asynchronous copies and warpgroup MMAs (Gluon, Hopper): the same work,
arguments and outputs as the ``CMP`` / ``SWD`` modes of :mod:`nsa_kernels.attention`, whose Triton kernels stay the
readable versions and the ones the CPU interpreter runs.

- Forward and dQ (query-outer): a program holds one query tile (``BM // G`` tokens × the G heads of a KV head) in
  registers as the A operand of S = Q·Kᵀ (in shared memory where ``BN == D``) and loads the ``BN`` keys and values of
  step j + 1 by TMA (:func:`key_descriptors`, one mbarrier per buffer) while step j runs its MMAs. The forward keeps
  P in registers as the A operand of P·V, the dQ kernel does the same with dS for dS·K. Where ``BM == BN`` the
  forward's query tile lands in, and its output is staged through, the key buffers: 64 KB of shared memory at 64 keys
  per step, three CTAs per SM.
- dK/dV (key-outer): a program holds one 64-key tile and copies the query/dO rows and the LSE/delta rows of the
  next step of tokens while a step runs S = Q·Kᵀ, dP = dO·Vᵀ, dV += Pᵀ·dO and dK += dSᵀ·Q. A step's dV/dK MMAs are
  waited for only once the next step's S/dP are issued, as in the selection backward.
- The window's forward (``FL``) also emits the selection's partial over each row's local blocks, and its dQ and dK/dV
  add the selection's gradients there from the same scores, so the block-outer selection leaves those blocks out.

Triton 3.6 issues these loads only after the previous step's MMAs, and holds both fp32 dK/dV accumulators of the
key-outer kernel in 255 registers with spills; here the accumulators are split over two warpgroups. The key mask is
applied only on the steps that need it (an int32 compare against per-row limits); rows past the range are zero-filled
copies whose products vanish, as in :mod:`nsa_kernels.selection_async`.

TMA loads whole ``BN``-row boxes: past the end of a sequence's keys they bring the next sequence's keys (zeros past
the tensor), which the visibility mask removes from S. Non-finite values there would still reach the output as 0·inf,
as with any kernel that masks scores rather than loads; finite inputs of packed sequences never mix.

Limits (the launchers fall back to the Triton kernels otherwise): compute capability 9.x, 16-bit inputs, a D tile of
64 or 128 equal to D, ``BM`` a multiple of 64, and 64-key tiles for dK/dV.

Shape legend as in :mod:`nsa_kernels.attention`.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from nsa_kernels.selection_async import (
    _copy_block,
    _copy_rows,
    _dkv_buffers,
    _gather_layout,
    _issue_scores,
    _mma_layout,
    _operand_layout,
    _rows_layout,
    _softmax_rows,
    _stage,
    _stage_p_ds,
)

LOG2E = gl.constexpr(1.4426950408889634)


@gluon.jit
def _query_tile(tile_seq, tile_start, cu_seqlens, cu_keys, pid):
    # the tile's first token, its sequence's token bounds and first key
    seq = gl.load(tile_seq + pid)
    return gl.load(tile_start + pid), gl.load(cu_seqlens + seq), gl.load(cu_seqlens + seq + 1), gl.load(cu_keys + seq)


@gluon.jit
def _tile_rows(first, end, r, G: gl.constexpr, TT: gl.constexpr):
    # rows r = token slot · G + head of a step whose first token is first: each row's token, and whether it lies
    # in the step's TT tokens and before end
    t = first + r // G
    return t, (r // G < TT) & (t < end)


@gluon.jit
def _visible_limits(t_rel, row_ok, MODE: gl.constexpr, CL: gl.constexpr, CS: gl.constexpr, W: gl.constexpr):
    # per row of token t_rel (relative to its sequence): the keys it sees are lo < key < hi
    if MODE == 0:
        hi = gl.where(row_ok & (t_rel + 1 >= CL), (t_rel + 1 - CL) // CS + 1, 0)
        lo = hi * 0 - 1
    else:
        hi = gl.where(row_ok, t_rel + 1, 0)
        lo = t_rel - W
    return lo, hi


@gluon.jit
def _mask_visible(x, key, lo, hi, fill):
    # x where key (a row vector of key indices) lies strictly between the row limits lo and hi, fill elsewhere
    return gl.where((key[None, :] > lo[:, None]) & (key[None, :] < hi[:, None]), x, fill)


@gluon.jit
def _key_range(t0, bos, eos, TT: gl.constexpr, BN: gl.constexpr, MODE: gl.constexpr, CL: gl.constexpr,
               CS: gl.constexpr, W: gl.constexpr):  # fmt: skip
    # the keys [start, end) a query tile visits (relative to its sequence) and the end of the leading keys every row
    # of the tile sees, in whole BN steps (steps starting before it run without the mask)
    t_first = t0 - bos
    t_last = gl.minimum(t0 + TT, eos) - 1 - bos
    if MODE == 0:
        start = t_first * 0
        end = gl.maximum((t_last + 1 - CL + CS) // CS, 0)
        full = gl.maximum((t_first + 1 - CL + CS) // CS, 0) // BN * BN
    else:
        start = gl.maximum(t_first - W + 1, 0)
        end = t_last + 1
        full = start
    return start, end, full


@gluon.constexpr_function
def _query_in_registers(BN, D):
    # whether the query tile is the register A operand of S = Q·Kᵀ. Not where BN == D: S and the output accumulator
    # then share one layout, and Triton 3.6 computes wrong S tiles from a register operand (GPU tests, D = 64)
    return BN != D


@gluon.jit
def _query_operand(q_smem, S_L: gl.constexpr, BN: gl.constexpr, D: gl.constexpr):
    # the query tile as the A operand of S = Q·Kᵀ once its copies (the only cp.async group) are done: in registers,
    # or the shared memory tile itself
    async_copy.wait_group(0)
    gl.thread_barrier()
    if _query_in_registers(BN, D):
        q_op = q_smem.load(gl.DotOperandLayout(operand_index=0, parent=S_L, k_width=2))
    else:
        q_op = q_smem
    fence_async_shared()
    return q_op


def row_descriptor(x, block_n: int) -> TensorDescriptor:
    """TMA descriptor of keys (or values) ``[NK, HKV, D]`` as ``[NK, HKV·D]`` rows in ``[block_n, D]`` boxes (of a copy
    where that view is not 16-byte aligned; of one zero row where there are no keys, which no program then loads)."""
    rows = x.reshape(x.shape[0], -1) if x.shape[0] else x.new_zeros(1, x.shape[1] * x.shape[2])
    if rows.data_ptr() % 16:
        rows = rows.clone()
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    return TensorDescriptor.from_tensor(rows, [block_n, x.shape[-1]], layout)


def key_descriptors(k, v, block_n: int) -> tuple[TensorDescriptor, TensorDescriptor]:
    """:func:`row_descriptor` of the keys and of the values."""
    return row_descriptor(k, block_n), row_descriptor(v, block_n)


@gluon.jit
def _load_keys(k_desc, v_desc, k_smem, v_smem, bars, i, kbos, key0, end, h, D: gl.constexpr):
    # start the TMA loads of the key (and, unless v_desc is None, value) rows [key0, key0 + BN) of KV head h into
    # buffer i, onto its mbarrier, if key0 < end
    ok = key0 < end
    if v_desc is None:
        mbarrier.expect(bars.index(i), k_desc.block_type.nbytes, pred=ok)
    else:
        mbarrier.expect(bars.index(i), 2 * k_desc.block_type.nbytes, pred=ok)
    tma.async_copy_global_to_shared(k_desc, [kbos + key0, h * D], bars.index(i), k_smem.index(i), pred=ok)
    if v_desc is not None:
        tma.async_copy_global_to_shared(v_desc, [kbos + key0, h * D], bars.index(i), v_smem.index(i), pred=ok)


@gluon.jit
def _key_barriers():
    # one mbarrier per key buffer
    bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bars.index(0), count=1)
    mbarrier.init(bars.index(1), count=1)
    gl.thread_barrier()
    return bars


@gluon.jit
def _start_keys(k_desc, v_desc, k_smem, v_smem, kbos, start, end, h, D: gl.constexpr):
    # one mbarrier per key buffer, and the loads of the first step's keys into buffer 0
    bars = _key_barriers()
    _load_keys(k_desc, v_desc, k_smem, v_smem, bars, 0, kbos, start, end, h, D)
    return bars


@gluon.jit
def _next_keys(k_desc, v_desc, k_smem, v_smem, bars, j, kbos, next_key0, end, h, D: gl.constexpr):
    # at step j: once every warp is done with the other buffer (step j - 1), start the loads of step j + 1 (first key
    # next_key0, if below end) into it, then wait for step j's keys
    gl.thread_barrier()
    _load_keys(k_desc, v_desc, k_smem, v_smem, bars, (j + 1) % 2, kbos, next_key0, end, h, D)
    mbarrier.wait(bars.index(j % 2), (j // 2) & 1)


@gluon.jit
def _local_bound(t_rel, BN: gl.constexpr, FL: gl.constexpr):
    # the first key of the FL most recent BN-key blocks of a token at t_rel (its own block and FL - 1 before it)
    return gl.maximum((t_rel // BN - FL + 1) * BN, 0)


@gluon.jit
def _store_local(acc, m_i, l_i, o_loc, lse_loc, stage, r_s, t_s, row_ok, t0, bos, eos, key0, h, HQ: gl.constexpr,
                 G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, FL: gl.constexpr,
                 O_L: gl.constexpr, GATHER: gl.constexpr):  # fmt: skip
    # the partial output (o_loc, normalised, input dtype; staged through the free key buffer stage) and base-2 LSE
    # (lse_loc) of the rows whose local blocks start at key0: the window's state once its descending steps reach key0
    TT: gl.constexpr = BM // G
    done = row_ok & (_local_bound(t_s - bos, BN, FL) == key0)
    gl.store(lse_loc + t_s * HQ + h * G + r_s % G, m_i + gl.log2(l_i), mask=done)
    l_o = gl.convert_layout(gl.where(done, l_i, 1.0), gl.SliceLayout(1, O_L))
    stage.store((acc * (1.0 / l_o)[:, None]).to(stage.dtype))
    gl.thread_barrier()
    r = gl.arange(0, BM, gl.SliceLayout(1, GATHER))
    t, ok = _tile_rows(t0, eos, r, G, TT)
    d = gl.arange(0, D, gl.SliceLayout(0, GATHER))
    rows = (t.to(gl.int64) * HQ + h * G + r % G)[:, None] * D + d[None, :]
    done_g = ok & (_local_bound(t - bos, BN, FL) == key0)
    gl.store(o_loc + rows, stage.load(GATHER), mask=done_g[:, None])
    fence_async_shared()


@gluon.jit
def branch_fwd_kernel_attn_async(
    q, k_desc, v_desc, o, lse, o_loc, lse_loc, cu_seqlens, cu_keys, tile_seq, tile_start, scale2,
    HQ: gl.constexpr, HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
    MODE: gl.constexpr, CL: gl.constexpr, CS: gl.constexpr, W: gl.constexpr, FL: gl.constexpr,
    num_warps: gl.constexpr,
):  # fmt: skip
    # arguments as branch_fwd_kernel_attn (MODE CMP or SWD, BD = D), K and V as descriptors of key_descriptors.
    # FL > 0 (SWD, BN the selection block, FL·BN <= W): the keys run in BN-aligned steps from the last one down, and
    # each row's state once they have covered its FL most recent blocks is the selection's partial of those blocks,
    # stored to o_loc / lse_loc (_store_local) through the key buffer the step has just finished with
    TT: gl.constexpr = BM // G
    GATHER: gl.constexpr = _gather_layout(num_warps)
    S_L: gl.constexpr = _mma_layout(BM, BN, num_warps)
    O_L: gl.constexpr = _mma_layout(BM, D, num_warps)
    P_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_L, k_width=2)
    SMEM: gl.constexpr = _operand_layout()
    dtype: gl.constexpr = q.dtype.element_ty

    pid = gl.program_id(0)
    h = gl.program_id(1)
    t0, bos, eos, kbos = _query_tile(tile_seq, tile_start, cu_seqlens, cu_keys, pid)
    start, end, full = _key_range(t0, bos, eos, TT, BN, MODE, CL, CS, W)
    k_smem = gl.allocate_shared_memory(dtype, [2, BN, D], SMEM)
    v_smem = gl.allocate_shared_memory(dtype, [2, BN, D], SMEM)
    if BM == BN and _query_in_registers(BN, D):
        q_smem = k_smem.index(1)
        o_smem = k_smem.index(0)
    else:
        q_smem = gl.allocate_shared_memory(dtype, [BM, D], SMEM)
        o_smem = q_smem

    d = gl.arange(0, D, gl.SliceLayout(0, GATHER))
    r_g = gl.arange(0, BM, gl.SliceLayout(1, GATHER))
    t_g, ok_g = _tile_rows(t0, eos, r_g, G, TT)
    _copy_rows(q, q_smem, t_g.to(gl.int64), h * G + r_g % G, ok_g, d, HQ, D)
    async_copy.commit_group()
    if FL > 0:
        step = -BN
        start = start // BN * BN
        first = (end - 1) // BN * BN
        steps = (first - start) // BN + 1
        local_first = _local_bound(t0 - bos, BN, FL)
        local_last = _local_bound(gl.minimum(t0 + TT, eos) - 1 - bos, BN, FL)
    else:
        step = BN
        first = start
        steps = gl.cdiv(end - start, BN)
    bars = _start_keys(k_desc, v_desc, k_smem, v_smem, kbos, first, end, h, D)
    q_op = _query_operand(q_smem, S_L, BN, D)

    r_s = gl.arange(0, BM, gl.SliceLayout(1, S_L))
    n_s = gl.arange(0, BN, gl.SliceLayout(0, S_L))
    t_s, row_ok = _tile_rows(t0, eos, r_s, G, TT)
    vis_lo, vis_hi = _visible_limits(t_s - bos, row_ok, MODE, CL, CS, W)
    m_i = gl.full([BM], float("-inf"), gl.float32, gl.SliceLayout(1, S_L))
    l_i = gl.zeros([BM], gl.float32, gl.SliceLayout(1, S_L))
    acc = gl.zeros([BM, D], gl.float32, O_L)
    for j in range(steps):
        key0 = first + j * step
        next_end = gl.where(j + 1 < steps, end, key0 + step)
        _next_keys(k_desc, v_desc, k_smem, v_smem, bars, j, kbos, key0 + step, next_end, h, D)
        s = warpgroup_mma(q_op, k_smem.index(j % 2).permute((1, 0)), gl.zeros([BM, BN], gl.float32, S_L),
                          use_acc=False, is_async=True)  # fmt: skip
        s = warpgroup_mma_wait(0, deps=[s]) * scale2
        if key0 + BN > full:
            s = _mask_visible(s, key0 + n_s, vis_lo, vis_hi, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2(s - m_safe[:, None])
        alpha = gl.exp2(m_i - m_safe)
        l_i = l_i * alpha + gl.sum(p, 1)
        m_i = m_new
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
        acc = warpgroup_mma(gl.convert_layout(p.to(dtype), P_L), v_smem.index(j % 2), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=[acc])
        if FL > 0:  # noqa: SIM102 (a compile-time branch around a runtime one)
            if (key0 == local_first) | (key0 == local_last):
                _store_local(acc, m_i, l_i, o_loc, lse_loc, k_smem.index(j % 2), r_s, t_s, row_ok, t0, bos, eos, key0,
                             h, HQ, G, D, BM, BN, FL, O_L, GATHER)  # fmt: skip

    has_key = l_i > 0
    l_safe = gl.where(has_key, l_i, 1.0)
    gl.store(lse + t_s * HQ + h * G + r_s % G, gl.where(has_key, (m_i + gl.log2(l_safe)) / LOG2E, float("-inf")),
             mask=row_ok)  # fmt: skip
    out = acc * gl.convert_layout(1.0 / l_safe, gl.SliceLayout(1, O_L))[:, None]
    gl.thread_barrier()
    o_smem.store(out.to(dtype))
    gl.thread_barrier()
    rows = (t_g.to(gl.int64) * HQ + h * G + r_g % G)[:, None] * D + d[None, :]
    gl.store(o + rows, o_smem.load(GATHER), mask=ok_g[:, None])


@gluon.constexpr_function
def _partial_buffers(wanted, BM, BN, D, part_bytes):
    # the [BM, D] partial tiles of the dQ epilogue: wanted, or (wanted = 0) as many as fit in the shared memory that
    # the query, dO and key buffers leave free after the main loop; at least two
    fit = (2 * BM + 4 * BN) * D * 2 // (BM * D * part_bytes)
    return gl.constexpr(max(2, wanted or fit))


@gluon.jit
def _copy_partial(slc_part, slc_row, buf, first_sel, slot, g, ok, d, D: gl.constexpr, S: gl.constexpr):
    # start the copy of one slot's dQ partial rows (zeros where the slot is empty or past S) as one commit group
    has_slot = ok & (slot < S)
    row = gl.load(slc_row + first_sel + slot, mask=has_slot, other=-1)
    rows = row.to(gl.int64) + g
    async_copy.async_copy_global_to_shared(buf, slc_part + rows[:, None] * D + d[None, :], mask=(row >= 0)[:, None])
    async_copy.commit_group()


@gluon.jit
def _store_dq_with_partials(acc, dq, dq_out, slc_part, slc_row, part_t0, t, g, ok, h, h0, d, LAYOUT: gl.constexpr,
                            HQ: gl.constexpr, HR: gl.constexpr, G: gl.constexpr, D: gl.constexpr, S: gl.constexpr,
                            BM: gl.constexpr, NBUF: gl.constexpr, ACCUMULATE: gl.constexpr):  # fmt: skip
    # store the dQ tile acc plus the selection dQ partials of its rows (token t, head h·G + g; the partials of KV heads
    # [h0, h0 + HR), summed as in attention._selection_dq_sum) in the 16-byte row pieces of LAYOUT. The partial tiles
    # arrive by asynchronous copies NBUF - 1 slots ahead, into shared memory the main loop no longer uses.
    total = gl.convert_layout(acc, LAYOUT)
    part_type: gl.constexpr = slc_part.dtype.element_ty
    tiles: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=part_type.primitive_bitwidth)
    bufs = gl.allocate_shared_memory(part_type, [NBUF, BM, D], tiles)
    first_sel = ((t - part_t0) * HR + h - h0) * S
    for i in gl.static_range(NBUF - 1):
        _copy_partial(slc_part, slc_row, bufs.index(i), first_sel, i, g, ok, d, D, S)
    for slot in range(S):
        async_copy.wait_group(NBUF - 2)
        gl.thread_barrier()
        ahead = slot + NBUF - 1
        _copy_partial(slc_part, slc_row, bufs.index(ahead % NBUF), first_sel, ahead, g, ok, d, D, S)
        total += bufs.index(slot % NBUF).load(LAYOUT).to(gl.float32)
    async_copy.wait_group(0)
    offs = (t * HQ + h * G + g)[:, None] * D + d[None, :]
    if ACCUMULATE:
        total += gl.load(dq + offs, mask=ok[:, None], other=0.0)
    gl.store(dq_out + offs, total.to(dq_out.dtype.element_ty), mask=ok[:, None])


@gluon.jit
def _local_rows(lse_loc, delta_loc, gates, rows, ok):
    # the selection's base-2 LSE (+inf where ok is false, so P is 0 there), delta and gate of the rows
    lse_row = gl.load(lse_loc + rows, mask=ok, other=float("-inf"))
    lse2 = gl.where(lse_row == float("-inf"), float("inf"), lse_row * LOG2E)
    delta_row = gl.load(delta_loc + rows, mask=ok, other=0.0)
    return lse2, delta_row, gl.load(gates + rows * 3 + 1, mask=ok, other=0.0).to(gl.float32)


@gluon.jit
def _window_local_step(s, dp, scale2, lse2, gate, delta_row, coef_a, coef_b, in_local, exact, lse_loc, delta_loc, gates,
                       rows, key, vis_lo, vis_hi):  # fmt: skip
    # one window step's gate·P + gate_loc·P_loc and dS = P·(gate·dP - delta) + P_loc·(gate_loc·dP - delta_loc), P the
    # window's probabilities under its mask, P_loc the selection's on the rows in_local (all keys of the step being
    # among those rows' local blocks). Unless exact, P_loc = P·ratio with the per-row coefficients of
    # attention.local_coefficients (coef_a = ratio·gate_loc, coef_b = ratio·delta_loc), so no second exponential;
    # exact: from the selection's own LSE, delta and gate rows
    p = _mask_visible(gl.exp2(s * scale2 - lse2[:, None]), key, vis_lo, vis_hi, 0.0)
    if exact:
        lse2_loc, delta_loc_row, gate_loc = _local_rows(lse_loc, delta_loc, gates, rows, in_local)
        p_loc = _mask_visible(gl.exp2(s * scale2 - lse2_loc[:, None]), key, vis_lo, vis_hi, 0.0)
        pv = p * gate[:, None] + p_loc * gate_loc[:, None]
        ds = p * (dp * gate[:, None] - delta_row[:, None]) + p_loc * (dp * gate_loc[:, None] - delta_loc_row[:, None])
    else:
        c1 = gate + gl.where(in_local, coef_a, 0.0)
        c2 = delta_row + gl.where(in_local, coef_b, 0.0)
        pv = p * c1[:, None]
        ds = p * (dp * c1[:, None] - c2[:, None])
    return pv, ds


@gluon.jit
def _dq_steps(acc, q_op, do_buf, k_desc, v_desc, k_smem, v_smem, bars, step0, kbos, t0, bos, eos, h, lse, delta,
              gates, lse_loc, delta_loc, coef_a, coef_b, scale2, HQ: gl.constexpr, G: gl.constexpr, D: gl.constexpr,
              BM: gl.constexpr, BN: gl.constexpr, MODE: gl.constexpr, C: gl.constexpr, CL: gl.constexpr,
              CS: gl.constexpr, W: gl.constexpr, SB: gl.constexpr, FL: gl.constexpr, EXACT: gl.constexpr,
              num_warps: gl.constexpr):  # fmt: skip
    # add one branch's dQ of the tile at token t0 (its dO rows in do_buf, its keys from kbos on) into acc; the key
    # steps are numbered from step0 on (buffer and mbarrier phase), the first one loaded here. Returns (acc, the next
    # step's number). FL > 0 (SWD, dO ungated, C >= 0, BN dividing SB): also the selection's dQ over each row's FL
    # most recent blocks of SB keys (_window_local_step: the selection's LSE and delta rows lse_loc, delta_loc, the
    # per-row coefficients coef_a, coef_b of attention.local_coefficients, EXACT as its flag); the steps start at a
    # multiple of BN, so each lies inside one block and a row's local blocks hold all of it or none.
    TT: gl.constexpr = BM // G
    S_L: gl.constexpr = _mma_layout(BM, BN, num_warps)
    DS_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=_mma_layout(BM, D, num_warps), k_width=2)
    dtype: gl.constexpr = do_buf.dtype
    start, end, full = _key_range(t0, bos, eos, TT, BN, MODE, CL, CS, W)
    if FL > 0:
        start = start // BN * BN
    _load_keys(k_desc, v_desc, k_smem, v_smem, bars, step0 % 2, kbos, start, end, h, D)
    r_s = gl.arange(0, BM, gl.SliceLayout(1, S_L))
    n_s = gl.arange(0, BN, gl.SliceLayout(0, S_L))
    t_s, row_ok = _tile_rows(t0, eos, r_s, G, TT)
    rows_s = t_s * HQ + h * G + r_s % G
    vis_lo, vis_hi = _visible_limits(t_s - bos, row_ok, MODE, CL, CS, W)
    lse_row = gl.load(lse + rows_s, mask=row_ok, other=float("-inf"))
    lse2 = gl.where(lse_row == float("-inf"), float("inf"), lse_row * LOG2E)
    delta_row = gl.load(delta + rows_s, mask=row_ok, other=0.0)
    if C >= 0:
        gate = gl.load(gates + rows_s * 3 + C, mask=row_ok, other=0.0).to(gl.float32)
    if FL > 0:
        row_a = gl.load(coef_a + rows_s, mask=row_ok, other=0.0)
        row_b = gl.load(coef_b + rows_s, mask=row_ok, other=0.0)
        bound = _local_bound(t_s - bos, SB, FL)
    steps = gl.cdiv(end - start, BN)
    for j in range(steps):
        step = step0 + j
        key0 = start + j * BN
        _next_keys(k_desc, v_desc, k_smem, v_smem, bars, step, kbos, key0 + BN, end, h, D)
        s = warpgroup_mma(q_op, k_smem.index(step % 2).permute((1, 0)), gl.zeros([BM, BN], gl.float32, S_L),
                          use_acc=False, is_async=True)  # fmt: skip
        dp = warpgroup_mma(do_buf, v_smem.index(step % 2).permute((1, 0)), gl.zeros([BM, BN], gl.float32, S_L),
                           use_acc=False, is_async=True)  # fmt: skip
        s, dp = warpgroup_mma_wait(0, deps=[s, dp])
        if FL > 0:
            in_local = key0 >= bound
            _, ds = _window_local_step(s, dp, scale2, lse2, gate, delta_row, row_a, row_b, in_local, EXACT, lse_loc,
                                       delta_loc, gates, rows_s, key0 + n_s, vis_lo, vis_hi)  # fmt: skip
        else:
            p = gl.exp2(s * scale2 - lse2[:, None])
            if key0 + BN > full:
                p = _mask_visible(p, key0 + n_s, vis_lo, vis_hi, 0.0)
            dp_branch = dp
            if C >= 0:
                dp_branch = dp * gate[:, None]
            ds = p * (dp_branch - delta_row[:, None])
        ds = gl.convert_layout(ds.to(dtype), DS_L)
        acc = warpgroup_mma(ds, k_smem.index(step % 2), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=[acc])
    return acc, step0 + steps


@gluon.jit
def branch_bwd_kernel_dq_async(
    q, k_desc, v_desc, do, gates, lse, delta, dq, dq_out, cu_seqlens, cu_keys, tile_seq, tile_start, slc_part, slc_row,
    part_t0, h0, tile0, scale, scale2, wk_desc, wv_desc, w_do, w_lse, w_delta, w_lse_loc, w_delta_loc, coef_a, coef_b,
    exact_flag,
    HQ: gl.constexpr, HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
    MODE: gl.constexpr, C: gl.constexpr, CL: gl.constexpr, CS: gl.constexpr, W: gl.constexpr,
    ACCUMULATE: gl.constexpr, PART_S: gl.constexpr, PART_HR: gl.constexpr, PART_BUFFERS: gl.constexpr,
    WINDOW_C: gl.constexpr, SB: gl.constexpr, FL: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    # arguments as branch_bwd_kernel_dq (MODE CMP or SWD, BD = D), K and V as descriptors of key_descriptors;
    # PART_BUFFERS as async_dq_partial_buffers. WINDOW_C > -2 (MODE CMP, Q in registers): the window branch's dQ of
    # the same tiles too, from the window's keys (wk_desc, wv_desc: key_descriptors of K and V), dO rows, LSE and delta
    # (WINDOW_C as C for its gate); its dO rows wait in the query buffer while the compression keys run. FL > 0 (with
    # WINDOW_C >= 0): the window's steps add the selection's dQ over each row's FL most recent blocks of SB keys too
    # (_dq_steps; the selection's LSE and delta rows w_lse_loc, w_delta_loc, the coefficients coef_a, coef_b and
    # exact_flag of attention.local_coefficients), whose partials the selection left out.
    TT: gl.constexpr = BM // G
    GATHER: gl.constexpr = _gather_layout(num_warps)
    S_L: gl.constexpr = _mma_layout(BM, BN, num_warps)
    DQ_L: gl.constexpr = _mma_layout(BM, D, num_warps)
    SMEM: gl.constexpr = _operand_layout()
    dtype: gl.constexpr = q.dtype.element_ty

    pid = gl.program_id(0) + tile0
    h = h0 + gl.program_id(1)
    t0, bos, eos, kbos = _query_tile(tile_seq, tile_start, cu_seqlens, cu_keys, pid)
    q_smem = gl.allocate_shared_memory(dtype, [BM, D], SMEM)
    do_smem = gl.allocate_shared_memory(dtype, [BM, D], SMEM)
    k_smem = gl.allocate_shared_memory(dtype, [2, BN, D], SMEM)
    v_smem = gl.allocate_shared_memory(dtype, [2, BN, D], SMEM)

    d = gl.arange(0, D, gl.SliceLayout(0, GATHER))
    r_g = gl.arange(0, BM, gl.SliceLayout(1, GATHER))
    t_g, ok_g = _tile_rows(t0, eos, r_g, G, TT)
    _copy_rows(q, q_smem, t_g.to(gl.int64), h * G + r_g % G, ok_g, d, HQ, D)
    _copy_rows(do, do_smem, t_g.to(gl.int64), h * G + r_g % G, ok_g, d, HQ, D)
    async_copy.commit_group()
    bars = _key_barriers()
    q_op = _query_operand(q_smem, S_L, BN, D)
    if WINDOW_C > -2:
        gl.thread_barrier()
        _copy_rows(w_do, q_smem, t_g.to(gl.int64), h * G + r_g % G, ok_g, d, HQ, D)
        async_copy.commit_group()

    acc = gl.zeros([BM, D], gl.float32, DQ_L)
    acc, step = _dq_steps(acc, q_op, do_smem, k_desc, v_desc, k_smem, v_smem, bars, 0, kbos, t0, bos, eos, h, lse,
                          delta, gates, lse, delta, lse, delta, scale2, HQ, G, D, BM, BN, MODE, C, CL, CS, W, SB, 0,
                          False, num_warps)  # fmt: skip
    if WINDOW_C > -2:
        async_copy.wait_group(0)
        gl.thread_barrier()
        fence_async_shared()
        if FL == 0:
            acc, step = _dq_steps(acc, q_op, q_smem, wk_desc, wv_desc, k_smem, v_smem, bars, step, bos, t0, bos, eos, h,
                                  w_lse, w_delta, gates, w_lse, w_delta, w_lse, w_delta, scale2, HQ, G, D, BM, BN, 2,
                                  WINDOW_C, CL, CS, W, SB, 0, False, num_warps)  # fmt: skip
        elif gl.load(exact_flag) != 0:
            acc, step = _dq_steps(acc, q_op, q_smem, wk_desc, wv_desc, k_smem, v_smem, bars, step, bos, t0, bos, eos, h,
                                  w_lse, w_delta, gates, w_lse_loc, w_delta_loc, coef_a, coef_b, scale2, HQ, G, D, BM,
                                  BN, 2, WINDOW_C, CL, CS, W, SB, FL, True, num_warps)  # fmt: skip
        else:
            acc, step = _dq_steps(acc, q_op, q_smem, wk_desc, wv_desc, k_smem, v_smem, bars, step, bos, t0, bos, eos, h,
                                  w_lse, w_delta, gates, w_lse_loc, w_delta_loc, coef_a, coef_b, scale2, HQ, G, D, BM,
                                  BN, 2, WINDOW_C, CL, CS, W, SB, FL, False, num_warps)  # fmt: skip

    if PART_S > 0:
        PART_BYTES: gl.constexpr = slc_part.dtype.element_ty.primitive_bitwidth // 8
        NBUF: gl.constexpr = _partial_buffers(PART_BUFFERS, BM, BN, D, PART_BYTES)
        _store_dq_with_partials(acc * scale, dq, dq_out, slc_part, slc_row, part_t0, t_g.to(gl.int64), r_g % G, ok_g,
                                h, h0, d, GATHER, HQ, PART_HR, G, D, PART_S, BM, NBUF, ACCUMULATE)  # fmt: skip
    else:
        r_o = gl.arange(0, BM, gl.SliceLayout(1, DQ_L))
        d_o = gl.arange(0, D, gl.SliceLayout(0, DQ_L))
        t_o, ok_o = _tile_rows(t0, eos, r_o, G, TT)
        offs = (t_o.to(gl.int64) * HQ + h * G + r_o % G)[:, None] * D + d_o[None, :]
        acc = acc * scale
        if ACCUMULATE:
            acc += gl.load(dq + offs, mask=ok_o[:, None], other=0.0)
        gl.store(dq_out + offs, acc.to(dq_out.dtype.element_ty), mask=ok_o[:, None])


@gluon.jit
def _copy_token_step(q, do, lse, delta, q_buf, do_buf, lse_buf, delta_buf, bos, base, hi, h, r_g, r_rows, d,
                     G: gl.constexpr, TT: gl.constexpr, HQ: gl.constexpr, D: gl.constexpr):  # fmt: skip
    # start the copies of the query, dO, LSE and delta rows of the tokens [base, base + TT) ∩ [.., hi) (relative to
    # the sequence), zeros past hi, as one commit group
    t_rel, ok = _tile_rows(base, hi, r_g, G, TT)
    t = (bos + t_rel).to(gl.int64)
    _copy_rows(q, q_buf, t, h * G + r_g % G, ok, d, HQ, D)
    _copy_rows(do, do_buf, t, h * G + r_g % G, ok, d, HQ, D)
    t_rows, ok_r = _tile_rows(base, hi, r_rows, G, TT)
    row = (bos + t_rows).to(gl.int64) * HQ + h * G + r_rows % G
    async_copy.async_copy_global_to_shared(lse_buf, lse + row, mask=ok_r)
    async_copy.async_copy_global_to_shared(delta_buf, delta + row, mask=ok_r)
    async_copy.commit_group()


@gluon.jit
def _token_range(k0, bos, eos, split, TT: gl.constexpr, BN: gl.constexpr, MODE: gl.constexpr, CL: gl.constexpr,
                 CS: gl.constexpr, W: gl.constexpr, NSPLIT: gl.constexpr, SPAN: gl.constexpr):  # fmt: skip
    # the tokens [lo, hi) that the key tile k0 visits in this split (relative to the sequence), and the first token
    # from which every row of a step sees every key of the tile and (SWD) the last step start for which that holds
    if MODE == 0:
        first = k0 * CS + CL - 1
        span = gl.cdiv(gl.cdiv(gl.maximum(eos - bos - first, 0), NSPLIT), TT) * TT
        if SPAN > 0:
            span = span * 0 + SPAN
        lo = first + split * span
        hi = gl.minimum(lo + span, eos - bos)
        open_lo = (k0 + BN - 1) * CS + CL - 1
        open_hi = hi
    else:
        lo = k0
        hi = gl.minimum(k0 + BN - 1 + W, eos - bos)
        open_lo = k0 + BN - 1
        open_hi = k0 + W - TT
    return lo, hi, open_lo, open_hi


@gluon.jit
def _key_tile(ktile_seq, ktile_start, cu_seqlens, cu_keys, pid):
    # key tile pid of a key-outer kernel: its first key (relative to its sequence), the sequence's token bounds, its
    # first key in the key tensor and its key count
    seq = gl.load(ktile_seq + pid)
    kbos = gl.load(cu_keys + seq)
    return (gl.load(ktile_start + pid), gl.load(cu_seqlens + seq), gl.load(cu_seqlens + seq + 1), kbos,
            gl.load(cu_keys + seq + 1) - kbos)  # fmt: skip


@gluon.jit
def _stage_scores(s, dp, lse2, delta_row, gate, masked, t_rel, row_ok, key, scale2, p_smem, ds_smem,
                  MODE: gl.constexpr, CL: gl.constexpr, CS: gl.constexpr, W: gl.constexpr):  # fmt: skip
    # a dK/dV step's P and dS (_stage_p_ds) from its scores, under the visibility mask of rows t_rel where masked
    p = gl.exp2(s * scale2 - lse2[:, None])
    if masked:
        vis_lo, vis_hi = _visible_limits(t_rel, row_ok, MODE, CL, CS, W)
        p = _mask_visible(p, key, vis_lo, vis_hi, 0.0)
    _stage_p_ds(p, dp, delta_row, gate, p_smem, ds_smem)


@gluon.jit
def _stage_step(s, dp, lse2, delta_row, gate, masked, t_c, ok_c, rows_c, base, k0, key, scale2, p_smem, ds_smem,
                lse_loc, delta_loc, coef_a, coef_b, exact, gates, MODE: gl.constexpr, CL: gl.constexpr,
                CS: gl.constexpr, W: gl.constexpr, BN: gl.constexpr, FL: gl.constexpr):  # fmt: skip
    # a dK/dV step's P and dS once its S/dP MMAs finish: _stage_scores, or where the key tile is one of the rows' FL
    # local blocks, _window_local_step with the selection's terms (the per-row coefficients loaded before the wait)
    if FL > 0:
        in_local = ok_c & (t_c < k0 + FL * BN)
        row_a = gl.load(coef_a + rows_c, mask=in_local, other=0.0)
        row_b = gl.load(coef_b + rows_c, mask=in_local, other=0.0)
    s, dp = warpgroup_mma_wait(0, deps=[s, dp])
    if FL > 0:  # noqa: SIM102 (a compile-time branch around a runtime one)
        if base < k0 + FL * BN:
            loc_lo, loc_hi = _visible_limits(t_c, ok_c, MODE, CL, CS, W)
            pv, ds = _window_local_step(s, dp, scale2, lse2, gate, delta_row, row_a, row_b, in_local, exact, lse_loc,
                                        delta_loc, gates, rows_c, key, loc_lo, loc_hi)  # fmt: skip
            _stage(pv, ds, p_smem, ds_smem)
    if (FL == 0) | (base >= k0 + FL * BN):
        _stage_scores(s, dp, lse2, delta_row, gate, masked, t_c, ok_c, key, scale2, p_smem, ds_smem, MODE, CL, CS, W)


@gluon.jit
def _store_dkv(dk_acc, dv_acc, dk, dv, split, nk_total, kbos, k0, nks, h, scale, HKV: gl.constexpr, D: gl.constexpr,
               BN: gl.constexpr, DKV_L: gl.constexpr, ACCUMULATE: gl.constexpr):  # fmt: skip
    # a key tile's fp32 dK (times scale) and dV into its split's rows of dk / dv, added to them where ACCUMULATE
    n_out = gl.arange(0, BN, gl.SliceLayout(1, DKV_L))
    d_out = gl.arange(0, D, gl.SliceLayout(0, DKV_L))
    row = split.to(gl.int64) * nk_total + (kbos + k0 + n_out).to(gl.int64)
    offs = row[:, None] * (HKV * D) + h * D + d_out[None, :]
    ok = (k0 + n_out < nks)[:, None]
    dk_acc = dk_acc * scale
    if ACCUMULATE:
        dk_acc += gl.load(dk + offs, mask=ok, other=0.0)
        dv_acc += gl.load(dv + offs, mask=ok, other=0.0)
    gl.store(dk + offs, dk_acc, mask=ok)
    gl.store(dv + offs, dv_acc, mask=ok)


@gluon.jit
def branch_bwd_kernel_dkv_async(
    q, k, v, do, gates, lse, delta, dk, dv, cu_seqlens, cu_keys, ktile_seq, ktile_start, nk_total, scale, scale2,
    lse_loc, delta_loc, coef_a, coef_b, exact_flag,
    HQ: gl.constexpr, HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
    MODE: gl.constexpr, C: gl.constexpr, CL: gl.constexpr, CS: gl.constexpr, W: gl.constexpr,
    NSPLIT: gl.constexpr, SPAN: gl.constexpr, ACCUMULATE: gl.constexpr, FL: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    # arguments as branch_bwd_kernel_dkv (MODE CMP or SWD, BD = D, BN = 64). FL > 0 (SWD, dO ungated, C >= 0, the key
    # tile a selection block): the steps of the tokens for which the tile is one of their FL most recent blocks add
    # the selection's P and dS there too (_window_local_step: its LSE and delta rows lse_loc, delta_loc, the per-row
    # coefficients coef_a, coef_b and exact_flag of attention.local_coefficients), whose partials the selection left out
    TT: gl.constexpr = BM // G
    GATHER: gl.constexpr = _gather_layout(num_warps)
    S_L: gl.constexpr = _mma_layout(BM, BN, num_warps)
    DKV_L: gl.constexpr = _mma_layout(BN, D, num_warps)
    ROWS: gl.constexpr = _rows_layout(num_warps)
    dtype: gl.constexpr = q.dtype.element_ty

    pid = gl.program_id(0)
    h = gl.program_id(1)
    split = gl.program_id(2)
    k0, bos, eos, kbos, nks = _key_tile(ktile_seq, ktile_start, cu_seqlens, cu_keys, pid)
    lo, hi, open_lo, open_hi = _token_range(k0, bos, eos, split, TT, BN, MODE, CL, CS, W, NSPLIT, SPAN)
    k_smem, v_smem, q_smem, do_smem, p_smem, ds_smem, lse_smem, delta_smem = _dkv_buffers(dtype, BM, BN, D)

    d = gl.arange(0, D, gl.SliceLayout(0, GATHER))
    n = gl.arange(0, BN, gl.SliceLayout(1, GATHER))
    r_g = gl.arange(0, BM, gl.SliceLayout(1, GATHER))
    r_rows = gl.arange(0, BM, ROWS)
    _copy_block(k, v, k_smem, v_smem, k0, kbos, kbos + nks, h, n, d, HKV, BN, D)
    _copy_token_step(q, do, lse, delta, q_smem.index(0), do_smem.index(0), lse_smem.index(0), delta_smem.index(0),
                     bos, lo, hi, h, r_g, r_rows, d, G, TT, HQ, D)  # fmt: skip

    r_s = gl.arange(0, BM, gl.SliceLayout(1, S_L))
    n_s = gl.arange(0, BN, gl.SliceLayout(0, S_L))
    dk_acc = warpgroup_mma_init(gl.zeros([BN, D], gl.float32, DKV_L))
    dv_acc = warpgroup_mma_init(gl.zeros([BN, D], gl.float32, DKV_L))
    exact = gl.load(exact_flag) != 0 if FL > 0 else None
    for i in range(gl.cdiv(hi - lo, TT)):
        base = lo + i * TT
        async_copy.wait_group(0)
        fence_async_shared()
        gl.thread_barrier()
        q_buf = q_smem.index(i % 2)
        do_buf = do_smem.index(i % 2)
        s, dp = _issue_scores(q_buf, do_buf, k_smem, v_smem, S_L, BM, BN)
        dv_acc, dk_acc = warpgroup_mma_wait(2, deps=[dv_acc, dk_acc])
        gl.thread_barrier()
        nxt = (i + 1) % 2
        _copy_token_step(q, do, lse, delta, q_smem.index(nxt), do_smem.index(nxt), lse_smem.index(nxt),
                         delta_smem.index(nxt), bos, base + TT, hi, h, r_g, r_rows, d, G, TT, HQ, D)  # fmt: skip
        lse2, delta_row = _softmax_rows(lse_smem.index(i % 2), delta_smem.index(i % 2), gl.SliceLayout(1, S_L))
        t_c, ok_c = _tile_rows(base, hi, r_s, G, TT)
        rows_c = (bos + t_c) * HQ + h * G + r_s % G
        gate = gl.load(gates + rows_c * 3 + C, mask=ok_c, other=0.0).to(gl.float32) if C >= 0 else None
        _stage_step(s, dp, lse2, delta_row, gate, (base < open_lo) | (base > open_hi), t_c, ok_c, rows_c, base, k0,
                    k0 + n_s, scale2, p_smem, ds_smem, lse_loc, delta_loc, coef_a, coef_b, exact, gates, MODE, CL, CS,
                    W, BN, FL)  # fmt: skip
        dv_acc = warpgroup_mma(p_smem.permute((1, 0)), do_buf, dv_acc, is_async=True)
        dk_acc = warpgroup_mma(ds_smem.permute((1, 0)), q_buf, dk_acc, is_async=True)
    dv_acc, dk_acc = warpgroup_mma_wait(0, deps=[dv_acc, dk_acc])
    async_copy.wait_group(0)
    _store_dkv(dk_acc, dv_acc, dk, dv, split, nk_total, kbos, k0, nks, h, scale, HKV, D, BN, DKV_L, ACCUMULATE)

"""Compression and window dK/dV whose query and dO rows arrive by TMA (Gluon, Hopper): the work, arguments and
outputs of :func:`nsa_kernels.attention_async.branch_bwd_kernel_dkv_async`, which copies them by ``cp.async``.

A TMA box takes only power-of-two shapes, and a token's G query heads of one KV head are G consecutive rows of
``[N, HQ, D]``. So the G heads are split into head parts, the powers of two that sum to G (7 = 4 + 2 + 1), and a step
is ``BM`` rows of one part: ``BM / P`` consecutive tokens times the part's P heads, one ``[BM / P, P, 64]`` box per
64 columns over ``[N, HQ, D]``, row = token slot · P + head. Each part covers the key tile's token range with steps
of its own, so no row is padded: at G = 7 and 128 rows, 32, 64 and 128 tokens per step. Rows past the range (the box
brings whatever tokens follow, zeros past the tensor) get an LSE of +inf, so their P and dS are 0. The LSE and delta
rows of step i + 1 are loaded into registers during step i; no CTA barrier waits for row copies.

:func:`head_parts` says where it applies: at most three parts (G < 16 or a power of two).
"""

from __future__ import annotations

import torch
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

from nsa_kernels.attention_async import (
    LOG2E,
    _key_tile,
    _stage_step,
    _store_dkv,
    _token_range,
)
from nsa_kernels.selection_async import (
    _copy_block,
    _gather_layout,
    _issue_scores,
    _mma_layout,
    _operand_layout,
)

MAX_PARTS = 3


def head_parts(G: int) -> list[int]:
    """The powers of two that sum to ``G``, largest first, padded with zeros to :data:`MAX_PARTS` (empty where more
    parts would be needed: the TMA rows do not apply)."""
    parts = [1 << b for b in reversed(range(G.bit_length())) if G >> b & 1]
    return parts + [0] * (MAX_PARTS - len(parts)) if len(parts) <= MAX_PARTS else []


@gluon.constexpr_function
def _box_layout():
    # shared memory of a [tokens, heads, 64] box: the rows of a 64-column slice of a [BM, D] MMA operand tile
    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=3)


def head_part_descriptors(x: torch.Tensor, G: int, block_m: int) -> list[TensorDescriptor]:
    """TMA descriptors of ``x`` ``[N, HQ, D]`` (contiguous, 16-bit) in ``[block_m / P, P, 64]`` boxes, one per head
    part P of :func:`head_parts` (the first one again for an absent part)."""
    N, HQ, D = x.shape
    parts = [p for p in head_parts(G) if p]
    descs = [TensorDescriptor(x, [N, HQ, D], [HQ * D, D, 1], [block_m // p, p, 64], _box_layout()) for p in parts]
    return descs + [descs[0]] * (MAX_PARTS - len(descs))


def rows_by_tma(q: torch.Tensor, do: torch.Tensor, G: int, block_m: int) -> bool:
    """Whether :func:`head_part_descriptors` can describe ``q`` and ``do`` (G query heads per KV head) for steps of
    ``block_m`` rows."""
    return (
        bool(head_parts(G))
        and all(x.is_contiguous() and x.data_ptr() % 16 == 0 and x.shape[0] > 0 for x in (q, do))
        and block_m % 64 == 0
    )


@gluon.constexpr_function
def _log2(x):
    return max(int(x), 1).bit_length() - 1


@gluon.jit
def _part_step(i, n0, n1, lo, LB: gl.constexpr, P0: gl.constexpr, P1: gl.constexpr, P2: gl.constexpr):
    # step i: its head part, the part's first head in the group, log2 of the part's heads, and the step's first token
    # (parts in order, n0 and n1 steps for the first two; LB = log2 of the rows per step)
    in1 = (i >= n0).to(gl.int32)
    in2 = (i >= n0 + n1).to(gl.int32)
    LG0: gl.constexpr = _log2(P0)
    LG1: gl.constexpr = _log2(P1)
    LG2: gl.constexpr = _log2(P2)
    lg = LG0 + in1 * (LG1 - LG0) + in2 * (LG2 - LG1)
    first = in1 * n0 + in2 * n1
    return in1 + in2, in1 * P0 + in2 * P1, lg, lo + ((i - first) << (LB - lg))


@gluon.jit
def _box_copy(desc, buf, bar, tok, head, TT: gl.constexpr, P: gl.constexpr, D: gl.constexpr):
    # the [TT, P, D] rows from token tok and query head head into buf ([TT·P, D]), 64 columns per box
    for c in gl.static_range(D // 64):
        dst = buf.slice(c * 64, 64, dim=1)._reinterpret(buf.dtype, [TT, P, 64], _box_layout())
        tma.async_copy_global_to_shared(desc, [tok, head, c * 64], bar, dst)


@gluon.jit
def _copy_part_rows(q0, q1, q2, do0, do1, do2, q_buf, do_buf, bar, part, tok, head, BM: gl.constexpr, D: gl.constexpr,
                    P0: gl.constexpr, P1: gl.constexpr, P2: gl.constexpr):  # fmt: skip
    # start the TMA loads of one step's query and dO rows (head part part) onto the buffer's mbarrier
    mbarrier.expect(bar, 4 * BM * D)
    if part == 0:
        _box_copy(q0, q_buf, bar, tok, head, BM // P0, P0, D)
        _box_copy(do0, do_buf, bar, tok, head, BM // P0, P0, D)
    elif part == 1:
        if P1 > 0:
            _box_copy(q1, q_buf, bar, tok, head, BM // P1, P1, D)
            _box_copy(do1, do_buf, bar, tok, head, BM // P1, P1, D)
    else:
        if P2 > 0:
            _box_copy(q2, q_buf, bar, tok, head, BM // P2, P2, D)
            _box_copy(do2, do_buf, bar, tok, head, BM // P2, P2, D)


@gluon.jit
def _part_rows(r, lg, off, base, hi, bos, h, HQ: gl.constexpr, G: gl.constexpr):
    # rows r of a step (log2 heads lg from head off of the group, first token base): token (relative to the
    # sequence), whether it lies before hi, and its row of [N, HQ]
    t_rel = base + (r >> lg)
    ok = t_rel < hi
    return t_rel, ok, (bos + t_rel).to(gl.int64) * HQ + h * G + off + (r & ((1 << lg) - 1))


@gluon.jit
def _row_stats(lse, delta, rows, ok):
    # base-2 LSE rows (+inf where not ok or without keys, so P is 0 there) and delta rows
    lse_row = gl.load(lse + rows, mask=ok, other=float("-inf"))
    return gl.where(lse_row == float("-inf"), float("inf"), lse_row * LOG2E), gl.load(delta + rows, mask=ok, other=0.0)


@gluon.jit
def branch_bwd_kernel_dkv_tma(
    q0, q1, q2, k, v, do0, do1, do2, gates, lse, delta, dk, dv, cu_seqlens, cu_keys, ktile_seq, ktile_start, nk_total,
    scale, scale2, lse_loc, delta_loc, coef_a, coef_b, exact_flag,
    HQ: gl.constexpr, HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
    MODE: gl.constexpr, C: gl.constexpr, CL: gl.constexpr, CS: gl.constexpr, W: gl.constexpr,
    NSPLIT: gl.constexpr, SPAN: gl.constexpr, ACCUMULATE: gl.constexpr, FL: gl.constexpr,
    P0: gl.constexpr, P1: gl.constexpr, P2: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    # arguments as branch_bwd_kernel_dkv_async, with q and dO as their three head-part descriptors of
    # head_part_descriptors (P0, P1, P2 = head_parts(G); the launcher does not take tuples of descriptors)
    GATHER: gl.constexpr = _gather_layout(num_warps)
    S_L: gl.constexpr = _mma_layout(BM, BN, num_warps)
    DKV_L: gl.constexpr = _mma_layout(BN, D, num_warps)
    ROWS: gl.constexpr = gl.SliceLayout(1, S_L)
    LB: gl.constexpr = _log2(BM)
    dtype: gl.constexpr = k.dtype.element_ty

    pid = gl.program_id(0)
    h = gl.program_id(1)
    split = gl.program_id(2)
    k0, bos, eos, kbos, nks = _key_tile(ktile_seq, ktile_start, cu_seqlens, cu_keys, pid)
    lo, hi, open_lo, _ = _token_range(k0, bos, eos, split, BM // G, BN, MODE, CL, CS, W, NSPLIT, SPAN)
    n0 = gl.cdiv(hi - lo, BM // P0)
    n1 = n0 * 0
    n2 = n0 * 0
    if P1 > 0:
        n1 = gl.cdiv(hi - lo, BM // P1)
    if P2 > 0:
        n2 = gl.cdiv(hi - lo, BM // P2)
    total = (n0 + n1 + n2) * (hi > lo).to(gl.int32)

    SMEM: gl.constexpr = _operand_layout()
    k_smem = gl.allocate_shared_memory(dtype, [BN, D], SMEM)
    v_smem = gl.allocate_shared_memory(dtype, [BN, D], SMEM)
    q_smem = gl.allocate_shared_memory(dtype, [2, BM, D], SMEM)
    do_smem = gl.allocate_shared_memory(dtype, [2, BM, D], SMEM)
    p_smem = gl.allocate_shared_memory(dtype, [BM, BN], SMEM)
    ds_smem = gl.allocate_shared_memory(dtype, [BM, BN], SMEM)
    bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bars.index(0), count=1)
    mbarrier.init(bars.index(1), count=1)

    d = gl.arange(0, D, gl.SliceLayout(0, GATHER))
    n = gl.arange(0, BN, gl.SliceLayout(1, GATHER))
    _copy_block(k, v, k_smem, v_smem, k0, kbos, kbos + nks, h, n, d, HKV, BN, D)
    async_copy.commit_group()
    gl.thread_barrier()
    part, off, lg, base = _part_step(0, n0, n1, lo, LB, P0, P1, P2)
    if total > 0:
        _copy_part_rows(q0, q1, q2, do0, do1, do2, q_smem.index(0), do_smem.index(0), bars.index(0), part, bos + base,
                        h * G + off, BM, D, P0, P1, P2)  # fmt: skip

    r_s = gl.arange(0, BM, ROWS)
    n_s = gl.arange(0, BN, gl.SliceLayout(0, S_L))
    _, ok_n, rows_n = _part_rows(r_s, lg, off, base, hi, bos, h, HQ, G)
    lse2_n, delta_n = _row_stats(lse, delta, rows_n, ok_n)
    dk_acc = warpgroup_mma_init(gl.zeros([BN, D], gl.float32, DKV_L))
    dv_acc = warpgroup_mma_init(gl.zeros([BN, D], gl.float32, DKV_L))
    exact = gl.load(exact_flag) != 0 if FL > 0 else None
    async_copy.wait_group(0)
    fence_async_shared()
    gl.thread_barrier()
    for i in range(total):
        part, off, lg, base = _part_step(i, n0, n1, lo, LB, P0, P1, P2)
        lse2 = lse2_n
        delta_row = delta_n
        q_buf = q_smem.index(i % 2)
        do_buf = do_smem.index(i % 2)
        mbarrier.wait(bars.index(i % 2), (i // 2) & 1)
        s, dp = _issue_scores(q_buf, do_buf, k_smem, v_smem, S_L, BM, BN)
        dv_acc, dk_acc = warpgroup_mma_wait(2, deps=[dv_acc, dk_acc])
        gl.thread_barrier()
        part_n, off_n, lg_n, base_n = _part_step(i + 1, n0, n1, lo, LB, P0, P1, P2)
        nxt = (i + 1) % 2
        if i + 1 < total:
            _copy_part_rows(q0, q1, q2, do0, do1, do2, q_smem.index(nxt), do_smem.index(nxt), bars.index(nxt), part_n,
                            bos + base_n, h * G + off_n, BM, D, P0, P1, P2)  # fmt: skip
        _, ok_n, rows_n = _part_rows(r_s, lg_n, off_n, base_n, hi, bos, h, HQ, G)
        lse2_n, delta_n = _row_stats(lse, delta, rows_n, ok_n & (i + 1 < total))
        t_c, ok_c, rows_c = _part_rows(r_s, lg, off, base, hi, bos, h, HQ, G)
        gate = gl.load(gates + rows_c * 3 + C, mask=ok_c, other=0.0).to(gl.float32) if C >= 0 else None
        open_hi = hi if MODE == 0 else k0 + W - (BM >> lg)
        _stage_step(s, dp, lse2, delta_row, gate, (base < open_lo) | (base > open_hi), t_c, ok_c, rows_c, base, k0,
                    k0 + n_s, scale2, p_smem, ds_smem, lse_loc, delta_loc, coef_a, coef_b, exact, gates, MODE, CL, CS,
                    W, BN, FL)  # fmt: skip
        dv_acc = warpgroup_mma(p_smem.permute((1, 0)), do_buf, dv_acc, is_async=True)
        dk_acc = warpgroup_mma(ds_smem.permute((1, 0)), q_buf, dk_acc, is_async=True)
    dv_acc, dk_acc = warpgroup_mma_wait(0, deps=[dv_acc, dk_acc])
    mbarrier.invalidate(bars.index(0))
    mbarrier.invalidate(bars.index(1))
    _store_dkv(dk_acc, dv_acc, dk, dv, split, nk_total, kbos, k0, nks, h, scale, HKV, D, BN, DKV_L, ACCUMULATE)

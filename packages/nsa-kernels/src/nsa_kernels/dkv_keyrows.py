"""Compression and window dK/dV with the keys as MMA rows, in warp-specialised partitions (Gluon, Hopper): the work,
arguments and outputs of :func:`nsa_kernels.attention_async.branch_bwd_kernel_dkv_async` for ``FL = 0``, on
``BN = 128``-key tiles and steps of ``BM = 64`` tokens of one query head.

Two partitions share a program:

- the consumers (the default partition, two warpgroups), each warpgroup owning 64 keys of the tile (loaded once by
  TMA). Each runs its own Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ against a step's query and dO rows, keeps Pᵀ and dSᵀ in registers
  as the A operands of dV += Pᵀ·dO and dK += dSᵀ·Q, and each thread releases the step's buffers once its warpgroup's
  MMAs on them are done. Nothing is staged through shared memory, and the warpgroups meet only at the CTA barrier
  that Triton's membar pass puts before each step's mbarrier wait (it does so between chained waits).
- one producer warp that loads the coming steps into ``NBUF`` buffers as they are released: the query and dO rows as
  ``[BM, 1, 64]`` TMA boxes over ``[N, HQ, D]`` (``BM`` consecutive tokens of one head), the LSE and delta rows by
  ``cp.async``, all completing the buffer's mbarrier. The G heads of a token block are consecutive steps, so a
  token's G·D-element run is read by neighbouring steps, and no row is padded.

Rows past the range (whatever tokens follow, zeros past the tensor) get an LSE of +inf, so their P and dS are 0.

A step waits for its own dV/dK MMAs. Issuing the next step's S/dP over them, as the other kernels do, needs more than
the consumers' 240 registers, and ptxas then serialises every wgmma of the kernel (as it does for any wgmma in a
worker partition, which is why both consumer warpgroups form the default partition).
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
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from nsa_kernels import dkv_async
from nsa_kernels.attention_async import LOG2E, _key_tile, _store_dkv, _token_range, _visible_limits
from nsa_kernels.dkv_async import _box_layout
from nsa_kernels.selection_async import _mma_layout, _operand_layout

KEYS = 128
ROWS = 64
MIN_WAVES = 2
CONSUMER_WARPS = gl.constexpr(8)
PRODUCER_WARPS = gl.constexpr(1)
LAUNCH = {"PRODUCER_REGS": 24, "num_warps": 8, "maxnreg": 168}
"""Launch settings: the producer's registers per thread (the consumers, the default partition, get what ``maxnreg``
over the program's 12 warps leaves: 240)."""


def row_descriptor(x: torch.Tensor) -> TensorDescriptor:
    """TMA descriptor of queries (or dO) ``[N, HQ, D]`` (contiguous, 16-bit) in ``[ROWS, 1, 64]`` boxes: the one head
    part of :func:`~nsa_kernels.dkv_async.head_part_descriptors` at G = 1."""
    return dkv_async.head_part_descriptors(x, 1, ROWS)[0]


def applies(q: torch.Tensor, do: torch.Tensor, programs: int) -> bool:
    """Whether :func:`row_descriptor` can describe ``q`` and ``do`` (:func:`~nsa_kernels.dkv_async.rows_by_tma`), and a
    launch of ``programs`` programs fills at least :data:`MIN_WAVES` waves of one program per SM (below that, twice as
    many 64-key programs run faster)."""
    aligned = dkv_async.rows_by_tma(q, do, 1, ROWS)
    if not aligned or MIN_WAVES == 0:
        return aligned
    return programs >= MIN_WAVES * torch.cuda.get_device_properties(q.device).multi_processor_count


@gluon.jit
def _step_rows(i, lo, G: gl.constexpr, BM: gl.constexpr):
    # step i: its first token (relative to the sequence) and its query head within the group
    return lo + (i // G) * BM, i % G


@gluon.jit
def _box_rows(desc, buf, bar, tok, head, BM: gl.constexpr, D: gl.constexpr):
    # the [BM, 1, D] rows from token tok and query head head into buf ([BM, D]), 64 columns per box
    for c in gl.static_range(D // 64):
        dst = buf.slice(c * 64, 64, dim=1)._reinterpret(buf.dtype, [BM, 1, 64], _box_layout())
        tma.async_copy_global_to_shared(desc, [tok, head, c * 64], bar, dst)


@gluon.jit
def _producer(q_desc, do_desc, lse, delta, q_smem, do_smem, lse_smem, delta_smem, full, empty, bos, lo, hi, h,
              HQ: gl.constexpr, G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, NBUF: gl.constexpr):  # fmt: skip
    # load step i's rows into buffer i % NBUF once both consumers released it: the query and dO rows by TMA, the LSE
    # and delta rows by cp.async, all completing full[i % NBUF]
    ROWS_L: gl.constexpr = gl.BlockedLayout([BM // (32 * PRODUCER_WARPS)], [32], [PRODUCER_WARPS], [0])
    r = gl.arange(0, BM, ROWS_L)
    for i in range(gl.cdiv(hi - lo, BM) * G):
        b = i % NBUF
        mbarrier.wait(empty.index(b), ((i // NBUF) & 1) ^ 1)
        base, g = _step_rows(i, lo, G, BM)
        t = base + r
        rows = (bos + t).to(gl.int64) * HQ + h * G + g
        async_copy.async_copy_global_to_shared(lse_smem.index(b), lse + rows, mask=t < hi)
        async_copy.async_copy_global_to_shared(delta_smem.index(b), delta + rows, mask=t < hi)
        async_copy.mbarrier_arrive(full.index(b))
        mbarrier.expect(full.index(b), 4 * BM * D)
        _box_rows(q_desc, q_smem.index(b), full.index(b), bos + base, h * G + g, BM, D)
        _box_rows(do_desc, do_smem.index(b), full.index(b), bos + base, h * G + g, BM, D)


@gluon.jit
def _consumers(lse, delta, gates, dk, dv, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, full, empty, kv_bar,
               split, nk_total, kbos, k0, nks, bos, lo, hi, open_lo, open_hi, h, scale, scale2, HQ: gl.constexpr,
               HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, MODE: gl.constexpr,
               C: gl.constexpr, CL: gl.constexpr, CS: gl.constexpr, W: gl.constexpr, NBUF: gl.constexpr,
               ACCUMULATE: gl.constexpr):  # fmt: skip
    # dK/dV of the tile's BN keys over the producer's steps (each warpgroup its BN / 2 keys), stored at the end. Every
    # thread releases a buffer on its own once its warpgroup's MMAs on it are done (no barrier of ours).
    BN: gl.constexpr = k_smem.shape[0]
    ST_L: gl.constexpr = _mma_layout(BN, BM, CONSUMER_WARPS)
    DKV_L: gl.constexpr = _mma_layout(BN, D, CONSUMER_WARPS)
    A_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=DKV_L, k_width=2)
    COL_L: gl.constexpr = gl.SliceLayout(0, ST_L)
    dtype: gl.constexpr = q_smem.dtype
    r = gl.arange(0, BM, COL_L)
    key = k0 + gl.arange(0, BN, gl.SliceLayout(1, ST_L))
    zeros = gl.zeros([BN, BM], gl.float32, ST_L)
    dk_acc = gl.zeros([BN, D], gl.float32, DKV_L)
    dv_acc = gl.zeros([BN, D], gl.float32, DKV_L)
    mbarrier.wait(kv_bar, 0)
    for i in range(gl.cdiv(hi - lo, BM) * G):
        b = i % NBUF
        base, g = _step_rows(i, lo, G, BM)
        mbarrier.wait(full.index(b), (i // NBUF) & 1)
        q_buf = q_smem.index(b)
        do_buf = do_smem.index(b)
        st = warpgroup_mma(k_smem, q_buf.permute((1, 0)), zeros, use_acc=False, is_async=True)
        dpt = warpgroup_mma(v_smem, do_buf.permute((1, 0)), zeros, use_acc=False, is_async=True)
        st, dpt = warpgroup_mma_wait(0, deps=[st, dpt])
        t = base + r
        ok = t < hi
        lse_row = lse_smem.index(b).load(COL_L)
        pt = gl.exp2(st * scale2 - gl.where(ok & (lse_row != float("-inf")), lse_row * LOG2E, float("inf"))[None, :])
        if (base < open_lo) | (base > open_hi):
            vis_lo, vis_hi = _visible_limits(t, ok, MODE, CL, CS, W)
            pt = gl.where((key[:, None] > vis_lo[None, :]) & (key[:, None] < vis_hi[None, :]), pt, 0.0)
        delta_row = delta_smem.index(b).load(COL_L)
        if C >= 0:
            gate = gl.load(gates + ((bos + t) * HQ + h * G + g) * 3 + C, mask=ok, other=0.0).to(gl.float32)
            dst = pt * (dpt * gate[None, :] - delta_row[None, :])
            pt = pt * gate[None, :]
        else:
            dst = pt * (dpt - delta_row[None, :])
        dv_acc = warpgroup_mma(gl.convert_layout(pt.to(dtype), A_L), do_buf, dv_acc, is_async=True)
        dk_acc = warpgroup_mma(gl.convert_layout(dst.to(dtype), A_L), q_buf, dk_acc, is_async=True)
        dv_acc, dk_acc = warpgroup_mma_wait(0, deps=[dv_acc, dk_acc])
        async_copy.mbarrier_arrive(empty.index(b), increment_count=False)
    _store_dkv(dk_acc, dv_acc, dk, dv, split, nk_total, kbos, k0, nks, h, scale, HKV, D, BN, DKV_L, ACCUMULATE)


@gluon.jit
def branch_bwd_kernel_dkv_keyrows(
    q_desc, k_desc, v_desc, do_desc, gates, lse, delta, dk, dv, cu_seqlens, cu_keys, ktile_seq, ktile_start,
    nk_total, scale, scale2, HQ: gl.constexpr, HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr,
    BM: gl.constexpr, BN: gl.constexpr, MODE: gl.constexpr, C: gl.constexpr, CL: gl.constexpr, CS: gl.constexpr,
    W: gl.constexpr, NSPLIT: gl.constexpr, SPAN: gl.constexpr, ACCUMULATE: gl.constexpr, NBUF: gl.constexpr,
    PRODUCER_REGS: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    # arguments as branch_bwd_kernel_dkv_async with FL = 0; the queries and dO as row_descriptor, the keys and
    # values as attention_async.key_descriptors of BN // 2 rows; BN keys per program (the key tiles of ktile_seq /
    # ktile_start), steps of BM tokens in NBUF buffers, num_warps = CONSUMER_WARPS (the consumers)
    KH: gl.constexpr = BN // 2
    SMEM: gl.constexpr = _operand_layout()
    dtype: gl.constexpr = k_desc.dtype

    pid = gl.program_id(0)
    h = gl.program_id(1)
    split = gl.program_id(2)
    k0, bos, eos, kbos, nks = _key_tile(ktile_seq, ktile_start, cu_seqlens, cu_keys, pid)
    lo, hi, open_lo, open_hi = _token_range(k0, bos, eos, split, BM, BN, MODE, CL, CS, W, NSPLIT, SPAN)
    k_smem = gl.allocate_shared_memory(dtype, [BN, D], SMEM)
    v_smem = gl.allocate_shared_memory(dtype, [BN, D], SMEM)
    q_smem = gl.allocate_shared_memory(dtype, [NBUF, BM, D], SMEM)
    do_smem = gl.allocate_shared_memory(dtype, [NBUF, BM, D], SMEM)
    lse_smem = gl.allocate_shared_memory(gl.float32, [NBUF, BM], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    delta_smem = gl.allocate_shared_memory(gl.float32, [NBUF, BM], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    full = gl.allocate_shared_memory(gl.int64, [NBUF, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NBUF, 1], mbarrier.MBarrierLayout())
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for b in gl.static_range(NBUF):
        mbarrier.init(full.index(b), count=1)
        mbarrier.init(empty.index(b), count=32 * CONSUMER_WARPS)
    mbarrier.init(kv_bar, count=1)
    fence_async_shared()
    mbarrier.expect(kv_bar, 4 * k_desc.block_type.nbytes)
    for half in gl.static_range(2):
        k_half = k_smem.slice(half * KH, KH)
        v_half = v_smem.slice(half * KH, KH)
        tma.async_copy_global_to_shared(k_desc, [kbos + k0 + half * KH, h * D], kv_bar, k_half)
        tma.async_copy_global_to_shared(v_desc, [kbos + k0 + half * KH, h * D], kv_bar, v_half)
    gl.warp_specialize(
        [
            (_consumers, (lse, delta, gates, dk, dv, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, full,
                          empty, kv_bar, split, nk_total, kbos, k0, nks, bos, lo, hi, open_lo, open_hi, h, scale,
                          scale2, HQ, HKV, G, D, BM, MODE, C, CL, CS, W, NBUF, ACCUMULATE)),
            (_producer, (q_desc, do_desc, lse, delta, q_smem, do_smem, lse_smem, delta_smem, full, empty, bos, lo,
                         hi, h, HQ, G, D, BM, NBUF)),
        ],
        [PRODUCER_WARPS],
        [PRODUCER_REGS],
    )  # fmt: skip

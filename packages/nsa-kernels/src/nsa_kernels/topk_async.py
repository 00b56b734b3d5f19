"""Block importance with asynchronous key copies and warpgroup MMAs (Gluon, Hopper): the same scores as
:func:`nsa_kernels.topk.topk_fwd_kernel_scores` with padded heads, which stays the readable version and the one the
CPU interpreter runs.

A program holds one query tile (``BM // GP`` tokens × the G heads of a KV head, padded to GP) in shared memory and
loads the compressed keys of step j + 1 by TMA (:func:`nsa_kernels.attention_async.row_descriptor`) while step j runs
S = Q·Kᵀ, the probabilities and their sum over the heads of each token. Key rows past a sequence's end are masked
out of the probabilities.

The Triton kernel orders rows token · GP + head, so the heads of a token lie in the accumulator's lanes and the head
sum takes log2(GP) shuffle rounds per element, more issue slots than the MMA. Here the rows are permuted so that the
heads lie in the accumulator's register bits first (row bit 3, and the bits above the warps' rows), then in its lanes:
the sum is mostly in-thread adds (at ``BM = 128`` on 4 warps and GP = 8, two adds and one shuffle round).

Limits (the launcher falls back to the Triton kernel otherwise): compute capability 9.x, 16-bit inputs, D of 64 or
128, ``BM`` a multiple of 64 and ``GP <= 16``.

Shape legend as in :mod:`nsa_kernels.topk`.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from nsa_kernels.attention_async import (
    LOG2E,
    _key_range,
    _mask_visible,
    _next_keys,
    _query_tile,
    _start_keys,
    _visible_limits,
)
from nsa_kernels.selection_async import _copy_rows, _gather_layout, _mma_layout, _operand_layout


@gluon.constexpr_function
def _head_bit_order(BM, BN, num_warps):
    # the row bits of a [BM, BN] warpgroup-MMA accumulator in the order the heads take them: register bits (bit 3,
    # then those above the warps' rows), lane bits (2, 1, 0), warp bits
    log_bm = BM.bit_length() - 1
    log_wm = _mma_layout(BM, BN, num_warps).warps_per_cta[0].bit_length() - 1
    registers = [3, *range(4 + log_wm, log_bm)]
    return [*registers, 2, 1, 0, *range(4, 4 + log_wm)]


@gluon.constexpr_function
def _row_weights(BM, BN, GP, num_warps, of_head):
    # per row bit (low to high) its weight in the row's head (of_head) or token: the first log2(GP) bits of
    # _head_bit_order make the head, the others the token in ascending order
    order = _head_bit_order(BM, BN, num_warps)
    head_bits = order[: GP.bit_length() - 1]
    token_bits = sorted(b for b in range(BM.bit_length() - 1) if b not in head_bits)
    bits = head_bits if of_head else token_bits
    return gl.constexpr(tuple(1 << bits.index(b) if b in bits else 0 for b in range(BM.bit_length() - 1)))


@gluon.constexpr_function
def _head_axes(BM, BN, GP, num_warps):
    # the axes of the [2] * log2(BM) + [BN] view of the rows that hold the head bits, in _head_bit_order (register
    # bits first, so they are added before any shuffle), each counted after the axes summed before it are gone
    log_bm = BM.bit_length() - 1
    axes, gone = [], []
    for b in _head_bit_order(BM, BN, num_warps)[: GP.bit_length() - 1]:
        axis = log_bm - 1 - b
        axes.append(axis - sum(1 for g in gone if g < axis))
        gone.append(axis)
    return gl.constexpr(tuple(axes))


@gluon.constexpr_function
def _bit_view(BM, BN):
    return gl.constexpr(tuple([2] * (BM.bit_length() - 1) + [BN]))


@gluon.constexpr_function
def _score_layout(BN, num_warps):
    # [tokens, BN] fp32 rows in 16-byte pieces
    lanes_n = min(32, BN // 4)
    return gl.BlockedLayout([1, 4], [32 // lanes_n, lanes_n], [num_warps, 1], [1, 0])


@gluon.jit
def _split_rows(r, HEAD_W: gl.constexpr, TOKEN_W: gl.constexpr):
    # each row's (token slot, head) under the permutation of _row_weights
    token = r * 0
    head = r * 0
    for b in gl.static_range(len(HEAD_W)):
        bit = (r >> b) & 1
        head += bit * HEAD_W[b]
        token += bit * TOKEN_W[b]
    return token, head


@gluon.jit
def _head_sum(p, VIEW: gl.constexpr, AXES: gl.constexpr, TT: gl.constexpr, BN: gl.constexpr):
    # [BM, BN] → [TT, BN]: the sum over the head bits of the rows
    x = gl.reshape(p, VIEW)
    for a in gl.static_range(len(AXES)):
        x = gl.sum(x, AXES[a])
    return gl.reshape(x, [TT, BN])


@gluon.jit
def topk_fwd_kernel_scores_async(
    q, k_desc, lse, scores, cu_seqlens, cu_keys, tile_seq, tile_start, tile_lo, t_base, scale2, NCP,
    HQ: gl.constexpr, HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
    CL: gl.constexpr, CS: gl.constexpr, GP: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    # arguments as topk_fwd_kernel_scores (BD = D, TTP = BM // GP, GP a power of two >= G), the compressed keys as a
    # row_descriptor
    TT: gl.constexpr = BM // GP
    HEAD_W: gl.constexpr = _row_weights(BM, BN, GP, num_warps, True)
    TOKEN_W: gl.constexpr = _row_weights(BM, BN, GP, num_warps, False)
    GATHER: gl.constexpr = _gather_layout(num_warps)
    S_L: gl.constexpr = _mma_layout(BM, BN, num_warps)
    OUT_L: gl.constexpr = _score_layout(BN, num_warps)
    SMEM: gl.constexpr = _operand_layout()
    dtype: gl.constexpr = q.dtype.element_ty

    pid = tile_lo + gl.program_id(0)
    h = gl.program_id(1)
    t0, bos, eos, kbos = _query_tile(tile_seq, tile_start, cu_seqlens, cu_keys, pid)
    start, end, full = _key_range(t0, bos, eos, TT, BN, 0, CL, CS, 0)
    q_smem = gl.allocate_shared_memory(dtype, [BM, D], SMEM)
    k_smem = gl.allocate_shared_memory(dtype, [2, BN, D], SMEM)

    d = gl.arange(0, D, gl.SliceLayout(0, GATHER))
    tok_g, head_g = _split_rows(gl.arange(0, BM, gl.SliceLayout(1, GATHER)), HEAD_W, TOKEN_W)
    _copy_rows(q, q_smem, (t0 + tok_g).to(gl.int64), h * G + head_g, (head_g < G) & (t0 + tok_g < eos), d, HQ, D)
    async_copy.commit_group()
    bars = _start_keys(k_desc, None, k_smem, None, kbos, start, end, h, D)
    async_copy.wait_group(0)
    gl.thread_barrier()
    fence_async_shared()

    tok_s, head_s = _split_rows(gl.arange(0, BM, gl.SliceLayout(1, S_L)), HEAD_W, TOKEN_W)
    t_s = t0 + tok_s
    row_ok = (head_s < G) & (t_s < eos)
    lse_row = gl.load(lse + t_s.to(gl.int64) * HQ + h * G + head_s, mask=row_ok, other=float("-inf"))
    lse2 = gl.where(lse_row == float("-inf"), float("inf"), lse_row * LOG2E)
    vis_lo, vis_hi = _visible_limits(t_s - bos, row_ok, 0, CL, CS, 0)
    n_s = gl.arange(0, BN, gl.SliceLayout(0, S_L))
    t_out = t0 + gl.arange(0, TT, gl.SliceLayout(1, OUT_L))
    out_rows = (t_out - t_base).to(gl.int64) * (HKV * NCP) + h * NCP
    n_out = gl.arange(0, BN, gl.SliceLayout(0, OUT_L))
    for j in range(gl.cdiv(end - start, BN)):
        key0 = start + j * BN
        _next_keys(k_desc, None, k_smem, None, bars, j, kbos, key0 + BN, end, h, D)
        s = warpgroup_mma(q_smem, k_smem.index(j % 2).permute((1, 0)), gl.zeros([BM, BN], gl.float32, S_L),
                          use_acc=False, is_async=True)  # fmt: skip
        s = warpgroup_mma_wait(0, deps=[s])
        p = gl.exp2(s * scale2 - lse2[:, None])
        if key0 + BN > full:
            p = _mask_visible(p, key0 + n_s, vis_lo, vis_hi, 0.0)
        token_p = gl.convert_layout(_head_sum(p, _bit_view(BM, BN), _head_axes(BM, BN, GP, num_warps), TT, BN), OUT_L)
        i = key0 + n_out
        gl.store(scores + out_rows[:, None] + i[None, :], token_p, mask=(t_out < eos)[:, None] & (i < end)[None, :])

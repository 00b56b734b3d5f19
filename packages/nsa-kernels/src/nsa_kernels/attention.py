"""Branch attention kernels (compression, selection, sliding window), forward and backward.

One kernel family serves the three branches. A program owns a tile of consecutive query tokens of one
sequence and one KV head; its MMA rows are ``TT = BM // G`` tokens × the ``G`` query heads of that KV
head (``r = token · G + head``), so G = 7 uses 63 of 64 rows and nothing is padded in memory or copied
per query head. The branch (``MODE``) only decides which keys a tile visits and which it may see:

- ``CMP``: mean-pooled keys ``i`` with ``i·CS + CL - 1 <= t`` (block-causal);
- ``SLC``: the tokens of the union of the tile's selected blocks, each row masked to its own blocks
  and to ``key <= t``;
- ``SWD``: keys ``[t - W + 1, t]``.

dK/dV run one program per key tile (a selection block for ``SLC``) over the query rows that see it:
a contiguous token range for ``SWD`` and ``CMP`` (the latter split into ``NSPLIT`` partial sums, reduced
in order: equal shares of each key tile's range, or with ``SPAN > 0`` chunks of ``SPAN`` tokens, so every
program does about the same work), or the block's CSR list of tokens for ``SLC``. Everything is written
with plain stores; branches that add into one buffer run one after another, so results are deterministic.

Shape legend:
    N packed tokens (B·T, or the total of ``cu_seqlens``), NK keys of the branch (N, or NC compressed
    keys), HQ query heads, HKV KV heads, G = HQ / HKV, D head dim (BD its power-of-two tile),
    S selected blocks per query (NSP its power of two), BS selection block (SB here), W window,
    NT query tiles, BM rows per tile, BN keys per step.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from nsa_kernels.index import block_table, tile_count

CMP, SLC, SWD = 0, 1, 2
LOG2E = 1.4426950408889634


@triton.jit
def _token_tile(tile_seq, tile_start, cu_seqlens, cu_keys, pid, h, BM: tl.constexpr, G: tl.constexpr, GP: tl.constexpr):
    # rows token·GP + head of one token tile, GP >= G rows per token (rows with head >= G masked);
    # returns the tile's first token, its sequence's bounds, first compressed key and the per-row t, head, mask
    seq = tl.load(tile_seq + pid)
    t0 = tl.load(tile_start + pid)
    bos = tl.load(cu_seqlens + seq)
    eos = tl.load(cu_seqlens + seq + 1)
    kbos = tl.load(cu_keys + seq)
    r = tl.arange(0, BM)
    tok = r // GP
    t = t0 + tok
    row_ok = (tok < BM // GP) & (t < eos) & (r % GP < G)
    return t0, bos, eos, kbos, t, h * G + r % GP, row_ok


@triton.jit
def _load_rows(x, t, head, d, row_ok, HQ: tl.constexpr, D: tl.constexpr):
    # [BM, BD] rows (token t, query head) of a [N, HQ, D] tensor
    ptrs = x + t.to(tl.int64)[:, None] * (HQ * D) + head[:, None] * D + d[None, :]
    return tl.load(ptrs, mask=row_ok[:, None] & (d[None, :] < D), other=0.0)


@triton.jit
def _load_keys(x, pos, d, ok, h, HKV: tl.constexpr, D: tl.constexpr):
    # [BN, BD] keys at global positions pos of a [NK, HKV, D] tensor
    ptrs = x + pos.to(tl.int64)[:, None] * (HKV * D) + h * D + d[None, :]
    return tl.load(ptrs, mask=ok[:, None] & (d[None, :] < D), other=0.0)


@triton.jit
def _cmp_full_keys(t_first, CL: tl.constexpr, CS: tl.constexpr, BN: tl.constexpr):
    # compressed keys [0, full) that every row of a tile whose first token is t_first sees, whole BN steps
    return tl.maximum((t_first + 1 - CL + CS) // CS, 0) // BN * BN


@triton.jit
def _window_mask(row_ok, ok, pos, t_rel, W: tl.constexpr):
    return row_ok[:, None] & ok[None, :] & (pos[None, :] <= t_rel[:, None]) & (pos[None, :] > t_rel[:, None] - W)


@triton.jit
def branch_fwd_kernel_step(q, kt, vt, mask, m_i, l_i, acc, scale2):
    # one online-softmax step over [BN] keys, in the base-2 logit domain; mask None: every key visible
    s = tl.dot(q, tl.trans(kt)) * scale2
    if mask is not None:
        s = tl.where(mask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
    return m_new, l_i, acc


@triton.jit
def _fwd_keys_step(qt, k, v, pos, ok, mask, h, d, m_i, l_i, acc, scale2, HKV: tl.constexpr, D: tl.constexpr):
    kt = _load_keys(k, pos, d, ok, h, HKV, D)
    vt = _load_keys(v, pos, d, ok, h, HKV, D)
    return branch_fwd_kernel_step(qt, kt, vt, mask, m_i, l_i, acc, scale2)


@triton.jit
def branch_fwd_kernel_attn(
    q,  # [N, HQ, D]
    k,  # [NK, HKV, D]
    v,  # [NK, HKV, D]
    o,  # [N, HQ, D]
    lse,  # [N, HQ] fp32, natural log
    cu_seqlens,  # [NSEQ + 1] token offsets
    cu_keys,  # [NSEQ + 1] key offsets (compressed keys for CMP)
    tile_seq,  # [NT]
    tile_start,  # [NT] first global token of the tile
    union_off,  # SLC: [NT · HKV + 1] CSR offsets of the tile's block union
    union_blk,  # SLC: block ids, relative to the sequence
    blk_idx,  # SLC: [N, HKV, S] selected blocks, -1 empty
    scale2,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    MODE: tl.constexpr,
    CL: tl.constexpr,
    CS: tl.constexpr,
    SB: tl.constexpr,
    S: tl.constexpr,
    NSP: tl.constexpr,
    W: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    TT: tl.constexpr = BM // G
    t0, bos, eos, kbos, t, head, row_ok = _token_tile(tile_seq, tile_start, cu_seqlens, cu_keys, pid, h, BM, G, G)
    t_rel = t - bos
    t_first = t0 - bos
    t_last = tl.minimum(t0 + TT, eos) - 1 - bos
    d = tl.arange(0, BD)
    cols = tl.arange(0, BN)

    qt = _load_rows(q, t, head, d, row_ok, HQ, D)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)

    if MODE == 0:
        nk = tl.maximum((t_last + 1 - CL + CS) // CS, 0)
        full = _cmp_full_keys(t_first, CL, CS, BN)
        for start in range(0, full, BN):
            i = start + cols
            m_i, l_i, acc = _fwd_keys_step(qt, k, v, kbos + i, i < nk, None, h, d, m_i, l_i, acc, scale2, HKV, D)
        for start in range(full, nk, BN):
            i = start + cols
            ok = i < nk
            mask = row_ok[:, None] & ok[None, :] & (i[None, :] * CS + CL - 1 <= t_rel[:, None])
            m_i, l_i, acc = _fwd_keys_step(qt, k, v, kbos + i, ok, mask, h, d, m_i, l_i, acc, scale2, HKV, D)
    elif MODE == 1:
        sel_cols = tl.arange(0, NSP)
        sel = tl.load(
            blk_idx + t.to(tl.int64)[:, None] * (HKV * S) + h * S + sel_cols[None, :],
            mask=row_ok[:, None] & (sel_cols[None, :] < S),
            other=-1,
        )
        u_lo = tl.load(union_off + pid * HKV + h)
        u_hi = tl.load(union_off + pid * HKV + h + 1)
        for u in range(u_lo, u_hi):
            j = tl.load(union_blk + u)
            member = tl.sum((sel == j).to(tl.int32), 1) > 0
            for sub in range(0, SB, BN):
                pos = j * SB + sub + cols
                ok = (sub + cols < SB) & (pos <= t_last)
                kt = _load_keys(k, bos + pos, d, ok, h, HKV, D)
                vt = _load_keys(v, bos + pos, d, ok, h, HKV, D)
                mask = (row_ok & member)[:, None] & ok[None, :] & (pos[None, :] <= t_rel[:, None])
                m_i, l_i, acc = branch_fwd_kernel_step(qt, kt, vt, mask, m_i, l_i, acc, scale2)
    else:
        lo = tl.maximum(t_first - W + 1, 0)
        for start in range(lo, t_last + 1, BN):
            pos = start + cols
            ok = pos <= t_last
            mask = _window_mask(row_ok, ok, pos, t_rel, W)
            m_i, l_i, acc = _fwd_keys_step(qt, k, v, bos + pos, ok, mask, h, d, m_i, l_i, acc, scale2, HKV, D)

    has_key = l_i > 0
    l_safe = tl.where(has_key, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse_row = tl.where(has_key, (m_i + tl.log2(l_safe)) / 1.4426950408889634, float("-inf"))
    o_ptrs = o + t.to(tl.int64)[:, None] * (HQ * D) + head[:, None] * D + d[None, :]
    tl.store(o_ptrs, out.to(o.dtype.element_ty), mask=row_ok[:, None] & (d[None, :] < D))
    tl.store(lse + t.to(tl.int64) * HQ + head, lse_row, mask=row_ok)


@triton.jit
def branch_bwd_kernel_dq_step(q, do, kt, vt, mask, lse2, delta, dq, scale2):
    s = tl.dot(q, tl.trans(kt)) * scale2
    p = tl.exp2(s - lse2[:, None])
    if mask is not None:
        p = tl.where(mask, p, 0.0)
    dp = tl.dot(do, tl.trans(vt))
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(kt.dtype), kt)


@triton.jit
def _dq_keys_step(qt, dot, k, v, pos, ok, mask, h, d, lse2, delta_row, acc, scale2, HKV: tl.constexpr, D: tl.constexpr):
    kt = _load_keys(k, pos, d, ok, h, HKV, D)
    vt = _load_keys(v, pos, d, ok, h, HKV, D)
    return branch_bwd_kernel_dq_step(qt, dot, kt, vt, mask, lse2, delta_row, acc, scale2)


@triton.jit
def _dkv_step(qt, dot, kt, vt, mask, lse2, delta_row, dk_acc, dv_acc, scale2):
    # dK/dV of one step over BM gathered query rows; also returns dS [BM, BN]
    p = tl.where(mask, tl.exp2(tl.dot(qt, tl.trans(kt)) * scale2 - lse2[:, None]), 0.0)
    dv_acc += tl.dot(tl.trans(p.to(dot.dtype)), dot)
    ds = (p * (tl.dot(dot, tl.trans(vt)) - delta_row[:, None])).to(qt.dtype)
    dk_acc += tl.dot(tl.trans(ds), qt)
    return dk_acc, dv_acc, ds


@triton.jit
def _load_grad_rows(do, gates, lse, delta, t, head, d, row_ok, C: tl.constexpr, HQ: tl.constexpr, D: tl.constexpr):
    # gated dO rows (C = -1: do is gated already), base-2 LSE (+inf for rows without keys, so p = 0) and
    # delta of one branch
    dot = _load_rows(do, t, head, d, row_ok, HQ, D)
    if C >= 0:
        g = tl.load(gates + t.to(tl.int64) * (HQ * 3) + head * 3 + C, mask=row_ok, other=0.0).to(tl.float32)
        dot = dot.to(tl.float32) * g[:, None]
    lse_row = tl.load(lse + t.to(tl.int64) * HQ + head, mask=row_ok, other=float("-inf"))
    lse2 = tl.where(lse_row == float("-inf"), float("inf"), lse_row * 1.4426950408889634)
    delta_row = tl.load(delta + t.to(tl.int64) * HQ + head, mask=row_ok, other=0.0)
    return dot.to(do.dtype.element_ty), lse2, delta_row


@triton.jit
def _selection_dq_sum(dq_part, part_row, t, g, row_ok, t_base, h, h0, d, HR: tl.constexpr, S: tl.constexpr,
                      G: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):  # fmt: skip
    # fp32 sum over the slots with a block of the selection dQ partials [R, D] of rows (token t, head h·G + g), in slot
    # order: those of a token range from t_base on and the KV heads [h0, h0 + HR), the G rows of selection
    # ((t - t_base)·HR + h - h0)·S + slot starting at its part_row entry (-1: an empty slot)
    acc = tl.zeros([BM, BD], tl.float32)
    for slot in range(S):
        row = tl.load(part_row + ((t - t_base) * HR + h - h0) * S + slot, mask=row_ok, other=-1)
        chosen = row >= 0
        pe = row.to(tl.int64) + g
        acc += tl.load(dq_part + pe[:, None] * D + d[None, :], mask=chosen[:, None] & (d[None, :] < D), other=0.0).to(
            tl.float32
        )
    return acc


@triton.jit
def branch_bwd_kernel_dq(
    q,  # [N, HQ, D]
    k,  # [NK, HKV, D]
    v,  # [NK, HKV, D]
    do,  # [N, HQ, D] gradient of the gated sum
    gates,  # [N, HQ, 3]
    lse,  # [N, HQ] fp32 of this branch
    delta,  # [N, HQ] fp32: gate · rowsum(dO · o_branch)
    dq,  # [N, HQ, D] fp32, accumulated from
    dq_out,  # [N, HQ, D] fp32 or the input dtype, stored (may be dq)
    cu_seqlens,
    cu_keys,
    tile_seq,
    tile_start,
    union_off,
    union_blk,
    blk_idx,
    slc_part,  # [R, D] selection dQ partials of the tokens from part_t0 on, added when PART_S > 0
    slc_row,  # [E] int32: the first slc_part row of each of their selections (-1: an empty slot)
    part_t0,
    h0,  # first KV head of this launch (and of the partials)
    tile0,  # first tile of this launch
    scale,
    scale2,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    MODE: tl.constexpr,
    C: tl.constexpr,
    CL: tl.constexpr,
    CS: tl.constexpr,
    SB: tl.constexpr,
    S: tl.constexpr,
    NSP: tl.constexpr,
    W: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    PART_S: tl.constexpr,
    PART_HR: tl.constexpr,  # KV heads of the partials
):
    pid = tl.program_id(0) + tile0
    h = h0 + tl.program_id(1)
    TT: tl.constexpr = BM // G
    t0, bos, eos, kbos, t, head, row_ok = _token_tile(tile_seq, tile_start, cu_seqlens, cu_keys, pid, h, BM, G, G)
    t_rel = t - bos
    t_first = t0 - bos
    t_last = tl.minimum(t0 + TT, eos) - 1 - bos
    d = tl.arange(0, BD)
    cols = tl.arange(0, BN)

    qt = _load_rows(q, t, head, d, row_ok, HQ, D)
    dot, lse2, delta_row = _load_grad_rows(do, gates, lse, delta, t, head, d, row_ok, C, HQ, D)
    acc = tl.zeros([BM, BD], tl.float32)

    if MODE == 0:
        nk = tl.maximum((t_last + 1 - CL + CS) // CS, 0)
        full = _cmp_full_keys(t_first, CL, CS, BN)
        for start in range(0, full, BN):
            i = start + cols
            acc = _dq_keys_step(qt, dot, k, v, kbos + i, i < nk, None, h, d, lse2, delta_row, acc, scale2, HKV, D)
        for start in range(full, nk, BN):
            i = start + cols
            ok = i < nk
            mask = row_ok[:, None] & ok[None, :] & (i[None, :] * CS + CL - 1 <= t_rel[:, None])
            acc = _dq_keys_step(qt, dot, k, v, kbos + i, ok, mask, h, d, lse2, delta_row, acc, scale2, HKV, D)
    elif MODE == 1:
        sel_cols = tl.arange(0, NSP)
        sel = tl.load(
            blk_idx + t.to(tl.int64)[:, None] * (HKV * S) + h * S + sel_cols[None, :],
            mask=row_ok[:, None] & (sel_cols[None, :] < S),
            other=-1,
        )
        u_lo = tl.load(union_off + pid * HKV + h)
        u_hi = tl.load(union_off + pid * HKV + h + 1)
        for u in range(u_lo, u_hi):
            j = tl.load(union_blk + u)
            member = tl.sum((sel == j).to(tl.int32), 1) > 0
            for sub in range(0, SB, BN):
                pos = j * SB + sub + cols
                ok = (sub + cols < SB) & (pos <= t_last)
                kt = _load_keys(k, bos + pos, d, ok, h, HKV, D)
                vt = _load_keys(v, bos + pos, d, ok, h, HKV, D)
                mask = (row_ok & member)[:, None] & ok[None, :] & (pos[None, :] <= t_rel[:, None])
                acc = branch_bwd_kernel_dq_step(qt, dot, kt, vt, mask, lse2, delta_row, acc, scale2)
    else:
        lo = tl.maximum(t_first - W + 1, 0)
        for start in range(lo, t_last + 1, BN):
            pos = start + cols
            ok = pos <= t_last
            mask = _window_mask(row_ok, ok, pos, t_rel, W)
            acc = _dq_keys_step(qt, dot, k, v, bos + pos, ok, mask, h, d, lse2, delta_row, acc, scale2, HKV, D)

    acc = acc * scale
    if PART_S > 0:
        acc += _selection_dq_sum(slc_part, slc_row, t.to(tl.int64), head - h * G, row_ok, part_t0, h, h0, d, PART_HR,
                                 PART_S, G, D, BM, BD)  # fmt: skip
    dq_ptrs = dq + t.to(tl.int64)[:, None] * (HQ * D) + head[:, None] * D + d[None, :]
    io_mask = row_ok[:, None] & (d[None, :] < D)
    if ACCUMULATE:
        acc += tl.load(dq_ptrs, mask=io_mask, other=0.0)
    out_ptrs = dq_out + t.to(tl.int64)[:, None] * (HQ * D) + head[:, None] * D + d[None, :]
    tl.store(out_ptrs, acc.to(dq_out.dtype.element_ty), mask=io_mask)


@triton.jit
def branch_bwd_kernel_dkv(
    q,  # [N, HQ, D]
    k,  # [NK, HKV, D]
    v,  # [NK, HKV, D]
    do,  # [N, HQ, D]
    gates,  # [N, HQ, 3]
    lse,  # [N, HQ]
    delta,  # [N, HQ]
    dk,  # [NSPLIT, NK, HKV, D] fp32 (NSPLIT = 1 except CMP)
    dv,  # [NSPLIT, NK, HKV, D] fp32
    cu_seqlens,
    cu_keys,
    ktile_seq,  # [NKT] sequence of each key tile (each selection block for SLC)
    ktile_start,  # [NKT] first key of the tile, relative to the sequence's keys
    csr_off,  # SLC: [HKV · NKT + 1] offsets into csr_tok
    csr_tok,  # SLC: global tokens that selected each block, ascending
    nk_total,  # NK
    scale,
    scale2,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    MODE: tl.constexpr,
    C: tl.constexpr,
    CL: tl.constexpr,
    CS: tl.constexpr,
    SB: tl.constexpr,
    W: tl.constexpr,
    NSPLIT: tl.constexpr,
    SPAN: tl.constexpr,
    ACCUMULATE: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    split = tl.program_id(2)
    TT: tl.constexpr = BM // G
    seq = tl.load(ktile_seq + pid)
    k0 = tl.load(ktile_start + pid)
    bos = tl.load(cu_seqlens + seq)
    eos = tl.load(cu_seqlens + seq + 1)
    kbos = tl.load(cu_keys + seq)
    nks = tl.load(cu_keys + seq + 1) - kbos
    r = tl.arange(0, BM)
    tok = r // G
    head = h * G + r % G
    d = tl.arange(0, BD)
    kpos = k0 + tl.arange(0, BN)
    k_ok = (tl.arange(0, BN) < SB) & (kpos < nks) if MODE == 1 else kpos < nks
    kt = _load_keys(k, kbos + kpos, d, k_ok, h, HKV, D)
    vt = _load_keys(v, kbos + kpos, d, k_ok, h, HKV, D)
    dk_acc = tl.zeros([BN, BD], tl.float32)
    dv_acc = tl.zeros([BN, BD], tl.float32)

    if MODE == 1:
        lo = tl.load(csr_off + h * tl.num_programs(0) + pid)
        hi = tl.load(csr_off + h * tl.num_programs(0) + pid + 1)
    elif MODE == 0:
        first = k0 * CS + CL - 1
        span = tl.cdiv(tl.cdiv(tl.maximum(eos - bos - first, 0), NSPLIT), TT) * TT
        if SPAN > 0:
            span = SPAN
        lo = first + split * span
        hi = tl.minimum(lo + span, eos - bos)
    else:
        lo = k0
        hi = tl.minimum(k0 + BN - 1 + W, eos - bos)

    for base in range(lo, hi, TT):
        row_ok = (tok < TT) & (base + tok < hi)
        t = tl.load(csr_tok + base + tok, mask=row_ok, other=0) if MODE == 1 else bos + base + tok
        t_rel = t - bos
        qt = _load_rows(q, t, head, d, row_ok, HQ, D)
        dot, lse2, delta_row = _load_grad_rows(do, gates, lse, delta, t, head, d, row_ok, C, HQ, D)
        key, row = kpos[None, :], t_rel[:, None]
        mask = row_ok[:, None] & k_ok[None, :]
        if MODE == 0:
            mask &= key * CS + CL - 1 <= row
        elif MODE == 1:
            mask &= key <= row
        else:
            mask &= (key <= row) & (key > row - W)
        dk_acc, dv_acc, _ = _dkv_step(qt, dot, kt, vt, mask, lse2, delta_row, dk_acc, dv_acc, scale2)

    dk_acc = dk_acc * scale
    row = split.to(tl.int64) * nk_total + (kbos + kpos).to(tl.int64)
    offs = row[:, None] * (HKV * D) + h * D + d[None, :]
    io_mask = k_ok[:, None] & (d[None, :] < D)
    if ACCUMULATE:
        dk_acc += tl.load(dk + offs, mask=io_mask, other=0.0)
        dv_acc += tl.load(dv + offs, mask=io_mask, other=0.0)
    tl.store(dk + offs, dk_acc, mask=io_mask)
    tl.store(dv + offs, dv_acc, mask=io_mask)


def launch_options(maxnreg: int | None) -> dict:
    """Extra Triton launch options: a register cap per thread when ``maxnreg`` is set."""
    return {} if maxnreg is None else {"maxnreg": maxnreg}


def async_applies(q: torch.Tensor, block_m: int = 64) -> bool:
    """Whether the Gluon kernels of :mod:`nsa_kernels.attention_async` cover queries ``q`` [N, HQ, D] in tiles of
    ``block_m`` rows: Hopper, 16-bit inputs, ``D`` of 64 or 128, ``block_m`` a multiple of 64."""
    from nsa_kernels import selection_async  # it imports this module's kernel helpers

    return selection_async.async_supported(q, q.shape[-1], q.shape[-1], 64, block_m)


def window_in_dq(q: torch.Tensor, block_m: int, block_n: int) -> bool:
    """Whether the Gluon compression dQ kernel with ``block_m`` rows and ``block_n`` keys per step can add the window
    branch's dQ too (:func:`branch_dq` ``window=``): it applies, and holds the query tile in registers, which frees
    the query buffer for the window's dO rows."""
    return async_applies(q, block_m) and block_n != q.shape[-1]


def window_emits_local(q: torch.Tensor, geometry: dict, block_m: int, block_n: int) -> bool:
    """Whether the Gluon window forward with ``block_m`` rows and ``block_n`` keys per step can also emit the
    selection's partial over each row's ``forced_local`` most recent blocks (:func:`branch_fwd` ``local=``): it
    applies, its key steps are the selection blocks and as long as its query tile (a spent key buffer stages the
    partial), and those blocks lie inside every row's window."""
    SB, FL = geometry["select_block"], geometry["forced_local"]
    steps = block_n == SB and block_m == block_n
    return async_applies(q, block_m) and steps and FL >= 1 and geometry["window"] >= FL * SB


LOCAL_RATIO_MAX = 2.0**60
"""Where the window backward adds the selection's gradients over the local blocks, it takes the selection's
probabilities there as the window's times ``ratio = exp(lse_swd - lse_slc)`` per row while every row's ratio is at most
this (:func:`local_coefficients`), else from their own exponentials: what the window's underflow drops is then below
2^-66."""


@triton.jit
def local_coef_kernel(lse_swd, lse_slc, gates, delta_slc, coef_a, coef_b, exact, R, log_ratio_max, BR: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    ok = rows < R
    gap = tl.load(lse_swd + rows, mask=ok, other=0.0) - tl.load(lse_slc + rows, mask=ok, other=0.0)
    extreme = ok & (gap > log_ratio_max)
    ratio = tl.where(extreme, 0.0, tl.exp(tl.minimum(gap, log_ratio_max)))
    gate = tl.load(gates + rows.to(tl.int64) * 3 + 1, mask=ok, other=0.0).to(tl.float32)
    tl.store(coef_a + rows, ratio * gate, mask=ok)
    tl.store(coef_b + rows, ratio * tl.load(delta_slc + rows, mask=ok, other=0.0), mask=ok)
    tl.atomic_max(exact, tl.max(extreme.to(tl.int32), 0))


def local_coefficients(
    lse_swd: torch.Tensor, lse_slc: torch.Tensor, gates: torch.Tensor, delta_slc: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """What the window backward needs to add the selection's gradients over each row's local blocks (:func:`branch_dq`
    / :func:`branch_dkv` ``local=``): ``(lse_slc, delta_slc, coef_a, coef_b, exact)``, where per row ``ratio =
    exp(lse_swd - lse_slc)`` (natural LSEs ``[N, HQ]``), ``coef_a = ratio · gate_slc`` and ``coef_b = ratio ·
    delta_slc`` (fp32), and ``exact`` (int32 ``[1]``) is 1 where some row's ratio passes :data:`LOCAL_RATIO_MAX`, so
    the kernels take the selection's probabilities from their own exponentials. Integer atomics only: deterministic."""
    R = lse_slc.numel()
    coef = torch.empty(2, *lse_slc.shape, device=lse_slc.device, dtype=torch.float32)
    exact = torch.zeros(1, device=lse_slc.device, dtype=torch.int32)
    BR = 1024
    if R:
        local_coef_kernel[(triton.cdiv(R, BR),)](
            lse_swd, lse_slc, gates, delta_slc, coef[0], coef[1], exact, R, math.log(LOCAL_RATIO_MAX), BR=BR
        )
    return lse_slc, delta_slc, coef[0], coef[1], exact


def window_takes_local(q: torch.Tensor, geometry: dict, dq_block_n: int) -> bool:
    """Whether the Gluon window backward can also add the selection's gradients over each row's ``forced_local`` most
    recent blocks (:func:`branch_dkv` and, with ``window=``, :func:`branch_dq` ``local=``, its dQ stepping over
    ``dq_block_n`` keys): its 64-key dK/dV tiles are the selection blocks, its dQ steps lie inside them, and those
    blocks lie inside every row's window."""
    SB, FL = geometry["select_block"], geometry["forced_local"]
    steps = SB == 64 and SB % dq_block_n == 0
    return async_applies(q) and steps and FL >= 1 and geometry["window"] >= FL * SB


def async_kernel(name: str, wanted: bool, q: torch.Tensor, block_m: int):
    """Kernel ``name`` of :mod:`nsa_kernels.attention_async` if ``wanted`` and :func:`async_applies`, else None."""
    if not (wanted and async_applies(q, block_m)):
        return None
    from nsa_kernels import attention_async

    return getattr(attention_async, name)


def _blocks(G: int, D: int, select_block: int, block_m: int) -> tuple[int, int, int]:
    BM = max(block_m, triton.next_power_of_2(G), 16)
    BD = max(triton.next_power_of_2(D), 16)
    BN_slc = min(max(triton.next_power_of_2(select_block), 16), 64)
    return BM, BD, BN_slc


def branch_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mode: int,
    plan: dict,
    scale: float,
    geometry: dict,
    block_m: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    maxnreg: int | None = None,
    asynchronous: bool = False,
    async_block_n: int = 32,
    local: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch :func:`branch_fwd_kernel_attn` for one branch; returns ``(o [N, HQ, D], lse [N, HQ] fp32)``.

    ``plan`` holds the varlen tables of :mod:`nsa_kernels.index` (tile table for ``block_m``, key
    offsets, and for ``SLC`` the block indices and their per-tile union). ``asynchronous``: the Gluon kernel of
    :mod:`nsa_kernels.attention_async` for ``CMP`` / ``SWD`` where it applies (see :func:`async_kernel`), stepping
    over ``async_block_n`` keys; ``maxnreg`` caps the registers per thread of whichever kernel runs. ``local``
    (``SWD`` where :func:`window_emits_local` holds): ``(o_loc [N, HQ, D], lse_loc [N, HQ] fp32, base 2)`` receive
    each row's selection partial over its ``forced_local`` most recent blocks, which lie inside its window.
    """
    N, HQ, D = q.shape
    HKV = k.shape[1]
    G = HQ // HKV
    BM, BD, BN_slc = _blocks(G, D, geometry["select_block"], block_m)
    o = torch.empty_like(q)
    lse = torch.empty(N, HQ, device=q.device, dtype=torch.float32)
    tile_seq, tile_start = plan["tiles"]
    if tile_seq.numel() == 0:
        return o, lse
    dummy = plan["cu_seqlens"]
    union_off, union_blk, blk_idx = plan.get("union", (dummy, dummy, dummy)) if mode == SLC else (dummy,) * 3
    S = blk_idx.shape[-1] if mode == SLC else 1
    cu_keys = plan["cu_keys_cmp"] if mode == CMP else plan["cu_seqlens"]
    gluon_kernel = async_kernel("branch_fwd_kernel_attn_async", asynchronous and mode != SLC, q, BM)
    if local is not None and not (mode == SWD and gluon_kernel and window_emits_local(q, geometry, BM, async_block_n)):
        raise ValueError("local partials come from the Gluon window forward only: check window_emits_local first")
    if gluon_kernel:
        from nsa_kernels.attention_async import key_descriptors

        o_loc, lse_loc = (o, lse) if local is None else local
        gluon_kernel[(tile_seq.numel(), HKV)](
            q, *key_descriptors(k, v, async_block_n), o, lse, o_loc, lse_loc, plan["cu_seqlens"], cu_keys, tile_seq,
            tile_start, scale * LOG2E, HQ=HQ, HKV=HKV, G=G, D=D, BM=BM, BN=async_block_n, MODE=mode,
            CL=geometry["compress_block"], CS=geometry["compress_stride"], W=geometry["window"],
            FL=0 if local is None else geometry["forced_local"], num_warps=num_warps, **launch_options(maxnreg),
        )  # fmt: skip
        return o, lse
    branch_fwd_kernel_attn[(tile_seq.numel(), HKV)](
        q, k, v, o, lse, plan["cu_seqlens"], cu_keys, tile_seq, tile_start, union_off, union_blk, blk_idx,
        scale * LOG2E,
        HQ=HQ, HKV=HKV, G=G, D=D, BD=BD, BM=BM, BN=BN_slc if mode == SLC else 64, MODE=mode,
        CL=geometry["compress_block"], CS=geometry["compress_stride"], SB=geometry["select_block"],
        S=S, NSP=max(triton.next_power_of_2(S), 2), W=geometry["window"],
        num_warps=num_warps, num_stages=num_stages, **launch_options(maxnreg),
    )  # fmt: skip
    return o, lse


def _bwd_common(q, k, mode: int, plan: dict, geometry: dict, block_m: int, gated: bool) -> dict:
    # launch values shared by the dQ and dK/dV passes of one branch
    HQ, D, HKV = q.shape[1], q.shape[2], k.shape[1]
    G = HQ // HKV
    BM, BD, BN_slc = _blocks(G, D, geometry["select_block"], block_m)
    return {
        "G": G, "BM": BM, "BD": BD, "BN_slc": BN_slc, "C": -1 if gated else {CMP: 0, SLC: 1, SWD: 2}[mode],
        "cu_keys": plan["cu_keys_cmp"] if mode == CMP else plan["cu_seqlens"], "dummy": plan["cu_seqlens"],
    }  # fmt: skip


def branch_dq(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    gates: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    dq: torch.Tensor | None,
    *,
    mode: int,
    plan: dict,
    scale: float,
    geometry: dict,
    accumulate_dq: bool,
    dq_out: torch.Tensor | None = None,
    block_m: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    gated: bool = False,
    maxnreg: int | None = None,
    async_dq: bool = False,
    async_block_n: int = 32,
    async_dq_maxnreg: int | None = None,
    async_dq_partial_buffers: int = 0,
    tiles: tuple[int, int] | None = None,
    heads: tuple[int, int] | None = None,
    slc_partials: tuple[torch.Tensor, torch.Tensor, int, int] | None = None,
    window: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool] | None = None,
    local: tuple[torch.Tensor, ...] | None = None,
) -> None:
    """The dQ pass of one branch (its dK/dV pass is :func:`branch_dkv`): adds its dQ into ``dq`` (fp32), or with
    ``dq_out`` (the last dQ writer: the input dtype) stores the sum there instead, over the query tiles
    ``tiles = (first, end)`` of ``plan`` (all by default). ``dq`` may be None when there is no sum to add to
    (``dq_out`` given, ``accumulate_dq`` false).

    ``gated``: ``do`` is this branch's gated gradient already (:func:`~nsa_kernels.combine.combine_bwd`), so it goes
    straight into the MMAs; otherwise the kernels multiply each dO row by the gate. ``block_m`` sets the rows of a
    query tile, ``maxnreg`` caps the registers per thread of the Triton kernel. ``async_dq``: the Gluon kernel of
    :mod:`nsa_kernels.attention_async` for ``CMP`` / ``SWD`` where it applies (see :func:`async_kernel`), stepping over
    ``async_block_n`` keys, its registers capped at ``async_dq_maxnreg``, the selection's partials copied into
    ``async_dq_partial_buffers`` tiles of shared memory (0: as many as fit where the key buffers were; at least 2).

    ``slc_partials = (dq_part, part_row, n, t_base)``: also add the selection's per-selection dQ partials (``n``
    selections per token and KV head) of the tokens from ``t_base`` on
    (:func:`~nsa_kernels.selection.selection_bwd` with ``dq_reduce``), which the tiles' tokens must all have.
    ``heads = (h0, count)`` runs the KV heads ``[h0, h0 + count)`` only (all by default); the partials then hold those
    heads alone. ``window = (k, v, do, lse, delta, gated)``: with ``mode=CMP`` where :func:`window_in_dq` holds, the
    window branch's dQ of the same tiles too, in the same kernel (its keys and values, dO, LSE and delta, and whether
    that dO is gated already). ``local`` (:func:`local_coefficients`), with an ungated window dO where
    :func:`window_takes_local` holds: the window's steps add the selection's dQ over each row's ``forced_local`` most
    recent blocks too, which the selection's partials leave out (:func:`~nsa_kernels.selection.selection_bwd`
    ``local=``); every row must have selected those blocks.
    """
    _N, HQ, D = q.shape
    HKV = k.shape[1]
    c = _bwd_common(q, k, mode, plan, geometry, block_m, gated)
    G, BM = c["G"], c["BM"]
    tile_seq, tile_start = plan["tiles"]
    first, end = (0, tile_seq.numel()) if tiles is None else tiles
    if end <= first:
        return
    union_off, union_blk, blk_idx = plan["union"] if mode == SLC else (c["dummy"],) * 3
    S = blk_idx.shape[-1] if mode == SLC else 1
    part, part_row, part_s, part_t0 = slc_partials or (c["dummy"], c["dummy"], 0, 0)
    if dq is None and (dq_out is None or accumulate_dq):
        raise ValueError("branch_dq(dq=None) needs dq_out and accumulate_dq=False: there is no fp32 dQ sum to add to")
    dq, dq_out = (dq_out, dq_out) if dq is None else (dq, dq if dq_out is None else dq_out)
    h0, head_count = (0, HKV) if heads is None else heads
    grid = (end - first, head_count)
    dq_kernel = async_kernel("branch_bwd_kernel_dq_async", async_dq and mode != SLC, q, BM)
    if window is not None and not (dq_kernel and mode == CMP and window_in_dq(q, BM, async_block_n)):
        raise ValueError("branch_dq(window=...) needs mode=CMP and the Gluon dQ kernel with window_in_dq true")
    if local is not None and (window is None or window[5] or not window_takes_local(q, geometry, async_block_n)):
        raise ValueError("branch_dq(local=...) needs window= with an ungated dO, and window_takes_local true")
    if dq_kernel:
        from nsa_kernels.attention_async import key_descriptors

        keys = key_descriptors(k, v, async_block_n)
        if window is None:
            window_args, window_c = (*keys, do, lse, delta), -2
        else:
            wk, wv, w_do, w_lse, w_delta, w_gated = window
            window_args = (*key_descriptors(wk, wv, async_block_n), w_do, w_lse, w_delta)
            window_c = -1 if w_gated else SWD
        window_args = (*window_args, *(local or (lse, delta, lse, delta, plan["cu_seqlens"])))
        dq_kernel[grid](
            q, *keys, do, gates, lse, delta, dq, dq_out, plan["cu_seqlens"], c["cu_keys"], tile_seq, tile_start, part,
            part_row, part_t0, h0, first, scale, scale * LOG2E, *window_args, HQ=HQ, HKV=HKV, G=G, D=D, BM=BM,
            BN=async_block_n, MODE=mode, C=c["C"], CL=geometry["compress_block"], CS=geometry["compress_stride"],
            W=geometry["window"], ACCUMULATE=accumulate_dq, PART_S=part_s, PART_HR=head_count,
            PART_BUFFERS=async_dq_partial_buffers, WINDOW_C=window_c, SB=geometry["select_block"],
            FL=0 if local is None else geometry["forced_local"], num_warps=num_warps,
            **launch_options(async_dq_maxnreg),
        )  # fmt: skip
        return
    branch_bwd_kernel_dq[grid](
        q, k, v, do, gates, lse, delta, dq, dq_out, plan["cu_seqlens"], c["cu_keys"], tile_seq, tile_start, union_off,
        union_blk, blk_idx, part, part_row, part_t0, h0, first, scale, scale * LOG2E, HQ=HQ, HKV=HKV, G=G, D=D,
        BD=c["BD"], BM=BM, BN=c["BN_slc"] if mode == SLC else 64, MODE=mode, C=c["C"], CL=geometry["compress_block"],
        CS=geometry["compress_stride"], SB=geometry["select_block"], S=S, NSP=max(triton.next_power_of_2(S), 2),
        W=geometry["window"], ACCUMULATE=accumulate_dq, PART_S=part_s, PART_HR=head_count, num_warps=num_warps,
        num_stages=num_stages, **launch_options(maxnreg),
    )  # fmt: skip


def branch_dkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    gates: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    *,
    mode: int,
    plan: dict,
    scale: float,
    geometry: dict,
    dkv: tuple[torch.Tensor, torch.Tensor] | None = None,
    block_m: int = 64,
    dkv_block_m: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    cmp_dkv: dict | None = None,
    gated: bool = False,
    maxnreg: int | None = None,
    async_dkv: bool = False,
    dkv_num_warps: int = 8,
    local: tuple[torch.Tensor, ...] | None = None,
    dkv_rows_tma: bool = False,
    dkv_keys: int = 64,
    dkv_buffers: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dK/dV pass of one branch (its dQ pass is :func:`branch_dq`); arguments as there.

    For ``SLC`` and ``SWD`` the dK/dV go into ``dkv`` (fp32 ``[1, N, HKV, D]`` pair; stored when
    ``dkv`` is ``None``, accumulated otherwise). For ``CMP`` they are the gradients of the compressed
    keys, ``[NC, HKV, D]`` each, reduced in order over ``NSPLIT`` token ranges. ``dkv_block_m`` sets the query rows
    gathered per step (at least ``block_m``).
    ``cmp_dkv`` sets the ``CMP`` dK/dV pass: ``block_n`` compressed keys per program, ``num_warps``, and
    ``span`` (0: equal shares of each key tile's token range; > 0: chunks of that many tokens, used when
    that gives more programs than the equal shares). ``maxnreg`` caps the registers per thread of the Triton kernel;
    ``async_dkv``: the Gluon kernel of :mod:`nsa_kernels.attention_async` for ``CMP`` / ``SWD`` where it applies (see
    :func:`async_kernel`), on ``dkv_num_warps`` warps. ``local`` (:func:`local_coefficients`; ``SWD``, ungated
    ``do``, the Gluon kernel, :func:`window_takes_local`): each key tile also gets the selection's dK/dV from
    the tokens for which it is one of their ``forced_local`` most recent blocks, which the selection then leaves out
    (:func:`~nsa_kernels.selection.selection_bwd` ``local=``); every row must have selected those blocks.
    ``dkv_rows_tma``: the Gluon kernel brings its query and dO rows by TMA (:mod:`nsa_kernels.dkv_async`) where
    :func:`~nsa_kernels.dkv_async.rows_by_tma` holds. ``dkv_keys`` = 128: without ``local`` or TMA rows, the Gluon
    kernel of :mod:`nsa_kernels.dkv_keyrows` (128 keys per program as the MMA rows, 64-row steps, ``dkv_buffers``
    row buffers) where :func:`~nsa_kernels.dkv_keyrows.applies` holds.
    """
    _N, HQ, D = q.shape
    NK, HKV = k.shape[0], k.shape[1]
    c = _bwd_common(q, k, mode, plan, geometry, block_m, gated)
    G, BM, C, cu_keys, dummy = c["G"], c["BM"], c["C"], c["cu_keys"], c["dummy"]
    common = dict(
        HQ=HQ, HKV=HKV, G=G, D=D, BD=c["BD"], MODE=mode, C=C,
        CL=geometry["compress_block"], CS=geometry["compress_stride"], SB=geometry["select_block"],
        W=geometry["window"], num_warps=num_warps, num_stages=num_stages, **launch_options(maxnreg),
    )  # fmt: skip
    if mode == SLC:
        ktile_seq, ktile_start = plan["slc_blocks"]
        csr_off, csr_tok = plan["csr"]
        BN, nsplit = max(triton.next_power_of_2(geometry["select_block"]), 16), 1
    elif mode == SWD:
        ktile_seq, ktile_start = plan["key_tiles"]
        csr_off = csr_tok = dummy
        BN, nsplit = 64, 1
    else:
        cfg = {"block_n": 64, "num_warps": num_warps, "span": 0, **(cmp_dkv or {})}
        BN, span = cfg["block_n"], cfg["span"]
        if BN == 64:
            ktile_seq, ktile_start = plan["cmp_tiles"]
        else:
            ktile_seq, ktile_start = block_table(cu_keys, BN, plan["cmp_lens"])[:2]
        csr_off = csr_tok = dummy
        longest = max(plan["lens"], default=0)
        busy = max(tile_count(plan["cmp_lens"], BN) * HKV, 1)
        nsplit = max(1, min(64, triton.cdiv(512, busy), triton.cdiv(longest, 512)))
        if span > 0 and triton.cdiv(longest, span) > nsplit:
            nsplit = triton.cdiv(longest, span)
        else:
            span = 0
        common["num_warps"] = cfg["num_warps"]
    accumulate = dkv is not None and mode != CMP
    if mode == CMP or dkv is None:
        shape = (nsplit, NK, HKV, D)
        dkv = (torch.empty(shape, device=q.device, dtype=torch.float32),) * 2
        dkv = (dkv[0], torch.empty(shape, device=q.device, dtype=torch.float32))
    dkv_bm = max(dkv_block_m, BM)
    gluon_dkv = async_dkv and mode != SLC and BN == 64 and async_applies(q, dkv_bm)
    if local is not None and not (mode == SWD and gluon_dkv and C >= 0 and window_takes_local(q, geometry, 64)):
        raise ValueError("branch_dkv(local=...) needs mode=SWD, an ungated dO, the Gluon kernel and window_takes_local")
    tma_rows = False
    if gluon_dkv and dkv_rows_tma:
        from nsa_kernels import dkv_async

        tma_rows = dkv_async.rows_by_tma(q, do, G, dkv_bm)
    keyrows = gluon_dkv and not tma_rows and local is None and dkv_keys == 128
    if keyrows:
        from nsa_kernels import attention_async, dkv_keyrows

        key_lens = plan["cmp_lens"] if mode == CMP else plan["lens"]
        keyrows = dkv_keyrows.applies(q, do, tile_count(key_lens, dkv_keyrows.KEYS) * HKV * nsplit)
    dkv_kernel = async_kernel("branch_bwd_kernel_dkv_async", gluon_dkv and not tma_rows, q, dkv_bm)
    if keyrows:
        ktile_seq, ktile_start = block_table(cu_keys, dkv_keyrows.KEYS, key_lens)[:2]
    if ktile_seq.numel() and keyrows:
        dkv_keyrows.branch_bwd_kernel_dkv_keyrows[(ktile_seq.numel(), HKV, nsplit)](
            dkv_keyrows.row_descriptor(q), *attention_async.key_descriptors(k, v, dkv_keyrows.KEYS // 2),
            dkv_keyrows.row_descriptor(do), gates, lse, delta, dkv[0], dkv[1], plan["cu_seqlens"], cu_keys, ktile_seq,
            ktile_start, NK, scale, scale * LOG2E, HQ=HQ, HKV=HKV, G=G, D=D, BM=dkv_keyrows.ROWS,
            BN=dkv_keyrows.KEYS, MODE=mode, C=C, CL=common["CL"], CS=common["CS"], W=common["W"], NSPLIT=nsplit,
            SPAN=span if mode == CMP else 0, ACCUMULATE=accumulate, NBUF=dkv_buffers, **dkv_keyrows.LAUNCH,
        )  # fmt: skip
    elif ktile_seq.numel() and tma_rows:
        q_descs, do_descs = (dkv_async.head_part_descriptors(x, G, dkv_bm) for x in (q, do))
        P0, P1, P2 = dkv_async.head_parts(G)
        dkv_async.branch_bwd_kernel_dkv_tma[(ktile_seq.numel(), HKV, nsplit)](
            *q_descs, k, v, *do_descs, gates, lse, delta, dkv[0], dkv[1], plan["cu_seqlens"], cu_keys, ktile_seq,
            ktile_start, NK, scale, scale * LOG2E, *(local or (lse, delta, lse, delta, cu_keys)), HQ=HQ, HKV=HKV,
            G=G, D=D, BM=dkv_bm, BN=64, MODE=mode, C=C, CL=common["CL"], CS=common["CS"], W=common["W"],
            NSPLIT=nsplit, SPAN=span if mode == CMP else 0, ACCUMULATE=accumulate,
            FL=0 if local is None else geometry["forced_local"], P0=P0, P1=P1, P2=P2, num_warps=dkv_num_warps,
        )  # fmt: skip
    elif ktile_seq.numel() and dkv_kernel:
        dkv_kernel[(ktile_seq.numel(), HKV, nsplit)](
            q, k, v, do, gates, lse, delta, dkv[0], dkv[1], plan["cu_seqlens"], cu_keys, ktile_seq, ktile_start, NK,
            scale, scale * LOG2E, *(local or (lse, delta, lse, delta, cu_keys)), HQ=HQ, HKV=HKV, G=G, D=D, BM=dkv_bm,
            BN=64, MODE=mode, C=C, CL=common["CL"], CS=common["CS"], W=common["W"], NSPLIT=nsplit,
            SPAN=span if mode == CMP else 0, ACCUMULATE=accumulate, FL=0 if local is None else geometry["forced_local"],
            num_warps=dkv_num_warps,
        )  # fmt: skip
    elif ktile_seq.numel():
        branch_bwd_kernel_dkv[(ktile_seq.numel(), HKV, nsplit)](
            q, k, v, do, gates, lse, delta, dkv[0], dkv[1],
            plan["cu_seqlens"], cu_keys, ktile_seq, ktile_start, csr_off, csr_tok, NK,
            scale, scale * LOG2E,
            BM=dkv_bm, BN=BN, NSPLIT=nsplit, SPAN=span if mode == CMP else 0,
            ACCUMULATE=accumulate, **common,
        )  # fmt: skip
    if mode == CMP:
        return dkv[0].sum(0), dkv[1].sum(0)
    return dkv

"""Selection attention, block-outer: each selected K/V block is read once per work item, queries gathered.

The tile-outer kernels of :mod:`nsa_kernels.attention` gather the K/V of every block a query tile
selected; on inputs whose neighbouring tokens share few blocks that is ~1 MB of K/V per (token, KV head).
Here a program owns one work item: a (KV head, selection block) and a slice of the CSR list of the
selections of that block (:func:`nsa_kernels.index.selection_csr`), and visits its
query rows TT tokens × G heads at a time, so only ~G·D query elements move per selection.

Forward: every selection ``e = (t·HKV + h)·S + slot`` gets a partial output (softmax over the block
alone, in the input dtype) and its base-2 LSE; a merge pass folds the S partials of each
(token, KV head) in slot order. Backward: one pass recomputes P once per selection and yields the
partial dQ of that selection (input dtype by default, laid out step by step, see :func:`selection_bwd`) and the
dK/dV partial sums of the work item; two reduce passes add them in a fixed order (slots ascending, work items
ascending). No float atomics: deterministic.

Shape legend:
    N packed tokens, HQ query heads, HKV KV heads, G = HQ / HKV, D head dim (BD its tile),
    S selected blocks per query, E = N·HKV·S selections, NB selection blocks over all sequences,
    SB selection block (BN its power of two), NW work items, BM rows per step (TT = BM // G tokens).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from nsa_kernels.attention import (
    LOG2E,
    _dkv_step,
    _load_grad_rows,
    _load_keys,
    _load_rows,
    _selection_dq_sum,
    launch_options,
)
from nsa_kernels.csr import work_items
from nsa_kernels.index import (
    cached,
    positions,
    selection_csr,
    selection_csr_size,
    tile_at,
    token_block_offsets,
)


@triton.jit
def _work_item(item_row, item_lo, item_hi, blk_seq, blk_start, cu_seqlens, pid, NB):
    # one work item: KV head h, a selection block (first key k0) of a sequence [bos, eos), selections [lo, hi)
    row = tl.load(item_row + pid)
    b = row % NB
    seq = tl.load(blk_seq + b)
    bos = tl.load(cu_seqlens + seq)
    eos = tl.load(cu_seqlens + seq + 1)
    return row // NB, tl.load(blk_start + b), bos, eos, tl.load(item_lo + pid), tl.load(item_hi + pid)


@triton.jit
def _load_key_halves(x, pos, dh, ok, h, HKV: tl.constexpr, D: tl.constexpr, HD: tl.constexpr):
    # the [BN, HD] column halves [0, HD) and [HD, 2·HD) of the keys at pos of a [NK, HKV, D] tensor
    ptrs = x + pos.to(tl.int64)[:, None] * (HKV * D) + h * D + dh[None, :]
    lo = tl.load(ptrs, mask=ok[:, None] & (dh[None, :] < D), other=0.0)
    return lo, tl.load(ptrs + HD, mask=ok[:, None] & (dh[None, :] + HD < D), other=0.0)


@triton.jit
def _load_entries(csr_ent, base, hi, tok, TT: tl.constexpr):
    # the raw CSR entries base + tok (< hi) of one step, 0 past the item
    return tl.load(csr_ent + base + tok, mask=(tok < TT) & (base + tok < hi), other=0)


@triton.jit
def _decode_entries(ent, base, hi, tok, TT: tl.constexpr, HKV: tl.constexpr, S: tl.constexpr):
    # row mask, selection e = (t·HKV + h)·S + slot and token t of the entries loaded for step base
    e = ent.to(tl.int64)
    return (tok < TT) & (base + tok < hi), e, e // (HKV * S)


@triton.jit
def _entries(csr_ent, base, hi, tok, TT: tl.constexpr, HKV: tl.constexpr, S: tl.constexpr):
    # the CSR entries base + tok (< hi) of one step: row mask, selection e = (t·HKV + h)·S + slot, token t
    return _decode_entries(_load_entries(csr_ent, base, hi, tok, TT), base, hi, tok, TT, HKV, S)


@triton.jit
def _range_selection(e, t, e_base, h0, HKV: tl.constexpr, HR: tl.constexpr, S: tl.constexpr):
    # the index of selection e = (t·HKV + h)·S + slot among the partials of a token range that starts at selection
    # e_base (its first token's) and holds the KV heads [h0, h0 + HR): ((t - t_base)·HR + h - h0)·S + slot
    return e - e_base - ((t - e_base // (HKV * S)) * (HKV - HR) + h0) * S


@triton.jit
def _store_product(out, rows, row_ok, a, b_lo, b_hi, factor, d, dh, HALVES: tl.constexpr, D: tl.constexpr,
                   HD: tl.constexpr):  # fmt: skip
    # out[rows, :D] = (a @ B) · factor, B = [b_lo | b_hi] made and stored one D/2 half at a time (fewer live
    # registers), or B = b_lo whole
    if HALVES:
        ptrs = out + rows[:, None] * D + dh[None, :]
        tl.store(ptrs, (tl.dot(a, b_lo) * factor).to(out.dtype.element_ty), mask=row_ok[:, None] & (dh[None, :] < D))
        hi_mask = row_ok[:, None] & (dh[None, :] + HD < D)
        tl.store(ptrs + HD, (tl.dot(a, b_hi) * factor).to(out.dtype.element_ty), mask=hi_mask)
    else:
        ptrs = out + rows[:, None] * D + d[None, :]
        tl.store(ptrs, (tl.dot(a, b_lo) * factor).to(out.dtype.element_ty), mask=row_ok[:, None] & (d[None, :] < D))


@triton.jit
def _masked_entries(csr_ent, lo, hi, k0, bos, eos, i, HKV: tl.constexpr, S: tl.constexpr, SB: tl.constexpr,
                    BN: tl.constexpr):  # fmt: skip
    # how many of the entries [lo, hi) need the key mask: those whose token lies inside the block (entries ascend
    # by token and a block holds at most SB - 1 such tokens, so they come first and fit one BN-wide load), or
    # all of them when the block is cut by the sequence end or padded (SB < BN); i = arange(0, BN)
    ok = lo + i < hi
    t = tl.load(csr_ent + lo + i, mask=ok, other=0).to(tl.int64) // (HKV * S)
    inside = tl.sum((ok & (t - bos < k0 + SB - 1)).to(tl.int32), 0)
    return tl.where((k0 + SB <= eos - bos) & (SB == BN), inside, hi - lo)


@triton.jit
def _block_softmax(s, scale2):
    # the rows of one block's scores s (masked keys -inf) as probabilities over the block, scaled by scale2 > 0 in
    # base 2, and each row's base-2 LSE; a row without keys gets P = 0 and LSE -inf
    m = tl.max(s, 1)
    m_safe = tl.where(m == float("-inf"), 0.0, m * scale2)
    p = tl.exp2(s * scale2 - m_safe[:, None])
    l_i = tl.sum(p, 1)
    has_key = l_i > 0
    l_safe = tl.where(has_key, l_i, 1.0)
    return p * (1.0 / l_safe)[:, None], tl.where(has_key, m_safe + tl.log2(l_safe), float("-inf"))


@triton.jit
def _slc_fwd_step(
    qt, row_ok, e, t, kt, v_a, v_b, o_part, lse_part, g, d, dh, kpos, k_ok, bos, e_base, scale2,
    MASKED: tl.constexpr, O_HALVES: tl.constexpr, G: tl.constexpr, D: tl.constexpr, HD: tl.constexpr,
):  # fmt: skip
    # partial outputs and LSEs of the selections e (rows row_ok, tokens t, query rows qt) over one block; v_a, v_b:
    # V halves or V twice. Unmasked steps: rows past the item load zeros and are not stored. The scale (> 0) goes
    # into the exponent's FMA and P is normalised before the PV product, not the D-wide output
    s = tl.dot(qt, tl.trans(kt))
    if MASKED:
        s = tl.where(row_ok[:, None] & k_ok[None, :] & (kpos[None, :] <= (t - bos)[:, None]), s, float("-inf"))
    p, lse_row = _block_softmax(s, scale2)
    out_rows = (e - e_base) * G + g
    _store_product(o_part, out_rows, row_ok, p.to(v_a.dtype), v_a, v_b, 1.0, d, dh, O_HALVES, D, HD)
    tl.store(lse_part + out_rows, lse_row, mask=row_ok)


@triton.jit
def slc_fwd_kernel_block(
    q,  # [N, HQ, D]
    k,  # [N, HKV, D]
    v,  # [N, HKV, D]
    o_part,  # [E, G, D] input dtype
    lse_part,  # [E, G] fp32, base 2
    cu_seqlens,
    blk_seq,  # [NB]
    blk_start,  # [NB] first key of the block, relative to its sequence
    csr_ent,  # [nnz] selections e, grouped by (KV head, block)
    item_row,  # [NW] CSR row h·NB + b of each work item
    item_lo,  # [NW]
    item_hi,  # [NW]
    NB,
    e_base,  # first selection of this token range: partials are indexed e - e_base
    scale2,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    SB: tl.constexpr,
    S: tl.constexpr,
    O_HALVES: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    pid = tl.program_id(0)
    TT: tl.constexpr = BM // G
    HD: tl.constexpr = BD // 2
    h, k0, bos, eos, lo, hi = _work_item(item_row, item_lo, item_hi, blk_seq, blk_start, cu_seqlens, pid, NB)
    d = tl.arange(0, BD)
    dh = tl.arange(0, HD)
    kpos = k0 + tl.arange(0, BN)
    k_ok = (tl.arange(0, BN) < SB) & (kpos < eos - bos)
    kt = _load_keys(k, bos + kpos, d, k_ok, h, HKV, D)
    if O_HALVES:
        v_a, v_b = _load_key_halves(v, bos + kpos, dh, k_ok, h, HKV, D, HD)
    else:
        v_a = _load_keys(v, bos + kpos, d, k_ok, h, HKV, D)
        v_b = v_a
    r = tl.arange(0, BM)
    tok = r // G
    g = r % G
    head = h * G + g
    masked = _masked_entries(csr_ent, lo, hi, k0, bos, eos, tl.arange(0, BN), HKV, S, SB, BN)
    split = tl.minimum(lo + tl.cdiv(masked, TT) * TT, hi)
    for base in range(lo, split, TT):
        row_ok, e, t = _entries(csr_ent, base, hi, tok, TT, HKV, S)
        qt = _load_rows(q, t, head, d, row_ok, HQ, D)
        _slc_fwd_step(qt, row_ok, e, t, kt, v_a, v_b, o_part, lse_part, g, d, dh, kpos, k_ok, bos, e_base, scale2,
                      True, O_HALVES, G, D, HD)  # fmt: skip
    if PREFETCH:
        # software pipeline by hand: the query rows of step i + 1 and the CSR entries of step i + 2 are loaded into
        # registers while step i computes, so neither load's latency sits between two steps
        row_ok, e, t = _entries(csr_ent, split, hi, tok, TT, HKV, S)
        qt = _load_rows(q, t, head, d, row_ok, HQ, D)
        ent_next = _load_entries(csr_ent, split + TT, hi, tok, TT)
        for base in range(split, hi, TT):
            ent_after = _load_entries(csr_ent, base + 2 * TT, hi, tok, TT)
            ok_next, e_next, t_next = _decode_entries(ent_next, base + TT, hi, tok, TT, HKV, S)
            q_next = _load_rows(q, t_next, head, d, ok_next, HQ, D)
            _slc_fwd_step(qt, row_ok, e, t, kt, v_a, v_b, o_part, lse_part, g, d, dh, kpos, k_ok, bos, e_base, scale2,
                          False, O_HALVES, G, D, HD)  # fmt: skip
            row_ok, e, t, qt = ok_next, e_next, t_next, q_next
            ent_next = ent_after
    else:
        for base in range(split, hi, TT):
            row_ok, e, t = _entries(csr_ent, base, hi, tok, TT, HKV, S)
            qt = _load_rows(q, t, head, d, row_ok, HQ, D)
            _slc_fwd_step(qt, row_ok, e, t, kt, v_a, v_b, o_part, lse_part, g, d, dh, kpos, k_ok, bos, e_base, scale2,
                          False, O_HALVES, G, D, HD)  # fmt: skip


@triton.jit
def slc_fwd_kernel_merge(
    o_part,  # [E, G, D]
    lse_part,  # [E, G] base 2
    blk_idx,  # [N, HKV, S]
    o,  # [N, HQ, D]
    lse,  # [N, HQ] natural log
    o_loc,  # [N, HQ, D] partial over the FL most recent blocks (FL > 0)
    lse_loc,  # [N, HQ] its LSE, base 2
    t_rel,  # [N] position of each token in its sequence (FL > 0)
    t_base,  # first token of this range (partials start there)
    t_end,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    S: tl.constexpr,
    SB: tl.constexpr,
    FL: tl.constexpr,
):
    # FL > 0: the selections of a token's FL most recent blocks have no partial in o_part; the merge starts from
    # their joint partial in o_loc / lse_loc instead
    h = tl.program_id(1)
    TT: tl.constexpr = BM // G
    r = tl.arange(0, BM)
    tok = r // G
    g = r % G
    t = t_base + (tl.program_id(0) * TT + tok).to(tl.int64)
    row_ok = (tok < TT) & (t < t_end)
    d = tl.arange(0, BD)
    if FL > 0:
        local_first = tl.load(t_rel + t, mask=row_ok, other=0) // SB - FL + 1
        loc = t * HQ + h * G + g
        m_i = tl.load(lse_loc + loc, mask=row_ok, other=float("-inf"))
        l_i = tl.where(m_i > float("-inf"), 1.0, 0.0)
        acc = tl.load(o_loc + loc[:, None] * D + d[None, :], mask=row_ok[:, None] & (d[None, :] < D), other=0.0)
        acc = acc.to(tl.float32)
    else:
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, BD], tl.float32)
    for slot in range(S):
        e = (t * HKV + h) * S + slot
        blk = tl.load(blk_idx + e, mask=row_ok, other=-1)
        ok = row_ok & (blk >= 0)
        if FL > 0:
            ok &= blk < local_first
        pe = (((t - t_base) * HKV + h) * S + slot) * G + g
        lp = tl.load(lse_part + pe, mask=ok, other=float("-inf"))
        op = tl.load(o_part + pe[:, None] * D + d[None, :], mask=ok[:, None] & (d[None, :] < D), other=0.0)
        m_new = tl.maximum(m_i, lp)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        w = tl.exp2(lp - m_safe)
        l_i = l_i * alpha + w
        acc = acc * alpha[:, None] + w[:, None] * op.to(tl.float32)
        m_i = m_new
    has_key = l_i > 0
    l_safe = tl.where(has_key, l_i, 1.0)
    head = h * G + g
    tl.store(
        o + t[:, None] * (HQ * D) + head[:, None] * D + d[None, :],
        (acc / l_safe[:, None]).to(o.dtype.element_ty),
        mask=row_ok[:, None] & (d[None, :] < D),
    )
    tl.store(lse + t * HQ + head, tl.where(has_key, (m_i + tl.log2(l_safe)) / 1.4426950408889634, float("-inf")),
             mask=row_ok)  # fmt: skip


@triton.jit
def _slc_bwd_rows(q, do, gates, lse, delta, t, head, d, row_ok, C: tl.constexpr, HQ: tl.constexpr, D: tl.constexpr):
    # what one backward step reads per row: query, gated dO, base-2 LSE, delta
    qt = _load_rows(q, t, head, d, row_ok, HQ, D)
    dot, lse2, delta_row = _load_grad_rows(do, gates, lse, delta, t, head, d, row_ok, C, HQ, D)
    return qt, dot, lse2, delta_row


@triton.jit
def _slc_bwd_step(
    qt, dot, lse2, delta_row, row_ok, rows, t, kt, vt, k_a, k_b, dq_part, d, dh, kpos, k_ok, bos,
    dk_acc, dv_acc, scale, scale2, DQ_HALVES: tl.constexpr, D: tl.constexpr, HD: tl.constexpr,
):  # fmt: skip
    # dK/dV sums and the dQ partials (at rows of dq_part) of the rows row_ok of tokens t; k_a, k_b: K halves or K twice
    mask = row_ok[:, None] & k_ok[None, :] & (kpos[None, :] <= (t - bos)[:, None])
    dk_acc, dv_acc, ds = _dkv_step(qt, dot, kt, vt, mask, lse2, delta_row, dk_acc, dv_acc, scale2)
    _store_product(dq_part, rows, row_ok, ds, k_a, k_b, scale, d, dh, DQ_HALVES, D, HD)
    return dk_acc, dv_acc


@triton.jit
def slc_bwd_kernel_block(
    q,  # [N, HQ, D]
    k,  # [N, HKV, D]
    v,  # [N, HKV, D]
    do,  # [N, HQ, D]
    gates,  # [N, HQ, 3]
    lse,  # [N, HQ] natural log, of the selection branch
    delta,  # [N, HQ]
    dq_part,  # [R, D] fp32 or the input dtype: BM rows per step of the launch, (token slot, head g) in a step
    part_row,  # [E] int32: the first dq_part row of each selection of the range's KV heads [h0, h0 + HR), written here
    dk_part,  # [NW, BN, D] fp32
    dv_part,  # [NW, BN, D] fp32
    cu_seqlens,
    blk_seq,
    blk_start,
    csr_ent,
    item_row,
    item_lo,
    item_hi,
    item_step,  # [NW] int32: the launch's first step of each item
    NB,
    e_base,
    h0,
    item_base,  # first row of this launch's items in dk_part / dv_part
    scale,
    scale2,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    SB: tl.constexpr,
    S: tl.constexpr,
    C: tl.constexpr,
    DQ_HALVES: tl.constexpr,
    HR: tl.constexpr,
):
    pid = tl.program_id(0)
    TT: tl.constexpr = BM // G
    HD: tl.constexpr = BD // 2
    h, k0, bos, eos, lo, hi = _work_item(item_row, item_lo, item_hi, blk_seq, blk_start, cu_seqlens, pid, NB)
    d = tl.arange(0, BD)
    n = tl.arange(0, BN)
    kpos = k0 + n
    k_ok = (n < SB) & (kpos < eos - bos)
    kt = _load_keys(k, bos + kpos, d, k_ok, h, HKV, D)
    vt = _load_keys(v, bos + kpos, d, k_ok, h, HKV, D)
    dh = tl.arange(0, HD)
    if DQ_HALVES:
        k_a, k_b = _load_key_halves(k, bos + kpos, dh, k_ok, h, HKV, D, HD)
    else:
        k_a = kt
        k_b = kt
    dk_acc = tl.zeros([BN, BD], tl.float32)
    dv_acc = tl.zeros([BN, BD], tl.float32)
    r = tl.arange(0, BM)
    tok = r // G
    g = r % G
    head = h * G + g
    step0 = tl.load(item_step + pid)
    for base in range(lo, hi, TT):
        row_ok, e, t = _entries(csr_ent, base, hi, tok, TT, HKV, S)
        qt, dot, lse2, delta_row = _slc_bwd_rows(q, do, gates, lse, delta, t, head, d, row_ok, C, HQ, D)
        rows = (step0 + (base - lo) // TT).to(tl.int64) * BM + r
        tl.store(part_row + _range_selection(e, t, e_base, h0, HKV, HR, S), rows, mask=row_ok & (g == 0))
        dk_acc, dv_acc = _slc_bwd_step(
            qt, dot, lse2, delta_row, row_ok, rows, t, kt, vt, k_a, k_b, dq_part, d, dh, kpos, k_ok, bos,
            dk_acc, dv_acc, scale, scale2, DQ_HALVES, D, HD,
        )  # fmt: skip
    offs = ((item_base + pid).to(tl.int64) * BN + n)[:, None] * D + d[None, :]
    io_mask = (n < BN)[:, None] & (d[None, :] < D)
    tl.store(dk_part + offs, dk_acc * scale, mask=io_mask)
    tl.store(dv_part + offs, dv_acc, mask=io_mask)


@triton.jit
def slc_bwd_kernel_reduce_dkv(
    dk_part,  # [NW, BN, D] items of `ranges` consecutive token ranges
    dv_part,
    row_first,  # [ranges · HKV / HR, HR·NB + 1] first work item of each CSR row, per token range and HR KV heads
    ranges,
    dk,  # [N, HKV, D] fp32
    dv,
    cu_seqlens,
    blk_seq,
    blk_start,
    NB,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
    SB: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    HR: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    rows = row_first + (h // HR) * (HR * NB + 1) + (h % HR) * NB + b
    seq = tl.load(blk_seq + b)
    k0 = tl.load(blk_start + b)
    bos = tl.load(cu_seqlens + seq)
    eos = tl.load(cu_seqlens + seq + 1)
    n = tl.arange(0, BN)
    d = tl.arange(0, BD)
    k_ok = (n < SB) & (k0 + n < eos - bos)
    dk_acc = tl.zeros([BN, BD], tl.float32)
    dv_acc = tl.zeros([BN, BD], tl.float32)
    part_mask = (n < BN)[:, None] & (d[None, :] < D)
    for r in range(ranges):
        first = tl.load(rows + r * (HKV // HR) * (HR * NB + 1))
        last = tl.load(rows + r * (HKV // HR) * (HR * NB + 1) + 1)
        for item in range(first, last):
            offs = (item * BN + n).to(tl.int64)[:, None] * D + d[None, :]
            dk_acc += tl.load(dk_part + offs, mask=part_mask, other=0.0)
            dv_acc += tl.load(dv_part + offs, mask=part_mask, other=0.0)
    offs = (bos + k0 + n).to(tl.int64)[:, None] * (HKV * D) + h * D + d[None, :]
    io_mask = k_ok[:, None] & (d[None, :] < D)
    if ACCUMULATE:
        dk_acc += tl.load(dk + offs, mask=io_mask, other=0.0)
        dv_acc += tl.load(dv + offs, mask=io_mask, other=0.0)
    tl.store(dk + offs, dk_acc, mask=io_mask)
    tl.store(dv + offs, dv_acc, mask=io_mask)


@triton.jit
def slc_bwd_kernel_reduce_dq(
    dq_part,  # [R, D] fp32 or the input dtype: the range's partials (slc_bwd_kernel_block)
    part_row,  # [E] int32: the first dq_part row of each of the range's selections (-1: an empty slot)
    dq,  # [N, HQ, D] fp32, accumulated from
    dq_out,  # [N, HQ, D] fp32 or the input dtype, stored (may be dq)
    t_base,
    t_end,
    h0,
    HQ: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    S: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    HR: tl.constexpr,
):
    h = h0 + tl.program_id(1)
    TT: tl.constexpr = BM // G
    r = tl.arange(0, BM)
    tok = r // G
    g = r % G
    t = t_base + (tl.program_id(0) * TT + tok).to(tl.int64)
    row_ok = (tok < TT) & (t < t_end)
    d = tl.arange(0, BD)
    acc = _selection_dq_sum(dq_part, part_row, t, g, row_ok, t_base, h, h0, d, HR, S, G, D, BM, BD)
    ptrs = dq + t[:, None] * (HQ * D) + (h * G + g)[:, None] * D + d[None, :]
    io_mask = row_ok[:, None] & (d[None, :] < D)
    if ACCUMULATE:
        acc += tl.load(ptrs, mask=io_mask, other=0.0)
    out_ptrs = dq_out + t[:, None] * (HQ * D) + (h * G + g)[:, None] * D + d[None, :]
    tl.store(out_ptrs, acc.to(dq_out.dtype.element_ty), mask=io_mask)


def selection_plan(
    plan: dict, block_indices: torch.Tensor, select_block: int, csr: tuple[torch.Tensor, torch.Tensor] | None = None
) -> dict:
    """CSR of the selections per (KV head, block), entries ``e``, and the keys that split it by token range.

    ``csr``: the ``(entries, key)`` of an earlier plan of the same indices (the forward's, reused by the
    backward), so the sort is not run again.
    """
    cu, lens, memo = plan["cu_seqlens"], plan["lens"], plan.get("memo")
    N = block_indices.shape[0]
    if csr is None:
        offsets = cached(
            memo, ("token_block_offsets", select_block), lambda: token_block_offsets(cu, select_block, N, lens)
        )
        ent, key, big, rows = selection_csr(block_indices, cu, select_block, lens, offsets)
    else:
        (ent, key), (big, rows) = csr, selection_csr_size(*block_indices.shape[:2], select_block, lens)
    base = cached(memo, ("csr_row_base", select_block), lambda: torch.arange(rows, device=key.device) * big)
    return {
        "entries": ent, "key": key, "big": big, "rows": rows, "row_base": base, "block_indices": block_indices,
        "memo": memo,
    }  # fmt: skip


def _token_ranges(
    sel: dict,
    N: int,
    per_token_elems: int,
    partial_elems: int,
    item: int,
    cuts: list[int] | None = None,
    heads: int | None = None,
    first_token: torch.Tensor | None = None,
    tokens_per_step: int = 1,
    item_rows: int = 128,
) -> list[tuple[int, int, list[tuple[int, tuple[torch.Tensor, ...]]]]]:
    """Token ranges of at most ``partial_elems / per_token_elems`` tokens (or between the given ``cuts``), each as
    ``(t_lo, t_hi, units)``: one unit ``(h0, (item_row, item_lo, item_hi, item_step, row_first))`` per group of
    ``heads`` KV heads (all by default), whose work items cover the CSR rows of the KV heads ``[h0, h0 + heads)`` with
    steps of ``tokens_per_step`` entries; ``first_token`` (int64 per CSR row): the entries of tokens before it are left
    out. The items of all units come from one :func:`~nsa_kernels.csr.work_items` call (``item_rows`` CSR rows per
    program), sized by an upper bound (no device sync, :func:`_item_bound`); the table of units is kept in the plan's
    memo.
    """
    _, HKV, S = sel["block_indices"].shape
    heads = heads or HKV
    blocks = sel["rows"] // HKV
    if cuts is None:
        cuts = [*range(0, N, max(1, partial_elems // per_token_elems)), N]
    spans = list(itertools.pairwise(cuts))
    bound = max((_item_bound((t_hi - t_lo) * heads * S, item, heads * blocks) for t_lo, t_hi in spans), default=0)
    big = sel["big"]
    units = [(h0 * blocks, min(t_lo, big), min(t_hi, big)) for t_lo, t_hi in spans for h0 in range(0, HKV, heads)]
    table = cached(sel.get("memo"), ("work_units", tuple(units)), lambda: _unit_table(units, sel["key"].device))
    tables, row_first = work_items(
        sel["key"], sel["row_base"], table, heads * blocks, item, bound, tokens_per_step, first_token, item_rows
    )
    groups = range(0, HKV, heads)
    per_unit = [(*unit, first) for unit, first in zip(tables, row_first, strict=True)]
    return [
        (t_lo, t_hi, list(zip(groups, per_unit[i * len(groups) : (i + 1) * len(groups)], strict=True)))
        for i, (t_lo, t_hi) in enumerate(spans)
    ]


def _unit_table(units: list[tuple[int, int, int]], device: torch.device) -> torch.Tensor:
    """The work-item units ``(row0, t_lo, t_hi)`` as an int64 ``[U, 3]`` table on ``device``."""
    return torch.tensor(units, dtype=torch.int64, device=device).reshape(-1, 3)


def _local_end(plan: dict, select_block: int, forced_local: int, HKV: int) -> torch.Tensor:
    """Per CSR row (KV head, global selection block), int64: the first token past the ``forced_local`` blocks that
    start at it, i.e. past the tokens for which it is a forced local block."""
    blk_seq, blk_start = (x.long() for x in plan["slc_blocks"])
    cu = plan["cu_seqlens"].long()
    end = torch.minimum(cu[blk_seq] + blk_start + forced_local * select_block, cu[blk_seq + 1])
    return end.repeat(HKV)


def _item_bound(entries: int, item: int, rows: int) -> int:
    """Upper bound on the work items of ``entries`` CSR entries in ``rows`` CSR rows, ``item`` per item: ``entries /
    item`` full items plus one partial item per row."""
    return entries // item + min(rows, entries)


def _range_heads(HKV: int, wanted: int, N: int, head_token_elems: int, partial_elems: int) -> int:
    """KV heads per backward token range: all for ``wanted`` 0, else the most (a multiple of ``gcd(HKV, wanted)`` that
    divides HKV) whose token ranges, ``partial_elems / (heads · head_token_elems)`` tokens each, are no more than those
    of the fewest (so a call whose partials fit one range keeps one launch)."""
    if not wanted:
        return HKV
    fewest = math.gcd(HKV, wanted)

    def ranges(heads: int) -> int:
        return -(-N // max(1, partial_elems // (heads * head_token_elems)))

    return max(h for h in range(fewest, HKV + 1, fewest) if HKV % h == 0 and ranges(h) <= ranges(fewest))


def _tile_cuts(lens: list[int], N: int, step: int, tokens_per_tile: int) -> tuple[list[int], list[int]]:
    """Range cuts about ``step`` tokens apart, each moved back to the start of its tile of ``tokens_per_tile``
    (:func:`~nsa_kernels.index.tile_at`): the token cuts and the tile index at each."""
    at = sorted({tile_at(lens, tokens_per_tile, t) for t in range(0, N, step)} | {tile_at(lens, tokens_per_tile, N)})
    return [token for _, token in at], [tile for tile, _ in at]


def _dkv_groups(ranges, elems_per_item: int, budget: int):
    """Consecutive token ranges grouped so that each group's dK/dV partials fit ``budget`` elements (a range larger
    than the budget forms a group of its own); yields ``(group, items)``."""
    group, items = [], 0
    for token_range in ranges:
        size = sum(tables[0].numel() for _, tables in token_range[2])
        if group and (items + size) * elems_per_item > budget:
            yield group, items
            group, items = [], 0
        group.append(token_range)
        items += size
    if group:
        yield group, items


def _sizes(G: int, D: int, select_block: int, block_m: int) -> tuple[int, int, int]:
    return max(block_m, triton.next_power_of_2(G), 16), max(triton.next_power_of_2(D), 16), select_block


def _item_size(item: int, entries: int, device: torch.device, waves: int, growth: int = 4) -> int:
    """``item`` doubled, at most to ``growth · item``, while a launch of ``entries`` CSR entries keeps at least
    ``waves`` waves of work items on the GPU's SMs (``item`` itself off CUDA or with ``waves`` 0)."""
    if not waves or device.type != "cuda":
        return item
    programs = waves * torch.cuda.get_device_properties(device).multi_processor_count
    size = item
    while 2 * size <= growth * item and entries // (2 * size) >= programs:
        size *= 2
    return size


def _async_kernel(name: str, wanted: bool, q: torch.Tensor, D: int, BD: int, BN: int, BM: int):
    """Kernel ``name`` of :mod:`nsa_kernels.selection_async` (or, for a ``_ws`` name, :mod:`nsa_kernels.selection_ws`)
    if ``wanted`` and it covers the call, else None."""
    if not wanted:
        return None
    from nsa_kernels import selection_async, selection_ws  # they reuse this module's kernel helpers

    module = selection_ws if name.endswith("_ws") else selection_async
    return getattr(module, name) if selection_async.async_supported(q, D, BD, BN, BM) else None


def selection_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    plan: dict,
    sel: dict,
    scale: float,
    select_block: int,
    block_m: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    item: int = 288,
    partial_elems: int = 2**30,
    maxnreg: int | None = None,
    merge_block_m: int = 64,
    merge_warps: int = 4,
    o_halves: bool = False,
    prefetch: bool = False,
    async_gathers: bool = False,
    async_buffers: int = 2,
    local: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    item_rows: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selection branch forward, block-outer: ``(o [N, HQ, D], lse [N, HQ] fp32)``.

    Tokens run in ranges whose partial outputs hold at most ``partial_elems`` elements; ``item`` is the
    number of CSR entries per work item; ``maxnreg`` caps the registers of the block kernel; the merge
    runs ``merge_block_m`` rows (tokens × G heads) per program on ``merge_warps`` warps. ``o_halves``: each
    step's partial output is computed and stored as two D/2-wide halves (D tiles of at least 32). ``prefetch``:
    the query rows of the next step load into registers while a step computes (one pipeline stage, so
    ``num_stages`` is ignored); Triton's own pipelining of this indirect gather issues it only after the step.
    It applies to D tiles up to 128 (measured at 64 and 128); a 256-wide tile would hold 64 more registers per thread.
    ``async_gathers``: the block kernel of :mod:`nsa_kernels.selection_async` where it applies (Hopper, ``D`` of 64 or
    128, 64-key blocks, ``block_m`` a multiple of 64), which copies the rows of step i + ``async_buffers`` - 1 while
    step i computes. ``local = (o_loc, lse_loc, FL)``: the partial of every row over its FL most recent blocks,
    computed elsewhere (:func:`~nsa_kernels.attention.branch_fwd` ``local=``), which every row must have selected (as
    the computed top-n with ``forced_local`` FL does); those selections are skipped here. ``item_rows``: CSR rows per
    program of the work-item kernels (:func:`~nsa_kernels.csr.work_items` ``block_rows``).
    """
    if async_buffers < 1:
        raise ValueError(f"async_buffers must be at least 1 (Gluon query-row buffers), got {async_buffers}")
    N, HQ, D = q.shape
    HKV = k.shape[1]
    G = HQ // HKV
    BM, BD, SB = _sizes(G, D, select_block, block_m)
    blk_idx = sel["block_indices"]
    S = blk_idx.shape[-1]
    blk_seq, blk_start = plan["slc_blocks"]
    o = torch.empty_like(q)
    lse = torch.empty(N, HQ, device=q.device, dtype=torch.float32)
    prefetch = prefetch and BD <= 128
    BN = max(triton.next_power_of_2(SB), 16)
    async_kernel = _async_kernel("slc_fwd_kernel_block_async", async_gathers, q, D, BD, BN, BM)
    common = dict(HQ=HQ, HKV=HKV, G=G, D=D, BD=BD, BM=BM, S=S, num_warps=num_warps)
    merge = {**common, "BM": _sizes(G, D, select_block, merge_block_m)[0], "num_warps": merge_warps}
    step = max(1, partial_elems // (HQ * S * D))
    o_part = torch.empty(min(N, step) * HKV * S, G, D, device=q.device, dtype=q.dtype)
    lse_part = torch.empty(min(N, step) * HKV * S, G, device=q.device, dtype=torch.float32)
    o_loc, lse_loc, FL = (o, lse, 0) if local is None else local
    first_token = t_rel = None
    if FL:
        first_token = cached(plan.get("memo"), ("local_end", SB, FL), lambda: _local_end(plan, SB, FL, HKV))
        t_rel = cached(plan.get("memo"), ("positions",), lambda: positions(plan["cu_seqlens"], N))[1]
    ranges = _token_ranges(sel, N, HQ * S * D, partial_elems, item, first_token=first_token, item_rows=item_rows)
    for t_lo, t_hi, [(_, (item_row, item_lo, item_hi, _, _))] in ranges:
        if item_row.numel() and async_kernel:
            async_kernel[(item_row.numel(),)](
                q, k, v, o_part, lse_part, plan["cu_seqlens"], blk_seq, blk_start, sel["entries"], item_row, item_lo,
                item_hi, blk_seq.numel(), t_lo * HKV * S, scale * LOG2E, HQ=HQ, HKV=HKV, G=G, D=D, BM=BM, BN=BN, SB=SB,
                S=S, BUFFERS=async_buffers, num_warps=num_warps,
            )  # fmt: skip
        elif item_row.numel():
            slc_fwd_kernel_block[(item_row.numel(),)](
                q, k, v, o_part, lse_part, plan["cu_seqlens"], blk_seq, blk_start, sel["entries"],
                item_row, item_lo, item_hi, blk_seq.numel(), t_lo * HKV * S, scale * LOG2E,
                BN=BN, SB=SB, O_HALVES=o_halves and BD >= 32,
                PREFETCH=prefetch, num_stages=1 if prefetch else num_stages, **launch_options(maxnreg), **common,
            )  # fmt: skip
        slc_fwd_kernel_merge[(triton.cdiv(t_hi - t_lo, merge["BM"] // G), HKV)](
            o_part, lse_part, blk_idx, o, lse, o_loc, lse_loc, lse if t_rel is None else t_rel, t_lo, t_hi,
            SB=SB, FL=FL, **merge,
        )  # fmt: skip
    return o, lse


def selection_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    gates: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    dq: torch.Tensor | None,
    *,
    plan: dict,
    sel: dict,
    scale: float,
    select_block: int,
    accumulate_dq: bool,
    dkv: tuple[torch.Tensor, torch.Tensor] | None = None,
    dq_out: torch.Tensor | None = None,
    block_m: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    item: int = 1152,
    item_waves: int = 0,
    partial_elems: int = 2**30,
    dq_partials_fp32: bool = True,
    gated: bool = False,
    maxnreg: int | None = None,
    merge_block_m: int = 64,
    merge_warps: int = 4,
    dq_halves: bool = False,
    dkv_partial_elems: int = 0,
    async_gathers: bool = False,
    warp_specialized: bool = False,
    dq_reduce: Callable[..., None] | None = None,
    reduce_tiles: int = 1,
    range_heads: int = 0,
    local: int = 0,
    item_rows: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selection branch backward, block-outer: adds dQ into ``dq``; returns fp32 ``[1, N, HKV, D]`` dK/dV.

    With ``dq_out`` (the last dQ writer: the input dtype) the sum goes there instead of back into ``dq``.

    Token ranges as in :func:`selection_fwd`; their dK/dV partials are reduced into the result in order.
    ``dq_partials_fp32=False`` stores the per-selection dQ partials in the input dtype (half the bytes;
    the reduction stays fp32). ``gated`` as in :func:`~nsa_kernels.attention.branch_dq`; ``maxnreg`` and
    ``merge_*`` as in :func:`selection_fwd` (the merge is the dQ reduction). ``dq_halves``: each step's dQ
    partial is computed and stored as two D/2-wide halves (fewer live registers; D tiles of at least 32).
    ``dkv_partial_elems``: the dK/dV partials of consecutive token ranges are kept until they hold that many
    elements, then reduced in one pass (each pass reads and rewrites the fp32 dK/dV); 0 reduces every range.
    ``async_gathers``: the block kernel of :mod:`nsa_kernels.selection_async` where it applies (Hopper,
    ``D`` of 64 or 128, 64-key blocks, 16-bit partials), which copies the next step's rows while a step computes.
    ``item_waves``: longer work items (up to 4 · ``item``) where a launch still fills that many waves of items
    (0 = always ``item``): each item reloads its K/V block and writes a dK/dV partial, but too few items leave SMs idle.
    ``warp_specialized``: with ``async_gathers`` and 128-row steps, the kernel of :mod:`nsa_kernels.selection_ws`
    instead, whose copies come from a producer warpgroup (8 consumer warps whatever ``num_warps`` says).

    The dQ partials of a launch lie step by step: each step of ``BM // G`` CSR entries owns ``BM`` rows (token slot ·
    G + head), its item's first step from :func:`~nsa_kernels.csr.work_items`, so a step's tile is one contiguous
    store; ``part_row`` maps each selection of the range to its first row (-1 for an empty slot) for the reduction.

    ``range_heads``: the token ranges hold the partials of as few as ``gcd(HKV, range_heads)`` KV heads (0 = all; more
    where that needs no more ranges, :func:`_range_heads`), one launch per head group, so the same ``partial_elems``
    spans more tokens and each CSR row splits into fewer work items (each reloads its K/V block and writes a dK/dV
    partial). ``dq_reduce((dq_part, part_row), t_lo, t_hi, tile_lo, tile_hi, heads)`` sums a range's partials instead
    of the reduction kernel, over the query tiles ``[tile_lo, tile_hi)`` (cut at multiples of ``reduce_tiles`` tokens)
    and the KV heads ``heads = (h0, count)``; ``dq`` is then unused (may be None).

    ``local``: the selections of each token's ``local`` most recent blocks, which every token must have selected, are
    left out (their partials stay empty): the window backward adds their gradients
    (:func:`~nsa_kernels.attention.branch_dkv` / :func:`~nsa_kernels.attention.branch_dq` ``local=``). ``item_rows`` as
    in :func:`selection_fwd`.
    """
    N, HQ, D = q.shape
    HKV = k.shape[1]
    G = HQ // HKV
    BM, BD, SB = _sizes(G, D, select_block, block_m)
    BN = max(triton.next_power_of_2(SB), 16)
    blk_idx = sel["block_indices"]
    S = blk_idx.shape[-1]
    blk_seq, blk_start = plan["slc_blocks"]
    HR = _range_heads(HKV, range_heads, N, G * S * D, partial_elems)
    step = max(1, partial_elems // (HR * G * S * D))
    cuts, tile_of = [*range(0, N, step), N], None
    if dq_reduce is not None:
        cuts, tiles = _tile_cuts(plan["lens"], N, step, reduce_tiles)
        tile_of = dict(zip(cuts, tiles, strict=True))
    longest = max((b - a for a, b in itertools.pairwise(cuts)), default=0)
    TT = BM // G
    entries = longest * HR * S
    item = _item_size(item, entries, q.device, item_waves)
    steps = entries // TT + _item_bound(entries, item, HR * blk_seq.numel()) + 1
    dq_part = torch.empty(steps * BM, D, device=q.device, dtype=torch.float32 if dq_partials_fp32 else q.dtype)
    part_row = torch.empty(entries, device=q.device, dtype=torch.int32)
    common = dict(HKV=HKV, D=D, BD=BD, num_warps=num_warps)
    C = -1 if gated else 1
    warp_specialized = warp_specialized and BM == 128
    name = "slc_bwd_kernel_block_ws" if warp_specialized else "slc_bwd_kernel_block_async"
    async_kernel = _async_kernel(name, async_gathers and not dq_partials_fp32, q, D, BD, BN, BM)
    if async_kernel:
        from nsa_kernels.selection_async import partial_descriptor
        from nsa_kernels.selection_ws import LAUNCH

        dq_desc = partial_descriptor(dq_part, BM)
        async_launch = LAUNCH if warp_specialized else {"num_warps": num_warps}
    accumulate = dkv is not None
    if dkv is None:
        dkv = tuple(torch.empty(1, N, HKV, D, device=q.device, dtype=torch.float32) for _ in range(2))
    first_token = None
    if local:
        first_token = cached(plan.get("memo"), ("local_end", SB, local), lambda: _local_end(plan, SB, local, HKV))
    ranges = _token_ranges(sel, N, HR * G * S * D, partial_elems, item, cuts, HR, first_token, TT, item_rows)
    merge_bm = _sizes(G, D, select_block, merge_block_m)[0]
    for group, items in _dkv_groups(ranges, BN * D * 2, dkv_partial_elems):
        dk_part = torch.empty(items, BN, D, device=q.device, dtype=torch.float32)
        dv_part = torch.empty(items, BN, D, device=q.device, dtype=torch.float32)
        item_base, firsts = 0, []
        for t_lo, t_hi, units in group:
            for h0, (item_row, item_lo, item_hi, item_step, row_first) in units:
                NW = item_row.numel()
                part_row.fill_(-1)
                if NW and async_kernel:
                    async_kernel[(NW,)](
                        q, k, v, do, gates, lse, delta, dq_desc, part_row, dk_part, dv_part, plan["cu_seqlens"],
                        blk_seq, blk_start, sel["entries"], item_row, item_lo, item_hi, item_step, blk_seq.numel(),
                        t_lo * HKV * S, h0, item_base, scale, scale * LOG2E, HQ=HQ, HKV=HKV, G=G, D=D, BM=BM, BN=BN,
                        SB=SB, S=S, C=C, HR=HR, **async_launch,
                    )  # fmt: skip
                elif NW:
                    slc_bwd_kernel_block[(NW,)](
                        q, k, v, do, gates, lse, delta, dq_part, part_row, dk_part, dv_part, plan["cu_seqlens"],
                        blk_seq, blk_start, sel["entries"], item_row, item_lo, item_hi, item_step, blk_seq.numel(),
                        t_lo * HKV * S, h0, item_base, scale, scale * LOG2E, HQ=HQ, G=G, BM=BM, BN=BN, SB=SB, S=S,
                        C=C, DQ_HALVES=dq_halves and BD >= 32, HR=HR, num_stages=num_stages,
                        **launch_options(maxnreg), **common,
                    )  # fmt: skip
                firsts.append(row_first + item_base)
                item_base += NW
                if dq_reduce is not None:
                    dq_reduce((dq_part, part_row), t_lo, t_hi, tile_of[t_lo], tile_of[t_hi], (h0, HR))
                    continue
                slc_bwd_kernel_reduce_dq[(triton.cdiv(t_hi - t_lo, merge_bm // G), HR)](
                    dq_part, part_row, dq, dq if dq_out is None else dq_out, t_lo, t_hi, h0, HQ=HQ, G=G, D=D, BD=BD,
                    BM=merge_bm, S=S, ACCUMULATE=accumulate_dq, HR=HR, num_warps=merge_warps,
                )  # fmt: skip
        if blk_seq.numel():
            slc_bwd_kernel_reduce_dkv[(blk_seq.numel(), HKV)](
                dk_part, dv_part, torch.stack(firsts), len(group), dkv[0], dkv[1], plan["cu_seqlens"], blk_seq,
                blk_start, blk_seq.numel(), BN=BN, SB=SB, ACCUMULATE=accumulate, HR=HR, **common,
            )  # fmt: skip
        accumulate = True
    return dkv

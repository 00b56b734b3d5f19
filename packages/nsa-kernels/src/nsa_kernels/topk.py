"""Block importance and exact top-n selection with forced blocks.

The importance kernel recomputes ``p = exp(q·k_cmp·scale - lse)`` over the visible compressed keys
with the compression LSE already known, sums it over the G query heads of each token with one small
MMA, and writes one row of compressed-level scores per (token, KV head) for a chunk of tokens. The
selection is exact: scores are non-negative floats, so their bit patterns order like the values; a
bitwise binary search over the pattern bits, high to low, finds in registers a prefix with exactly n
patterns at or above it, or else the n-th largest (counting passes, no sort); ties at that value go to the
more recent blocks, and forced blocks get the bits of +inf. Once a few candidates are left, they are compacted
in order into the row's own scratch columns and the last passes run over them alone.
Chunking over tokens bounds the scratch memory to ``chunk_elems`` scores (``TUNING["topk"]``), whatever T is.

Shape legend:
    N packed tokens, HQ query heads, HKV KV heads, G = HQ / HKV, D head dim, NC compressed keys,
    NCP compressed keys of the longest sequence, NS selection blocks of the longest sequence,
    S selected blocks per query (``n``), TT tokens per tile (TTP its power of two), BM = rows per tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nsa_kernels.attention import _load_keys, _load_rows, _token_tile, async_applies
from nsa_kernels.index import cached, longest_prefix, positions, tile_first_token, tile_table

CHUNK_ELEMS = 2**27
"""Default largest number of (token, KV head, block) scores held at once (``select_fwd(chunk_elems=...)``)."""


@triton.jit
def topk_fwd_kernel_scores(
    q,  # [N, HQ, D]
    k_cmp,  # [NC, HKV, D]
    lse,  # [N, HQ] compression LSE, natural log
    scores,  # [NTOK, HKV, NCP] fp32, zero-filled; row = token - t_base
    cu_seqlens,
    cu_keys,
    tile_seq,
    tile_start,
    tile_lo,
    t_base,
    scale2,
    NCP,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    TTP: tl.constexpr,
    CL: tl.constexpr,
    CS: tl.constexpr,
    GP: tl.constexpr,
):
    # GP = G: rows token·G + head, head sum by an fp32 MMA; GP = next power of two of G: rows token·GP + head
    # (GP - G rows masked) and the head sum is a reshape + sum
    pid = tile_lo + tl.program_id(0)
    h = tl.program_id(1)
    TT: tl.constexpr = BM // GP
    t0, bos, eos, kbos, t, head, row_ok = _token_tile(tile_seq, tile_start, cu_seqlens, cu_keys, pid, h, BM, G, GP)
    tok = tl.arange(0, BM) // GP
    t_rel = t - bos
    t_last = tl.minimum(t0 + TT, eos) - 1 - bos
    d = tl.arange(0, BD)
    cols = tl.arange(0, BN)
    qt = _load_rows(q, t, head, d, row_ok, HQ, D)
    lse_row = tl.load(lse + t.to(tl.int64) * HQ + head, mask=row_ok, other=float("-inf"))
    lse2 = tl.where(lse_row == float("-inf"), float("inf"), lse_row * 1.4426950408889634)
    tt = tl.arange(0, TTP)
    head_sum = ((tt[:, None] == tok[None, :]) & row_ok[None, :]).to(tl.float32)  # [TTP, BM]
    t_out = t0 + tt
    out_ok = (tt < TT) & (t_out < eos)
    out_rows = (t_out - t_base).to(tl.int64) * (HKV * NCP) + h * NCP
    nk = tl.maximum((t_last + 1 - CL + CS) // CS, 0)
    for start in range(0, nk, BN):
        i = start + cols
        ok = i < nk
        kt = _load_keys(k_cmp, kbos + i, d, ok, h, HKV, D)
        s = tl.dot(qt, tl.trans(kt)) * scale2
        mask = row_ok[:, None] & ok[None, :] & (i[None, :] * CS + CL - 1 <= t_rel[:, None])
        p = tl.where(mask, tl.exp2(s - lse2[:, None]), 0.0)
        if GP == G:  # noqa: SIM108
            token_p = tl.dot(head_sum, p, input_precision="ieee")  # [TTP, BN]
        else:
            token_p = tl.sum(tl.reshape(p, (TTP, GP, BN)), 1)
        tl.store(scores + out_rows[:, None] + i[None, :], token_p, mask=out_ok[:, None] & ok[None, :])


@triton.jit
def _chosen_with_ties(bits, v, S: tl.constexpr):
    # the patterns above the n-th largest v of each row, and of those equal to v the most recent up to n in all
    greater = bits > v[:, None]
    tie = (bits == v[:, None]).to(tl.int32)
    room = S - tl.sum(greater.to(tl.int32), 1)
    from_top = tl.sum(tie, 1)[:, None] - tl.cumsum(tie, 1) + tie
    return greater | ((tie > 0) & (from_top <= room[:, None]))


@triton.jit
def _search_start(bits, forced, S: tl.constexpr):
    # (v, at_or_above, pass) to start the bit search from. A row with at most n visible blocks is decided at once.
    # When fewer than n blocks are forced (+inf) and at least n patterns lie at or above the power of two below the
    # largest unforced score, the n-th largest has that power's sign and exponent bits: the search can start at
    # the first mantissa bit (pass 8) from that prefix. Otherwise, or if any row of the program cannot, it starts
    # at bit 30 from 0
    total = tl.sum((bits >= 0).to(tl.int32), 1)
    decided = total <= S
    top = tl.max(tl.where(forced, -1, bits), 1)
    octave = tl.where(top >= 0, top & 0x7F800000, 0)
    in_octave = tl.sum((bits >= octave[:, None]).to(tl.int32), 1)
    ok = decided | ((top >= 0) & (in_octave >= S) & (tl.sum(forced.to(tl.int32), 1) < S))
    start = tl.min(ok.to(tl.int32), 0)
    bracket = (start > 0) & ~decided
    return tl.where(bracket, octave, 0), tl.where(bracket, in_octave, total), start * 8


@triton.jit
def _narrow(bits, v, at_or_above, b, S: tl.constexpr, STOP: tl.constexpr):
    # bitwise search passes, from bit 30 - b down, while a row of the program has more than STOP patterns at or
    # above its prefix v; a bit joins the prefix where at least n patterns stay at or above it
    while (b < 31) & (tl.max(at_or_above, 0) > STOP):
        cand = v | (1 << (30 - b))
        above = tl.sum((bits >= cand[:, None]).to(tl.int32), 1)
        v = tl.where(above >= S, cand, v)
        at_or_above = tl.where(above >= S, above, at_or_above)
        b += 1
    return v, at_or_above, b


@triton.jit
def _finish(out, rows, row_ok, bits, blocks, v, at_or_above, b, S: tl.constexpr, SP: tl.constexpr):
    # the search to its end, then the n chosen block ids of each row, ascending (blocks ascend along the row), and
    # -1 up to n
    v, at_or_above, b = _narrow(bits, v, at_or_above, b, S, S)
    if tl.max(at_or_above, 0) <= S:  # noqa: SIM108 (a runtime branch in Triton)
        chosen = bits >= v[:, None]
    else:
        chosen = _chosen_with_ties(bits, v, S)
    slot = tl.cumsum(chosen.to(tl.int32), 1) - 1
    tl.store(out + rows[:, None] * S + slot, blocks, mask=chosen)
    count = tl.sum(chosen.to(tl.int32), 1)
    p = tl.arange(0, SP)
    pad = (p[None, :] >= count[:, None]) & (p[None, :] < S) & row_ok[:, None]
    tl.store(out + rows[:, None] * S + p[None, :], tl.full([rows.shape[0], SP], -1, tl.int32), mask=pad)


@triton.jit
def topk_fwd_kernel_select(
    scores,  # [M, HKV, NCOL] fp32 importance; columns >= the token's complete blocks unread when CL > 0
    t_rel,  # [M] position of each token inside its sequence
    out,  # [M, HKV, S] int32
    M,
    NS,
    NCOL,
    HKV: tl.constexpr,
    S: tl.constexpr,
    SP: tl.constexpr,
    NSP: tl.constexpr,
    R: tl.constexpr,
    SB: tl.constexpr,
    FI: tl.constexpr,
    FL: tl.constexpr,
    CL: tl.constexpr,
    CS: tl.constexpr,
    C: tl.constexpr,
):
    # C > 0: once every row has at most C patterns at or above its prefix, those patterns and their block ids are
    # compacted (in order) into the row's first 2C score columns and the search ends on C-wide rows
    rows = tl.program_id(0).to(tl.int64) * R + tl.arange(0, R)
    row_ok = rows < M * HKV
    t = tl.load(t_rel + rows // HKV, mask=row_ok, other=0)
    j = tl.arange(0, NSP)
    current = t // SB
    visible = (j[None, :] <= current[:, None]) & (j[None, :] < NS) & row_ok[:, None]
    written = j[None, :] < NCOL
    if CL > 0:
        written &= j[None, :] < tl.maximum((t + 1 - CL + CS) // CS, 0)[:, None]
    score = tl.load(scores + rows[:, None] * NCOL + j[None, :], mask=visible & written, other=0.0)
    forced = (j[None, :] < FI) | (j[None, :] > current[:, None] - FL)
    bits = tl.where(forced, 0x7F800000, score.to(tl.int32, bitcast=True))
    bits = tl.where(visible, bits, -1)
    blocks = j[None, :] + tl.zeros([R, NSP], tl.int32)
    v, at_or_above, b = _search_start(bits, forced & visible, S)
    if C > 0:
        v, at_or_above, b = _narrow(bits, v, at_or_above, b, S, C)
        if tl.max(at_or_above, 0) <= C:
            keep = bits >= v[:, None]
            at = tl.cumsum(keep.to(tl.int32), 1) - 1
            row_start = scores + rows[:, None] * NCOL
            tl.debug_barrier()
            tl.store(row_start + at, bits.to(tl.float32, bitcast=True), mask=keep)
            tl.store(row_start + C + at, blocks.to(tl.float32), mask=keep)
            tl.debug_barrier()
            c = tl.arange(0, C)[None, :]
            held = c < at_or_above[:, None]
            kept = tl.load(row_start + c, mask=held, other=0.0).to(tl.int32, bitcast=True)
            kept_blocks = tl.load(row_start + C + c, mask=held, other=0.0).to(tl.int32)
            _finish(out, rows, row_ok, tl.where(held, kept, -1), kept_blocks, v, at_or_above, b, S, SP)
        else:
            _finish(out, rows, row_ok, bits, blocks, v, at_or_above, b, S, SP)
    else:
        _finish(out, rows, row_ok, bits, blocks, v, at_or_above, b, S, SP)


def overlap_weights(nc: int, ns: int, *, compress_block: int, compress_stride: int, select_block: int, device):
    """``W [NC, NS]``: overlap of compressed block i with selection block j, in stride units (NSA Eq. 9)."""
    i = torch.arange(nc, device=device, dtype=torch.float64)[:, None] * compress_stride
    j = torch.arange(ns, device=device, dtype=torch.float64)[None, :] * select_block
    overlap = torch.minimum(i + compress_block, j + select_block) - torch.maximum(i, j)
    return (overlap.clamp(min=0) / compress_stride).float()


def select_topk(
    scores: torch.Tensor,
    t_rel: torch.Tensor,
    *,
    num_selected: int,
    select_block: int,
    forced_initial: int,
    forced_local: int,
    num_blocks: int | None = None,
    compress: tuple[int, int] | None = None,
    rows_per_program: int = 1,
    num_warps: int = 4,
    compact: int = 0,
) -> torch.Tensor:
    """Exact top-n of ``scores [M, HKV, NCOL]`` for tokens at positions ``t_rel [M]``: int32 ``[M, HKV, n]``.

    Scores are non-negative, so their fp32 bit patterns order like the values. A program holds
    ``rows_per_program`` rows in registers, finds the n-th largest pattern ``v`` by a bitwise binary
    search (at most 31 counting passes, no sort; it stops once exactly n patterns lie at or above the prefix
    found so far; it starts at the first mantissa bit when the n-th largest must share the exponent of the
    largest unforced score), keeps every pattern above ``v`` and, among those equal to ``v``,
    the most recent blocks up to n (the reference's tie rule), and writes their ids in ascending order
    through a prefix sum. ``num_blocks`` (NS, default NCOL) bounds the blocks; with ``compress = (CL, CS)``
    the columns past each token's complete compressed blocks are read as 0, so they may hold garbage.

    ``compact`` (a power of two, 0 = off): once at most ``compact`` patterns of every row of a program lie at or
    above its prefix, the search goes on over those patterns alone, compacted in order into the row's first
    ``2 · compact`` columns of ``scores``, which it overwrites. It applies where ``compact`` is at least n's power
    of two and ``2 · compact <= NCOL``.
    """
    M, HKV, NCOL = scores.shape
    NS = NCOL if num_blocks is None else num_blocks
    out = torch.empty(M, HKV, num_selected, device=scores.device, dtype=torch.int32)
    R = rows_per_program
    SP = triton.next_power_of_2(num_selected)
    C = compact if compact >= SP and 2 * compact <= NCOL else 0
    if M * HKV:
        topk_fwd_kernel_select[(triton.cdiv(M * HKV, R),)](
            scores.contiguous(), t_rel.contiguous(), out, M, NS, NCOL,
            HKV=HKV, S=num_selected, SP=SP, NSP=max(triton.next_power_of_2(NS), 2),
            R=R, SB=select_block, FI=forced_initial, FL=forced_local,
            CL=0 if compress is None else compress[0], CS=1 if compress is None else compress[1], C=C,
            num_warps=num_warps,
        )  # fmt: skip
    return out


def _scores_kernel(wanted: bool, q: torch.Tensor, G: int, block_m: int):
    """The Gluon scores kernel of :mod:`nsa_kernels.topk_async` if ``wanted`` and it covers the call, else None."""
    if not (wanted and triton.next_power_of_2(G) <= 16 and async_applies(q, block_m)):
        return None
    from nsa_kernels import topk_async

    return topk_async.topk_fwd_kernel_scores_async


def select_fwd(
    q: torch.Tensor,
    k_cmp: torch.Tensor,
    lse_cmp: torch.Tensor,
    *,
    plan: dict,
    scale: float,
    geometry: dict,
    return_scores: bool = False,
    block_m: int = 64,
    num_warps: int = 4,
    num_stages: int = 3,
    pad_heads: bool = True,
    select_rows: int = 1,
    select_warps: int = 4,
    select_compact: int = 128,
    block_n: int = 64,
    chunk_elems: int = CHUNK_ELEMS,
    asynchronous: bool = True,
    async_block_m: int = 128,
    async_num_warps: int = 4,
    async_block_n: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Top-n blocks ``[N, HKV, n]`` (int32, ascending, -1 padded) and optionally the scores ``[N, HKV, NS]``.

    ``pad_heads``: MMA rows are tokens × G padded to a power of two, and the head sum is a register
    reduction; otherwise tokens × G rows and an fp32 MMA against a 0/1 matrix. ``select_rows`` and
    ``select_warps`` launch :func:`select_topk` (``select_warps=0``: one warp per 512 blocks a chunk's tokens
    can see, 1 to 4), which ends its search on rows compacted to ``select_compact`` patterns; ``block_n``
    compressed keys per step of the importance kernel, ``num_warps`` and ``num_stages`` its launch.
    ``asynchronous``: with padded heads, the Gluon kernel of :mod:`nsa_kernels.topk_async` computes the scores
    where it applies (Hopper), with ``async_block_m`` rows on ``async_num_warps`` warps and ``async_block_n`` keys
    per step. Tokens run in chunks whose scores hold at most ``chunk_elems`` elements (a scores launch and a
    selection launch per chunk).
    """
    N, HQ, D = q.shape
    HKV = k_cmp.shape[1]
    G = HQ // HKV
    GP = triton.next_power_of_2(G) if pad_heads else G
    kernel = _scores_kernel(asynchronous and pad_heads, q, G, async_block_m)
    if kernel is not None:
        from nsa_kernels.attention_async import row_descriptor

        block_m, num_warps, block_n = async_block_m, async_num_warps, async_block_n
        key_rows = row_descriptor(k_cmp, block_n)
    BM = max(block_m, triton.next_power_of_2(G), 16)
    TT = BM // GP
    cu, cu_keys = plan["cu_seqlens"], plan["cu_keys_cmp"]
    lens = plan["lens"]
    tile_tt = TT if pad_heads else plan["tokens_per_tile"]
    memo = plan.get("memo")
    tile_seq, tile_start = cached(memo, ("tiles", TT), lambda: tile_table(cu, TT, lens)) if pad_heads else plan["tiles"]
    n_cmp = max(plan["cmp_lens"], default=0)
    n_sel = plan["max_blocks"]
    SB, CL, CS = geometry["select_block"], geometry["compress_block"], geometry["compress_stride"]
    identity = CL == CS == SB
    ncp = max(n_cmp, 1)
    weights = (
        None
        if identity
        else overlap_weights(ncp, n_sel, compress_block=CL, compress_stride=CS, select_block=SB, device=q.device)
    )
    _, t_rel = cached(memo, ("positions",), lambda: positions(cu, N))
    out = torch.empty(N, HKV, geometry["num_selected"], device=q.device, dtype=torch.int32)
    all_scores = torch.zeros(N, HKV, n_sel, device=q.device, dtype=torch.float32) if return_scores else None
    tiles_per_chunk = max(1, chunk_elems // (TT * HKV * max(ncp, n_sel) * 2))
    select = dict(
        num_selected=geometry["num_selected"], select_block=SB,
        forced_initial=geometry["forced_initial"], forced_local=geometry["forced_local"],
        rows_per_program=select_rows, compact=select_compact,
    )  # fmt: skip
    for lo in range(0, tile_seq.numel(), tiles_per_chunk):
        hi = min(lo + tiles_per_chunk, tile_seq.numel())
        t_lo = tile_first_token(lens, tile_tt, lo)
        t_hi = N if hi == tile_seq.numel() else tile_first_token(lens, tile_tt, hi)
        alloc = torch.empty if identity and not return_scores else torch.zeros
        buf = alloc(t_hi - t_lo, HKV, ncp, device=q.device, dtype=torch.float32)
        args = (lse_cmp, buf, cu, cu_keys, tile_seq, tile_start, lo, t_lo, scale * 1.4426950408889634, ncp)
        if kernel is not None:
            kernel[(hi - lo, HKV)](q, key_rows, *args, HQ=HQ, HKV=HKV, G=G, D=D, BM=BM, BN=block_n, CL=CL, CS=CS, GP=GP,
                                   num_warps=num_warps)  # fmt: skip
        else:
            topk_fwd_kernel_scores[(hi - lo, HKV)](
                q, k_cmp, *args, HQ=HQ, HKV=HKV, G=G, D=D, BD=max(triton.next_power_of_2(D), 16), BM=BM, BN=block_n,
                TTP=TT if pad_heads else max(triton.next_power_of_2(TT), 16), CL=CL, CS=CS, GP=GP,
                num_warps=num_warps, num_stages=num_stages,
            )  # fmt: skip
        visible = min(n_sel, triton.cdiv(longest_prefix(lens, t_lo, t_hi), SB))
        select["num_warps"] = select_warps or max(1, min(4, triton.next_power_of_2(visible) // 512))
        if identity:
            if return_scores:
                width = min(ncp, n_sel)
                all_scores[t_lo:t_hi, :, :width] = buf[..., :width]
            out[t_lo:t_hi] = select_topk(buf, t_rel[t_lo:t_hi], num_blocks=visible, compress=(CL, CS), **select)
        else:
            sel = buf @ weights
            if return_scores:
                all_scores[t_lo:t_hi] = sel
            out[t_lo:t_hi] = select_topk(sel, t_rel[t_lo:t_hi], num_blocks=visible, **select)
    return out, all_scores

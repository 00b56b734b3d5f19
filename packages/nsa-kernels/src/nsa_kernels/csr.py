"""The block-outer selection's CSR on the GPU: its row keys, its entries, and the work items of a token range.

Every selection ``(t·HKV + h)·S + slot`` of a block ``b`` is an entry of CSR row ``h·NB + b`` (global block ids).
:func:`csr_keys` writes each selection's row (one kernel, in the narrowest integer type that holds the rows, since a
radix sort's passes follow its width); after the stable sort :func:`csr_entries` writes the entries and their
ascending row keys ``row · big + token``.

A token range ``[t_lo, t_hi)`` owns, in each row, the entries of the tokens in that range: two binary searches on the
row keys bound them. Each row's entries are cut into work items of at most ``chunk`` entries, the items of a row
consecutive and the rows in order; the tables have a fixed length ``max_items`` (an upper bound on the count, so no
device sync) and the items past the real count are empty. :func:`work_items` builds the items of several units (a
token range over a span of rows each) in two launches: one program per block of rows of a unit bounds its rows and
counts their items and steps, then each block writes its items after those of the unit's blocks before it.
:func:`naive_work_items` is the readable PyTorch version of one unit's tables.

Shape legend:
    N tokens, HKV KV heads, S selected blocks per token, NB selection blocks, E = N·HKV·S entries, U call units, R rows
    of a unit (from its ``row0``), NW = ``max_items`` work items per unit, BR rows per program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def csr_key_kernel(
    block_indices,  # [N, HKV, S] int32, -1 empty
    token_offset,  # [N] int64 global id of block 0 of each token's sequence
    key,  # [N·HKV·S] out: CSR row h·NB + global block, or HKV·NB for an empty slot (the key's integer type)
    total,
    NB,
    HKV: tl.constexpr,
    S: tl.constexpr,
    BLOCK: tl.constexpr,
):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = e < total
    idx = tl.load(block_indices + e, mask=ok, other=-1).to(tl.int64)
    t = e // (HKV * S)
    h = (e // S) % HKV
    row = h * NB + tl.load(token_offset + t, mask=ok, other=0) + idx
    tl.store(key + e, tl.where(idx >= 0, row, HKV * NB).to(key.dtype.element_ty), mask=ok)


@triton.jit
def csr_entry_kernel(
    sorted_key,  # [E] CSR rows, ascending (the key's integer type)
    order,  # [E] int64 flat selection (t·HKV + h)·S + slot of each sorted row
    entries,  # [E] int32 out: order
    row_key,  # [E] int64 out: row · big + token
    total,
    big,
    HKV: tl.constexpr,
    S: tl.constexpr,
    BLOCK: tl.constexpr,
):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = e < total
    at = tl.load(order + e, mask=ok, other=0)
    tl.store(entries + e, at.to(tl.int32), mask=ok)
    tl.store(row_key + e, tl.load(sorted_key + e, mask=ok, other=0).to(tl.int64) * big + at // (HKV * S), mask=ok)


@triton.jit
def _lower_bounds(key, lo_target, hi_target, E, SEARCH_STEPS: tl.constexpr):
    # per lane, the first indices i in [0, E] with key[i] >= lo_target and with key[i] >= hi_target: two binary
    # searches in one loop of SEARCH_STEPS > log2(E + 1) steps. All lanes search the whole array, so the first steps
    # read the same few keys (cached) where row-bounded searches would each miss
    a_lo = tl.zeros_like(lo_target)
    a_hi = tl.zeros_like(hi_target)
    b_lo = a_lo + E
    b_hi = a_hi + E
    for _ in tl.static_range(SEARCH_STEPS):
        active = a_lo < b_lo
        mid = (a_lo + b_lo) // 2
        less = active & (tl.load(key + mid, mask=active, other=0) < lo_target)
        a_lo = tl.where(less, mid + 1, a_lo)
        b_lo = tl.where(active & ~less, mid, b_lo)
        active = a_hi < b_hi
        mid = (a_hi + b_hi) // 2
        less = active & (tl.load(key + mid, mask=active, other=0) < hi_target)
        a_hi = tl.where(less, mid + 1, a_hi)
        b_hi = tl.where(active & ~less, mid, b_hi)
    return a_lo, a_hi


@triton.jit
def _row_steps(length, chunk, TT):
    # steps of TT entries over a row's items of chunk entries (each item's last step may be short)
    return (length // chunk) * ((chunk + TT - 1) // TT) + (length % chunk + TT - 1) // TT


@triton.jit
def items_count_kernel(
    key,  # [E] int64 row keys r · big + token, ascending
    row_base,  # [rows] int64 r · big
    first_token,  # [rows] int64 first token kept per row (HAS_FIRST)
    units,  # [U, 3] int64: first row, t_lo, t_hi of each call unit
    bounds,  # [U, 3, R] int32 out: entry lo, entry hi, items per row
    block_sums,  # [U, 2, cdiv(R, BR)] int32 out: items and steps per block of rows
    E,
    R,
    chunk,
    TT,
    BR: tl.constexpr,
    HAS_FIRST: tl.constexpr,
    SEARCH_STEPS: tl.constexpr,
):
    pid = tl.program_id(0)
    u = tl.program_id(1)
    nblk = tl.num_programs(0)
    row0 = tl.load(units + u * 3)
    t_lo = tl.load(units + u * 3 + 1)
    t_hi = tl.load(units + u * 3 + 2)
    bounds += u * 3 * R
    block_sums += u * 2 * nblk
    r = pid * BR + tl.arange(0, BR)
    ok = r < R
    base = tl.load(row_base + row0 + r, mask=ok, other=0)
    low = tl.zeros_like(base) + t_lo
    if HAS_FIRST:
        low = tl.minimum(tl.maximum(tl.load(first_token + row0 + r, mask=ok, other=0), t_lo), t_hi)
    lo, hi = _lower_bounds(key, base + low, base + t_hi, E, SEARCH_STEPS)
    lo = tl.minimum(lo, hi)
    length = tl.where(ok, hi - lo, 0)
    n = (length + chunk - 1) // chunk
    steps = _row_steps(length, chunk, TT)
    tl.store(bounds + r, lo.to(tl.int32), mask=ok)
    tl.store(bounds + R + r, hi.to(tl.int32), mask=ok)
    tl.store(bounds + 2 * R + r, n.to(tl.int32), mask=ok)
    tl.store(block_sums + pid, tl.sum(n, 0).to(tl.int32))
    tl.store(block_sums + nblk + pid, tl.sum(steps, 0).to(tl.int32))


@triton.jit
def _blocks_before(block_sums, pid, NBLK, BB: tl.constexpr):
    # items and steps of the row blocks before pid
    items = tl.zeros([BB], tl.int32)
    steps = tl.zeros([BB], tl.int32)
    for start in range(0, NBLK, BB):
        b = start + tl.arange(0, BB)
        before = b < tl.minimum(pid, NBLK)
        items += tl.load(block_sums + b, mask=before, other=0)
        steps += tl.load(block_sums + NBLK + b, mask=before, other=0)
    return tl.sum(items, 0), tl.sum(steps, 0)


@triton.jit
def items_fill_kernel(
    units,  # [U, 3] int64: first row, t_lo, t_hi of each call unit
    bounds,  # [U, 3, R] int32 from items_count_kernel
    block_sums,  # [U, 2, NBLK] int32 from items_count_kernel
    tables,  # [U, 4, NW] int32 out: per item its CSR row, first entry, entry past the last, and the steps of TT
    # entries before it among its unit's items
    row_first,  # [U, R + 1] int32 out: first item of each row
    R,
    NW,
    NBLK,
    chunk,
    TT,
    BR: tl.constexpr,
    BB: tl.constexpr,
):
    # programs [0, NBLK) write the items of their rows; the rest fill the empty items past the real count
    pid = tl.program_id(0)
    u = tl.program_id(1)
    row0 = tl.load(units + u * 3)
    bounds += u * 3 * R
    block_sums += u * 2 * NBLK
    item_row = tables + u * 4 * NW
    item_lo = item_row + NW
    item_hi = item_lo + NW
    item_step = item_hi + NW
    row_first += u * (R + 1)
    if pid < NBLK:
        r = pid * BR + tl.arange(0, BR)
        ok = r < R
        lo = tl.load(bounds + r, mask=ok, other=0)
        hi = tl.load(bounds + R + r, mask=ok, other=0)
        n = tl.load(bounds + 2 * R + r, mask=ok, other=0)
        length = hi - lo
        steps = _row_steps(length, chunk, TT)
        items_before, steps_before = _blocks_before(block_sums, pid, NBLK, BB)
        first = items_before + tl.cumsum(n, 0) - n
        step_first = steps_before + tl.cumsum(steps, 0) - steps
        tl.store(row_first + r, first, mask=ok)
        if pid == NBLK - 1:
            tl.store(row_first + R, items_before + tl.sum(n, 0))
        for j in range(tl.max(n, 0)):
            mine = ok & (j < n)
            start = lo + j * chunk
            tl.store(item_row + first + j, (row0 + r).to(tl.int32), mask=mine)
            tl.store(item_lo + first + j, start, mask=mine)
            tl.store(item_hi + first + j, tl.minimum(start + chunk, hi), mask=mine)
            tl.store(item_step + first + j, step_first + j * ((chunk + TT - 1) // TT), mask=mine)
    else:
        total, total_steps = _blocks_before(block_sums, NBLK, NBLK, BB)
        last = tl.maximum(R - 1, 0)
        end = tl.load(bounds + R + last, mask=R > 0, other=0)
        i = total + (pid - NBLK) * BR + tl.arange(0, BR)
        rest = i < NW
        tl.store(item_row + i, (tl.zeros_like(i) + row0 + last).to(tl.int32), mask=rest)
        tl.store(item_lo + i, tl.zeros_like(i) + end, mask=rest)
        tl.store(item_hi + i, tl.zeros_like(i) + end, mask=rest)
        tl.store(item_step + i, tl.zeros_like(i) + total_steps, mask=rest)


def csr_keys(block_indices: Tensor, token_offset: Tensor, nb: int, block: int = 1024) -> Tensor:
    """The CSR row ``h·NB + b`` of every selection of ``block_indices`` (int32 ``[N, HKV, S]``, -1 empty), flat, and
    ``HKV·NB`` for an empty slot, so empty slots sort last; int16, int32 or int64, the narrowest that holds ``HKV·NB``.
    ``token_offset``: int64 ``[N]``, the global id of block 0 of each token's sequence."""
    N, HKV, S = block_indices.shape
    rows = HKV * nb
    dtype = torch.int16 if rows < 2**15 else torch.int32 if rows < 2**31 else torch.int64
    key = torch.empty(N * HKV * S, device=block_indices.device, dtype=dtype)
    if key.numel():
        csr_key_kernel[(triton.cdiv(key.numel(), block),)](
            block_indices.contiguous(), token_offset, key, key.numel(), nb, HKV=HKV, S=S, BLOCK=block
        )
    return key


def csr_entries(
    sorted_key: Tensor, order: Tensor, big: int, HKV: int, S: int, block: int = 1024
) -> tuple[Tensor, Tensor]:
    """``(entries int32, row_key int64)`` of the stably sorted :func:`csr_keys`: each entry's flat selection
    (``order``) and its row key ``row · big + token``."""
    entries = torch.empty(order.numel(), device=order.device, dtype=torch.int32)
    row_key = torch.empty(order.numel(), device=order.device, dtype=torch.int64)
    if order.numel():
        csr_entry_kernel[(triton.cdiv(order.numel(), block),)](
            sorted_key, order, entries, row_key, order.numel(), big, HKV=HKV, S=S, BLOCK=block
        )
    return entries, row_key


def work_items(
    key: Tensor,
    row_base: Tensor,
    units: Tensor,
    rows: int,
    chunk: int,
    max_items: int,
    tokens_per_step: int = 1,
    first_token: Tensor | None = None,
    block_rows: int = 128,
) -> tuple[Tensor, Tensor]:
    """The work items of every call unit: CSR rows ``[row0, row0 + rows)`` over the tokens ``[t_lo, t_hi)``.

    ``units``: int64 ``[U, 3]`` rows ``(row0, t_lo, t_hi)`` on the keys' device (all units in the same two launches);
    ``key``: the ascending int64 row keys ``r · big + token`` of every entry; ``row_base``: ``r · big`` per row, with
    ``t_hi <= big``; ``first_token`` (int64 per row): a row's entries of tokens before it are left out.

    Returns:
        ``tables`` int32 ``[U, 4, max_items]``: per unit ``(item_row, item_lo, item_hi, item_step)``, each item's CSR
        row, its entries ``[item_lo, item_hi)`` and the steps of ``tokens_per_step`` entries of the unit's items
        before it (an item's last step may be short); and ``row_first`` int32 ``[U, rows + 1]``, each row's first item.
    """
    U = units.shape[0]
    nblk = triton.cdiv(rows, block_rows)
    bounds = torch.empty(U, 3, rows, device=key.device, dtype=torch.int32)
    block_sums = torch.empty(U, 2, nblk, device=key.device, dtype=torch.int32)
    tables = torch.empty(U, 4, max_items, device=key.device, dtype=torch.int32)
    row_first = torch.empty(U, rows + 1, device=key.device, dtype=torch.int32)
    if rows == 0 or U == 0:
        tables[:] = 0
        row_first[:] = 0
        return tables, row_first
    common = dict(BR=block_rows, num_warps=4)
    items_count_kernel[(nblk, U)](
        key, row_base, row_base if first_token is None else first_token, units, bounds, block_sums, key.numel(), rows,
        chunk, tokens_per_step, HAS_FIRST=first_token is not None, SEARCH_STEPS=max(key.numel(), 1).bit_length() + 1,
        **common,
    )  # fmt: skip
    fill = nblk + triton.cdiv(max_items, block_rows)
    items_fill_kernel[(fill, U)](
        units, bounds, block_sums, tables, row_first, rows, max_items, nblk, chunk, tokens_per_step, BB=128, **common
    )
    return tables, row_first


def naive_work_items(
    key: Tensor,
    row_base: Tensor,
    row0: int,
    rows: int,
    t_lo: int,
    t_hi: int,
    chunk: int,
    max_items: int,
    tokens_per_step: int = 1,
    first_token: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One unit ``(row0, t_lo, t_hi)`` of :func:`work_items` in PyTorch, row by row on the host: the reference of its
    tables, as ``(item_row, item_lo, item_hi, item_step, row_first)``."""
    items, first, end = [], [0], 0
    for r in range(row0, row0 + rows):
        low = t_lo if first_token is None else min(max(int(first_token[r]), t_lo), t_hi)
        end = int(torch.searchsorted(key, row_base[r] + t_hi))
        lo = min(int(torch.searchsorted(key, row_base[r] + low)), end)
        items += [(r, start, min(start + chunk, end)) for start in range(lo, end, chunk)]
        first.append(len(items))
    if len(items) > max_items:
        raise ValueError(f"{len(items)} work items exceed max_items={max_items}")
    step, steps = 0, []
    for _, lo, hi in items:
        steps.append(step)
        step += -(-(hi - lo) // tokens_per_step)
    pad = max_items - len(items)
    row = [r for r, _, _ in items] + [row0 + max(rows - 1, 0)] * pad
    lo = [a for _, a, _ in items] + [end] * pad
    hi = [b for _, _, b in items] + [end] * pad
    table = torch.tensor([row, lo, hi, steps + [step] * pad], dtype=torch.int32).reshape(4, max_items)
    return *table.to(key.device), torch.tensor(first, dtype=torch.int32, device=key.device)

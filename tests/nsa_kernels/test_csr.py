"""The block-outer selection's CSR kernels: work-item tables against their row-by-row reference.

Runs compiled on a CUDA machine (marked ``gpu``) and under Triton's interpreter elsewhere. The tables are poisoned
before the kernels write them, so an item or row the kernels skip fails.
"""

from __future__ import annotations

import pytest
import torch

from nsa_kernels import csr
from nsa_kernels.csr import naive_work_items, work_items

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = [pytest.mark.gpu] if CUDA else []


def sorted_row_keys(tokens: int, rows: int, per_token: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row keys ``row · big + token`` of ``per_token`` distinct random rows per token, ascending (as the CSR sort
    gives them), with some rows left empty; and ``row_base``."""
    gen = torch.Generator().manual_seed(seed)
    big = max(tokens, 1)
    used = torch.arange(rows)[torch.rand(rows, generator=gen) < 0.8]
    chosen = torch.stack([used[torch.randperm(used.numel(), generator=gen)[:per_token]] for _ in range(tokens)])
    key = (chosen * big + torch.arange(tokens)[:, None]).flatten().sort().values
    return key.to(DEVICE), (torch.arange(rows) * big).to(DEVICE)


@pytest.mark.parametrize(
    ("tokens", "rows", "per_token", "count", "units", "chunk", "step", "first", "block_rows"),
    [
        (50, 12, 3, 12, [(0, 0, 50)], 4, 1, False, 1024),
        (50, 12, 3, 12, [(0, 7, 31), (0, 31, 50), (0, 0, 7)], 3, 2, False, 4),
        (90, 20, 5, 10, [(5, 10, 77), (10, 10, 77)], 5, 7, True, 4),
        (90, 20, 5, 10, [(10, 0, 45), (0, 45, 90)], 64, 9, True, 8),
        (33, 9, 2, 9, [(0, 33, 33), (0, 0, 33)], 2, 3, False, 2),
    ],
    ids=["one-unit", "three-ranges-small-blocks", "first-token-two-heads", "first-token-big-chunk", "empty-range"],
)
def test_work_items_match_reference(tokens, rows, per_token, count, units, chunk, step, first, block_rows,
                                    monkeypatch):  # fmt: skip
    """Every unit's tables equal the reference's for that unit alone, whatever the other units of the call."""
    key, base = sorted_row_keys(tokens, rows, per_token, seed=tokens + rows)
    first_token = None
    if first:
        first_token = torch.randint(0, tokens, (rows,), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    max_items = max(t_hi - t_lo for _, t_lo, t_hi in units) * per_token // chunk + count + 3
    real_empty = torch.empty
    monkeypatch.setattr(csr.torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(-7))
    unit_table = torch.tensor(units, dtype=torch.int64, device=DEVICE)
    tables, row_first = work_items(key, base, unit_table, count, chunk, max_items, step, first_token, block_rows)
    assert tables.shape == (len(units), 4, max_items) and row_first.shape == (len(units), count + 1)
    names = ("item_row", "item_lo", "item_hi", "item_step", "row_first")
    for u, (row0, t_lo, t_hi) in enumerate(units):
        want = naive_work_items(key, base, row0, count, t_lo, t_hi, chunk, max_items, step, first_token)
        for name, a, b in zip(names, (*tables[u], row_first[u]), want, strict=True):
            assert torch.equal(a.cpu(), b.cpu()), f"unit {u} {name}: {a.tolist()} != {b.tolist()}"
    lo, hi = tables[:, 1].long(), tables[:, 2].long()
    assert bool((hi >= lo).all()) and int((hi - lo).max()) <= chunk


@pytest.mark.parametrize(("tokens", "heads", "slots", "nb"), [(37, 3, 4, 9), (20, 2, 5, 2**14)], ids=["int16", "int32"])
def test_csr_keys_and_entries(tokens, heads, slots, nb):
    """Rows ``h·NB + token_offset + block`` (``HKV·NB`` for -1) in the narrowest type, and after the stable sort the
    entries with row keys ``row · big + token``."""
    gen = torch.Generator().manual_seed(tokens)
    block_indices = torch.randint(-1, 8, (tokens, heads, slots), generator=gen, dtype=torch.int32)
    token_offset = torch.randint(0, 2, (tokens,), generator=gen)
    rows = heads * nb
    key = csr.csr_keys(block_indices.to(DEVICE), token_offset.to(DEVICE), nb)
    want = torch.where(
        block_indices >= 0, torch.arange(heads)[None, :, None] * nb + token_offset[:, None, None] + block_indices, rows
    )
    assert key.dtype == (torch.int16 if rows < 2**15 else torch.int32)
    assert torch.equal(key.cpu().long(), want.flatten())
    sorted_key, order = torch.sort(key, stable=True)
    entries, row_key = csr.csr_entries(sorted_key, order, tokens, heads, slots)
    assert torch.equal(entries.cpu().long(), order.cpu())
    assert torch.equal(row_key.cpu(), sorted_key.cpu().long() * tokens + order.cpu() // (heads * slots))
    assert bool((row_key[1:] >= row_key[:-1]).all())

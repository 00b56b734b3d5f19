"""Native sparse attention on Triton: launch order of the branches, autograd, custom ops, public function.

Forward: mean-pool K/V → compression attention (emits its LSE) → importance and exact top-n (unless
``block_indices`` are given) → selection attention (block-outer over the CSR of the selections, or over
the tile unions) → window attention → gated combine; with a computed top-n the Gluon window runs before the
selection and hands it the partial over each token's local blocks (``fwd_local_in_window``).
Backward: gate gradients and per-branch deltas → selection dQ and dK/dV in one block-outer pass (or dQ over
tile unions and dK/dV over the CSR) → dQ and dK/dV of window (banded) and compression (split over token
ranges, then spread back through the mean pool), all with plain stores in a fixed order: deterministic, no
float atomics. With a computed top-n the Gluon window's dQ and dK/dV also take the selection's gradients over each
token's local blocks, which the selection then leaves out (``bwd_local_in_window``). Extra memory beyond inputs,
outputs and the three branch outputs: the int32 indices and their CSR / union tables, O(N·HKV·S), fp32 dQ/dK/dV
accumulators, the compressed-key partial sums and the selection partials (bounded by
``TUNING["slc_block"]["partial_elems"]``, and for dK/dV by ``["bwd_dkv_partial_elems"]``).

Shape legend:
    B batch, T tokens, N = B·T packed tokens, HQ query heads, HKV KV heads, G = HQ / HKV, D head dim,
    S selected blocks per query (``n``), NS selection blocks, BS selection block, W window.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict

import torch
from torch import Tensor

from nsa_kernels.attention import (
    CMP,
    SLC,
    SWD,
    async_applies,
    branch_dkv,
    branch_dq,
    branch_fwd,
    local_coefficients,
    window_emits_local,
    window_in_dq,
    window_takes_local,
)
from nsa_kernels.combine import combine_bwd, combine_fwd
from nsa_kernels.index import (
    block_table,
    compressed_offsets,
    host_lengths,
    reverse_index,
    tile_table,
    tile_union,
)
from nsa_kernels.pool import pool_bwd, pool_fwd
from nsa_kernels.selection import selection_bwd, selection_fwd, selection_plan
from nsa_kernels.topk import CHUNK_ELEMS, select_fwd

BRANCHES = ("cmp", "slc", "swd")
GEOMETRY_KEYS = (
    "compress_block", "compress_stride", "select_block", "num_selected", "forced_initial", "forced_local", "window",
)  # fmt: skip
ASYNC_BRANCH = {
    "async": ("fwd", "dq", "dkv"),
    "async_block_m": 64,
    "async_num_warps": 4,
    "async_block_n": 32,
    "async_fwd_block_n": 64,
    "async_fwd_maxnreg": 168,
    "async_dq_maxnreg": 168,
    "async_dq_partial_buffers": 0,
    "async_dkv_block_m": 128,
    "async_dkv_num_warps": 8,
    "async_dkv_tma": False,
    "async_dkv_keys": 64,
    "async_dkv_buffers": 2,
}
"""The Gluon settings of the compression and window branches (``TUNING["cmp"]`` / ``["swd"]``); an entry that leaves
out an ``async_*`` launch parameter gets it from here, one without ``async`` runs no Gluon kernel."""
TUNING = {
    "cmp": {
        "block_m": 64,
        "num_warps": 4,
        "num_stages": 2,
        **ASYNC_BRANCH,
        "async_dkv_keys": 128,
    },
    "cmp_dkv": {"block_n": 64, "num_warps": 4, "span": 4096},
    "slc": {"block_m": 64, "num_warps": 4, "num_stages": 2},
    "slc_block": {
        "block_m": 64,
        "num_warps": 4,
        "num_stages": 2,
        "bwd_block_m": 128,
        "bwd_num_warps": 8,
        "fwd_maxnreg": 200,
        "fwd_num_stages": 2,
        "merge_block_m": 32,
        "merge_warps": 1,
        "fwd_item": 576,
        "bwd_item": 1152,
        "bwd_item_waves": 4,
        "bwd_dkv_partial_elems": 2**29,
        "bwd_range_heads": 1,
        "bwd_async_gathers": True,
        "bwd_warp_specialized": True,
        "bwd_dq_in_cmp": True,
        "partial_elems": 2**31,
        "dq_partials_fp32": False,
        "bwd_dq_halves": True,
        "fwd_o_halves": True,
        "fwd_prefetch": True,
        "fwd_async_gathers": True,
        "fwd_async_buffers": 2,
        "fwd_local_in_window": True,
        "bwd_local_in_window": True,
        "item_rows": 128,
    },
    "swd": {
        "block_m": 64,
        "num_warps": 4,
        "num_stages": 2,
        **ASYNC_BRANCH,
        "async_dq_in_cmp": True,
        "async_dkv_tma": True,
    },
    "topk": {
        "block_m": 64,
        "num_warps": 8,
        "num_stages": 3,
        "block_n": 64,
        "select_warps": 0,
        "select_compact": 128,
        "chunk_elems": CHUNK_ELEMS,
        "asynchronous": True,
        "async_block_m": 128,
        "async_num_warps": 4,
        "async_block_n": 64,
    },
    "pregate": {"cmp": True, "slc": True, "swd": True},
}
"""Launch parameters per branch (``block_m`` = MMA rows, tokens times G heads); the benchmark varies them.

``cmp`` / ``swd``: ``async`` names the kernels (``fwd``, ``dq``, ``dkv``) that run in Gluon
(:mod:`nsa_kernels.attention_async`) where they apply (Hopper), with rows ``async_block_m`` on ``async_num_warps``
warps, ``async_block_n`` keys per step in the dQ and ``async_fwd_block_n`` in the forward (whose registers are capped at
``async_fwd_maxnreg`` per thread, the dQ's at ``async_dq_maxnreg``; the compression dQ copies the selection's dQ
partials into ``async_dq_partial_buffers`` tiles of shared memory, 0 = as many as its free buffers hold), and
``async_dkv_block_m`` query rows per step on ``async_dkv_num_warps`` (dK/dV), brought by TMA in head parts where
``async_dkv_tma`` (:mod:`nsa_kernels.dkv_async`), or with ``async_dkv_keys`` = 128 the warp-specialised kernel of
:mod:`nsa_kernels.dkv_keyrows` (``async_dkv_buffers`` row buffers) where it applies; ``swd``'s ``async_dq_in_cmp``:
where the compression dQ adds the selection's partials in Gluon (``bwd_dq_in_cmp``), it adds the window's dQ of its
tiles too (:func:`~nsa_kernels.attention.window_in_dq`), so no fp32 dQ sum is kept; elsewhere the Triton kernels run
with ``block_m`` / ``num_warps``. ``cmp_dkv`` is the compression dK/dV pass (compressed keys per program, warps, token
chunk per program: 0 = equal shares of each key tile's range). ``slc_block`` is the block-outer selection
(:mod:`nsa_kernels.selection`; ``*_item`` = CSR entries per work item, grown in the backward up to 4 times while a
launch keeps ``bwd_item_waves`` waves of items), used when ``SELECTION["algo"] == "block"``;
``"tile"`` runs the tile-outer kernels with ``slc``; ``fwd_x`` / ``bwd_x`` override ``x`` in one phase;
``bwd_range_heads``: the fewest KV heads per token range of the backward, used where they mean fewer ranges (0 = all;
fewer heads per range give longer ranges for the same partials, so fewer work items); ``fwd_o_halves`` /
``bwd_dq_halves`` compute the per-step partial output / dQ tile as two D/2-wide halves (fewer live registers);
``fwd_prefetch`` loads the next step's query rows into registers during the current step; ``bwd_dkv_partial_elems``
bounds the dK/dV partials of the token ranges that are reduced together (fewer read-and-rewrite passes over the fp32
dK/dV). ``bwd_dq_in_cmp``: where the compression branch runs too, its dQ kernel adds the selection's dQ partials of its
own query tiles, token range by token range, in place of the selection's dQ reduction (so the memory-bound sum runs
beside the compression's MMAs). ``fwd_async_gathers`` / ``bwd_async_gathers`` run the Gluon block kernels of
:mod:`nsa_kernels.selection_async` where they apply (Hopper), ``fwd_async_buffers`` being the forward's query-row
buffers (rows copied that many steps minus one ahead); ``bwd_warp_specialized`` runs the backward block kernel of
:mod:`nsa_kernels.selection_ws` instead (a producer warpgroup copies the rows). ``fwd_local_in_window``: where the
top-n is computed here (so every token selected its ``forced_local`` most recent blocks, ``num_selected``
allowing) and the Gluon window forward can (:func:`~nsa_kernels.attention.window_emits_local`), the window runs first
and emits each row's selection partial over those blocks, which lie inside its window; the block-outer selection
leaves them out.
``bwd_local_in_window``: the same in the backward, where the window's dQ runs in the compression dQ
(``swd``'s ``async_dq_in_cmp``) and its Gluon dK/dV can (:func:`~nsa_kernels.attention.window_takes_local`): the
window's dQ and dK/dV kernels, given the ungated dO, add the selection's gradients over those blocks (same scores,
no extra MMA) and the block-outer selection leaves them out. ``item_rows``: CSR rows per program of the work-item
kernels (:func:`~nsa_kernels.csr.work_items`). ``topk`` launches
the importance and top-n kernels (:func:`nsa_kernels.topk.select_fwd`); its ``asynchronous`` runs the Gluon importance
kernel of :mod:`nsa_kernels.topk_async` where it applies, with the ``async_*`` launch. ``pregate``: the combine
backward writes the gated dO of a branch once (not per row).
``NSA_KERNELS_TUNING`` (JSON, e.g. ``{"slc_block": {"bwd_num_warps": 8}}``) updates these entries at import.
"""
SELECTION = {"algo": "block"}
DQ_KEYS = {
    "block_m", "num_warps", "num_stages", "maxnreg", "async_dq", "async_block_n", "async_dq_maxnreg",
    "async_dq_partial_buffers",
}  # fmt: skip
"""The launch parameters of :func:`~nsa_kernels.attention.branch_dq` among a branch's backward tuning."""
DKV_SHARED_KEYS = {"block_m", "num_warps", "num_stages", "maxnreg"}
"""Those of them that :func:`~nsa_kernels.attention.branch_dkv` takes too."""


def _tuning_from_env() -> None:
    text = os.environ.get("NSA_KERNELS_TUNING", "")
    if not text:
        return
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        example = '{"swd": {"num_warps": 8}}'
        raise ValueError(f"NSA_KERNELS_TUNING is not JSON ({error}); write e.g. {example}") from error
    for name, values in overrides.items():
        if name not in TUNING or not isinstance(values, dict):
            raise ValueError(f"NSA_KERNELS_TUNING entry {name!r} must be one of {sorted(TUNING)} mapped to an object")
        TUNING[name].update(values)


_tuning_from_env()


def _phase_tuning(phase: str) -> dict:
    """``TUNING["slc_block"]`` for one phase: ``fwd_x`` / ``bwd_x`` keys override ``x`` in their phase only."""
    tune = {}
    for key, value in TUNING["slc_block"].items():
        prefix, _, name = key.partition("_")
        if prefix not in ("fwd", "bwd"):
            tune.setdefault(key, value)
        elif prefix == phase:
            tune[name] = value
    return tune


def _branch_tuning(name: str, q: Tensor, phase: str) -> dict:
    """``TUNING[name]`` as keyword arguments of ``branch_fwd`` (``phase`` "fwd") or ``branch_dq`` / ``branch_dkv``
    ("bwd", split by ``DQ_KEYS``): the ``async_*`` launch parameters replace the Triton ones for the Gluon kernels that
    apply."""
    kwargs = {key: value for key, value in TUNING[name].items() if not key.startswith("async")}
    kernels = set(TUNING[name].get("async", ())) if async_applies(q) else set()
    tune = {**ASYNC_BRANCH, **TUNING[name]}
    rows = {
        "block_m": tune["async_block_m"],
        "num_warps": tune["async_num_warps"],
        "async_block_n": tune["async_block_n"],
    }
    if phase == "fwd" and "fwd" in kernels:
        forward = {"async_block_n": tune["async_fwd_block_n"], "maxnreg": tune["async_fwd_maxnreg"]}
        kwargs.update(rows, asynchronous=True, **forward)
    if phase == "bwd" and "dq" in kernels:
        dq = {key: tune[key] for key in ("async_dq_maxnreg", "async_dq_partial_buffers")}
        kwargs.update(rows, async_dq=True, **dq)
    if phase == "bwd" and "dkv" in kernels:
        kwargs.update(
            dkv_block_m=tune["async_dkv_block_m"],
            dkv_num_warps=tune["async_dkv_num_warps"],
            async_dkv=True,
            dkv_rows_tma=tune["async_dkv_tma"],
            dkv_keys=tune["async_dkv_keys"],
            dkv_buffers=tune["async_dkv_buffers"],
        )
    return kwargs


def _compressed_lengths(lens: list[int], geometry: dict) -> list[int]:
    CL, CS = geometry["compress_block"], geometry["compress_stride"]
    return [(n - CL) // CS + 1 if n >= CL else 0 for n in lens]


def _plan(cu: Tensor, HQ: int, HKV: int, geometry: dict, block_m: int, lens: list[int] | None = None) -> dict:
    """Index tables of one launch setting; with host ``lens`` (:func:`~nsa_kernels.index.host_lengths`) no sync."""
    if lens is None:
        lens = (cu[1:] - cu[:-1]).tolist()
    G = HQ // HKV
    TT = max(block_m, 1 << (G - 1).bit_length(), 16) // G
    SB = geometry["select_block"]
    cu_keys_cmp = compressed_offsets(cu, geometry["compress_block"], geometry["compress_stride"])
    cmp_lens = _compressed_lengths(lens, geometry)
    cmp_tiles = block_table(cu_keys_cmp, 64, cmp_lens)[:2]
    longest = max(lens, default=0)
    return {
        "cu_seqlens": cu,
        "lens": lens,
        "cmp_lens": cmp_lens,
        "tokens_per_tile": TT,
        "tiles": tile_table(cu, TT, lens),
        "cu_keys_cmp": cu_keys_cmp,
        "cmp_tiles": cmp_tiles,
        "key_tiles": block_table(cu, 64, lens)[:2],
        "slc_blocks": block_table(cu, SB, lens)[:2],
        "max_blocks": math.ceil(longest / SB),
        "memo": {},
    }


PLAN_CACHE_SIZE = 32
_plan_cache: OrderedDict = OrderedDict()


class _Plans:
    """Plans per ``block_m`` of one call, from the host lengths, kept across calls of the same layout.

    A training loop calls with the same sequence lengths every step (forward and backward of every layer), so the
    index tables are built once and reused: no host work, no host-to-device copies (which a CUDA graph capture would
    also forbid). The ``PLAN_CACHE_SIZE`` most recent layouts are kept; their tables are only ever read, and the
    plan's ``memo`` collects the tables that the kernels' launchers derive from the layout on first use
    (:func:`~nsa_kernels.index.cached`).
    """

    def __init__(self, cu: Tensor, lens: list[int], HQ: int, HKV: int, geometry: dict):
        self.cu, self.lens, self.args = cu, lens, (HQ, HKV, geometry)
        self.key = (str(cu.device), tuple(lens), HQ, HKV, tuple(geometry.items()))

    def __call__(self, block_m: int) -> dict:
        key = (*self.key, block_m)
        if key in _plan_cache:
            _plan_cache.move_to_end(key)
        else:
            _plan_cache[key] = _plan(self.cu, *self.args, block_m, self.lens)
            while len(_plan_cache) > PLAN_CACHE_SIZE:
                _plan_cache.popitem(last=False)
        return {**_plan_cache[key], "cu_seqlens": self.cu}


def _with_selection(plan: dict, block_indices: Tensor, geometry: dict, need_csr: bool) -> dict:
    tile_seq, tile_start = plan["tiles"]
    off, blocks = tile_union(block_indices, tile_start, plan["cu_seqlens"], tile_seq, plan["tokens_per_tile"])
    plan = {**plan, "union": (off, blocks, block_indices)}
    if need_csr:
        plan["csr"] = reverse_index(block_indices, plan["cu_seqlens"], geometry["select_block"])
    return plan


def _flatten(q: Tensor, k: Tensor, v: Tensor, gates: Tensor, cu_seqlens: Tensor | None):
    B, T, _HQ, _D = q.shape
    if cu_seqlens is None:
        cu = torch.arange(0, (B + 1) * T, T, device=q.device, dtype=torch.int32)
    else:
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    flat = (x.reshape(B * T, *x.shape[2:]).contiguous() for x in (q, k, v, gates))
    return (*flat, cu, host_lengths(cu_seqlens, B, T))


def nsa_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gates: Tensor,
    cu_seqlens: Tensor | None,
    block_indices: Tensor | None,
    geometry: dict,
    branches: tuple[str, ...],
    scale: float,
    return_scores: bool,
) -> dict:
    """Forward of all enabled branches on ``[B, T, H, D]`` inputs; returns the packed outputs by name."""
    B, T, HQ, _D = q.shape
    HKV = k.shape[2]
    q, k, v, gates, cu, lens = _flatten(q, k, v, gates, cu_seqlens)
    plans = _Plans(cu, lens, HQ, HKV, geometry)
    out: dict = {"outputs": {}, "lse": {}}
    need_cmp = "cmp" in branches or ("slc" in branches and block_indices is None)
    if need_cmp:
        cmp_tune = _branch_tuning("cmp", q, "fwd")
        plan = plans(cmp_tune["block_m"])
        k_cmp, v_cmp = pool_fwd(
            k,
            v,
            cu,
            plan["cu_keys_cmp"],
            compress_block=geometry["compress_block"],
            compress_stride=geometry["compress_stride"],
            cmp_lens=plan["cmp_lens"],
            memo=plan["memo"],
        )
        o_cmp, lse_cmp = branch_fwd(q, k_cmp, v_cmp, mode=CMP, plan=plan, scale=scale, geometry=geometry, **cmp_tune)
        if "cmp" in branches:
            out["outputs"]["cmp"], out["lse"]["cmp"] = o_cmp, lse_cmp
    if "slc" in branches:
        computed = block_indices is None
        if computed:
            plan = plans(TUNING["topk"]["block_m"])
            block_indices, out["scores"] = select_fwd(
                q,
                k_cmp,
                lse_cmp,
                plan=plan,
                scale=scale,
                geometry=geometry,
                return_scores=return_scores,
                **TUNING["topk"],
            )
        else:
            block_indices = block_indices.reshape(B * T, HKV, -1).to(torch.int32).contiguous()
        out["block_indices"] = block_indices
        if SELECTION["algo"] == "block":
            plan = plans(TUNING["slc_block"]["block_m"])
            tune = _phase_tuning("fwd")
            del tune["dq_partials_fp32"]
            local = None
            if tune.pop("local_in_window") and _local_blocks_selected(computed, geometry) and "swd" in branches:
                local = _window_with_local(q, k, v, plans, scale, geometry, out)
            sel = selection_plan(plan, block_indices, geometry["select_block"])
            out["csr"] = sel["entries"], sel["key"]
            out["outputs"]["slc"], out["lse"]["slc"] = selection_fwd(
                q, k, v, plan=plan, sel=sel, scale=scale, select_block=geometry["select_block"], local=local, **tune
            )
        else:
            plan = _with_selection(plans(TUNING["slc"]["block_m"]), block_indices, geometry, False)
            out["outputs"]["slc"], out["lse"]["slc"] = branch_fwd(
                q, k, v, mode=SLC, plan=plan, scale=scale, geometry=geometry, **TUNING["slc"]
            )
    if "swd" in branches and "swd" not in out["outputs"]:
        swd_tune = _branch_tuning("swd", q, "fwd")
        out["outputs"]["swd"], out["lse"]["swd"] = branch_fwd(
            q, k, v, mode=SWD, plan=plans(swd_tune["block_m"]), scale=scale, geometry=geometry, **swd_tune
        )
    out["o"] = combine_fwd(out["outputs"], gates)
    return out


def _local_blocks_selected(computed: bool, geometry: dict) -> bool:
    """Whether every token selected its ``forced_local`` most recent blocks: the top-n was computed here, with room
    for all the forced blocks."""
    return computed and geometry["num_selected"] >= geometry["forced_initial"] + geometry["forced_local"]


def _window_with_local(q: Tensor, k: Tensor, v: Tensor, plans: _Plans, scale: float, geometry: dict, out: dict):
    """Where :func:`~nsa_kernels.attention.window_emits_local` holds, run the window forward now, into ``out``, with
    the selection's partial over each row's forced local blocks as a by-product: ``(o_loc, lse_loc, forced_local)``
    for :func:`~nsa_kernels.selection.selection_fwd`, else None."""
    tune = _branch_tuning("swd", q, "fwd")
    if not (tune.get("asynchronous") and window_emits_local(q, geometry, tune["block_m"], tune["async_block_n"])):
        return None
    o_loc = torch.empty_like(q)
    lse_loc = torch.empty(q.shape[:2], device=q.device, dtype=torch.float32)
    out["outputs"]["swd"], out["lse"]["swd"] = branch_fwd(
        q, k, v, mode=SWD, plan=plans(tune["block_m"]), scale=scale, geometry=geometry, local=(o_loc, lse_loc), **tune
    )
    return o_loc, lse_loc, geometry["forced_local"]


def nsa_bwd(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gates: Tensor,
    cu_seqlens: Tensor | None,
    outputs: dict,
    lse: dict,
    block_indices: Tensor | None,
    geometry: dict,
    branches: tuple[str, ...],
    scale: float,
    csr: tuple[Tensor, Tensor] | None = None,
    computed: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(dq, dk, dv, dgates)`` in the input layout and dtype; ``csr``: the forward's selection CSR;
    ``computed``: ``block_indices`` are the forward's top-n (so every token selected its forced local blocks)."""
    shape_q, shape_k, shape_g = q.shape, k.shape, gates.shape
    HQ, HKV = q.shape[2], k.shape[2]
    q, k, v, gates, cu, lens = _flatten(q, k, v, gates, cu_seqlens)
    plans = _Plans(cu, lens, HQ, HKV, geometry)
    do = do.reshape(q.shape).contiguous()
    block_slc = "slc" in branches and SELECTION["algo"] == "block"
    tune = _phase_tuning("bwd")
    dq_in_cmp = tune.pop("dq_in_cmp") and block_slc and "cmp" in branches
    cmp_dq = {key: value for key, value in _branch_tuning("cmp", q, "bwd").items() if key in DQ_KEYS}
    window_in_cmp = (
        dq_in_cmp and "swd" in branches and TUNING["swd"]["async_dq_in_cmp"] and cmp_dq.get("async_dq", False)
        and window_in_dq(q, cmp_dq["block_m"], cmp_dq["async_block_n"])
    )  # fmt: skip
    local_in_window = (
        tune.pop("local_in_window") and window_in_cmp and _local_blocks_selected(computed, geometry)
        and _branch_tuning("swd", q, "bwd").get("async_dkv", False)
        and window_takes_local(q, geometry, cmp_dq["async_block_n"])
    )  # fmt: skip
    pregated = tuple(name for name in BRANCHES if TUNING["pregate"][name] and not (local_in_window and name == "swd"))
    dgates, delta, gated = combine_bwd(do, outputs, gates, pregated)
    # the fp32 dQ sum of the branches that do not write the output; none when the compression dQ does all of it
    dq = None if window_in_cmp else torch.empty(q.shape, device=q.device, dtype=torch.float32)
    last_dq = next(name for name in ("cmp", "swd", "slc") if name in branches)
    dq_final = None

    def final_dq(name: str) -> Tensor | None:
        # the output dQ (input dtype) for the last dQ writer, allocated only then: not live at the selection's peak
        nonlocal dq_final
        if name == last_dq:
            dq_final = torch.empty_like(q)
        return dq_final

    dkv = None
    accumulate = False
    pool = dict(compress_block=geometry["compress_block"], compress_stride=geometry["compress_stride"])

    def grad_inputs(name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return gated.get(name, do), gates, lse[name], delta[BRANCHES.index(name)]

    def dq_pass(name: str, mode: int, keys: Tensor, values: Tensor, plan: dict | None = None, **kw) -> None:
        tune = _branch_tuning(name, q, "bwd")
        branch_dq(
            q, keys, values, *grad_inputs(name), dq, mode=mode, plan=plan or plans(tune["block_m"]),
            gated=name in gated, scale=scale, geometry=geometry, **kw,
            **{key: value for key, value in tune.items() if key in DQ_KEYS},
        )  # fmt: skip

    def dkv_pass(name: str, mode: int, keys: Tensor, values: Tensor, plan: dict | None = None, **kw):
        tune = _branch_tuning(name, q, "bwd")
        return branch_dkv(
            q, keys, values, *grad_inputs(name), mode=mode, plan=plan or plans(tune["block_m"]), gated=name in gated,
            scale=scale, geometry=geometry, **kw,
            **{key: value for key, value in tune.items() if key not in DQ_KEYS - DKV_SHARED_KEYS},
        )  # fmt: skip

    def branch_grad(name: str, mode: int, keys: Tensor, values: Tensor, plan: dict | None = None, **kw):
        dq_pass(name, mode, keys, values, plan, accumulate_dq=accumulate, dq_out=final_dq(name))
        return dkv_pass(name, mode, keys, values, plan, **kw)

    def selection_grad(**kw) -> tuple[Tensor, Tensor]:
        plan = plans(TUNING["slc_block"]["block_m"])
        sel = selection_plan(plan, block_indices, geometry["select_block"], csr)
        return selection_bwd(
            q, k, v, *grad_inputs("slc"), dq, plan=plan, sel=sel, scale=scale, select_block=geometry["select_block"],
            accumulate_dq=False, gated="slc" in gated, local=geometry["forced_local"] if local_in_window else 0, **kw,
            **tune,
        )  # fmt: skip

    def cmp_keys() -> tuple[dict, Tensor, Tensor]:
        plan = plans(_branch_tuning("cmp", q, "bwd")["block_m"])
        return plan, *pool_fwd(k, v, cu, plan["cu_keys_cmp"], cmp_lens=plan["cmp_lens"], memo=plan["memo"], **pool)

    def cmp_dkv(plan: dict, k_cmp: Tensor, v_cmp: Tensor, dkv):
        dk_cmp, dv_cmp = dkv_pass("cmp", CMP, k_cmp, v_cmp, plan, cmp_dkv=TUNING["cmp_dkv"])
        return pool_bwd(
            dk_cmp, dv_cmp, dkv, q.shape[0], cu, plan["cu_keys_cmp"], lens=lens, memo=plan["memo"], out_dtype=q.dtype,
            **pool,
        )  # fmt: skip

    if dq_in_cmp:
        # the compression dQ adds the selection's dQ partials of its tiles, token range by token range, and with
        # window_in_cmp the window's dQ of those tiles (and with local_in_window the selection's over the local blocks)
        window = local = None
        if local_in_window:
            local = local_coefficients(lse["swd"], lse["slc"], gates, delta[BRANCHES.index("slc")])
        if window_in_cmp:
            w_do, _, w_lse, w_delta = grad_inputs("swd")
            window = (k, v, w_do, w_lse, w_delta, "swd" in gated)
            dkv = dkv_pass("swd", SWD, k, v, dkv=None, local=local)
        elif "swd" in branches:
            dkv = branch_grad("swd", SWD, k, v, dkv=None)
        plan_cmp, k_cmp, v_cmp = cmp_keys()
        dq_out = final_dq("cmp")

        def dq_with_selection(
            partials: tuple[Tensor, Tensor], t_lo: int, _t_hi: int, tile_lo: int, tile_hi: int, heads: tuple[int, int]
        ) -> None:
            dq_pass(
                "cmp", CMP, k_cmp, v_cmp, plan_cmp, accumulate_dq="swd" in branches and not window_in_cmp,
                dq_out=dq_out, tiles=(tile_lo, tile_hi), heads=heads,
                slc_partials=(*partials, block_indices.shape[-1], t_lo), window=window, local=local,
            )  # fmt: skip

        dkv = selection_grad(dkv=dkv, dq_reduce=dq_with_selection, reduce_tiles=plan_cmp["tokens_per_tile"])
        dkv = cmp_dkv(plan_cmp, k_cmp, v_cmp, (dkv[0][0], dkv[1][0]))
    else:
        if block_slc:
            dkv = selection_grad(dq_out=final_dq("slc"))
            accumulate = True
        elif "slc" in branches:
            plan = _with_selection(plans(TUNING["slc"]["block_m"]), block_indices, geometry, True)
            dkv = branch_grad("slc", SLC, k, v, plan, dkv=None)
            accumulate = True
        if "swd" in branches:
            dkv = branch_grad("swd", SWD, k, v, dkv=dkv)
            accumulate = True
        if dkv is not None:
            dkv = (dkv[0][0], dkv[1][0])
        if "cmp" in branches:
            plan_cmp, k_cmp, v_cmp = cmp_keys()
            dq_pass("cmp", CMP, k_cmp, v_cmp, plan_cmp, accumulate_dq=accumulate, dq_out=final_dq("cmp"))
            dkv = cmp_dkv(plan_cmp, k_cmp, v_cmp, dkv)
    dtype = q.dtype
    return (
        dq_final.reshape(shape_q),
        dkv[0].to(dtype).reshape(shape_k),
        dkv[1].to(dtype).reshape(shape_k),
        dgates.reshape(shape_g),
    )


def _geometry(values: list[int]) -> dict:
    return dict(zip(GEOMETRY_KEYS, values, strict=True))


def _branches(flags: list[bool]) -> tuple[str, ...]:
    return tuple(b for b, on in zip(BRANCHES, flags, strict=True) if on)


_FWD_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor gates, Tensor? cu_seqlens, Tensor? block_indices, int[] geometry, "
    "bool[] branches, float scale, bool return_scores) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor do, Tensor q, Tensor k, Tensor v, Tensor gates, Tensor? cu_seqlens, Tensor o_cmp, Tensor o_slc, "
    "Tensor o_swd, Tensor lse, Tensor block_indices, Tensor csr_entries, Tensor csr_key, int[] geometry, "
    "bool[] branches, float scale, bool computed) "
    "-> (Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("nsa_kernels::nsa_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def _nsa_fwd_op(q, k, v, gates, cu_seqlens, block_indices, geometry, branches, scale, return_scores):
    res = nsa_fwd(
        q, k, v, gates, cu_seqlens, block_indices, _geometry(geometry), _branches(branches), scale, return_scores
    )
    N, HQ = q.shape[0] * q.shape[1], q.shape[2]
    lse = torch.zeros(3, N, HQ, device=q.device, dtype=torch.float32)
    for c, name in enumerate(BRANCHES):
        if name in res["lse"]:
            lse[c] = res["lse"][name]
    computed = res.get("block_indices") if block_indices is None else None
    scores = res.get("scores")
    if scores is not None:
        scores = torch.nn.functional.pad(scores, (0, math.ceil(N / geometry[2]) - scores.shape[-1]))
    entries, key = res.get("csr", (q.new_empty(0, dtype=torch.int32), q.new_empty(0, dtype=torch.int64)))
    return (
        res["o"].reshape(q.shape),
        *(res["outputs"][name] if name in res["outputs"] else q.new_empty(0) for name in BRANCHES),
        lse,
        computed if computed is not None else q.new_empty(0, dtype=torch.int32),
        scores if scores is not None else q.new_empty(0, dtype=torch.float32),
        entries,
        key,
    )


@_nsa_fwd_op.register_fake
def _(q, k, v, gates, cu_seqlens, block_indices, geometry, branches, scale, return_scores):
    N, HQ, HKV = q.shape[0] * q.shape[1], q.shape[2], k.shape[2]
    flat = q.new_empty(N, HQ, q.shape[3])
    slc_computed = branches[1] and block_indices is None
    S = geometry[3] if block_indices is None else block_indices.shape[-1]
    E = N * HKV * S if branches[1] and SELECTION["algo"] == "block" else 0
    return (
        torch.empty_like(q),
        *(flat.clone() if on else q.new_empty(0) for on in branches),
        q.new_empty(3, N, HQ, dtype=torch.float32),
        q.new_empty((N, HKV, geometry[3]) if slc_computed else (0,), dtype=torch.int32),
        q.new_empty(
            (N, HKV, math.ceil(N / geometry[2])) if slc_computed and return_scores else (0,), dtype=torch.float32
        ),
        q.new_empty(E, dtype=torch.int32),
        q.new_empty(E, dtype=torch.int64),
    )


@torch.library.custom_op("nsa_kernels::nsa_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def _nsa_bwd_op(
    do, q, k, v, gates, cu_seqlens, o_cmp, o_slc, o_swd, lse, block_indices, csr_entries, csr_key, geometry, branches,
    scale, computed,
):  # fmt: skip
    names = _branches(branches)
    outputs = {n: o for n, o in zip(BRANCHES, (o_cmp, o_slc, o_swd), strict=True) if n in names}
    lses = {n: lse[c] for c, n in enumerate(BRANCHES) if n in names}
    bi = block_indices.reshape(q.shape[0] * q.shape[1], k.shape[2], -1).to(torch.int32).contiguous()
    csr = (csr_entries, csr_key) if csr_entries.numel() else None
    return nsa_bwd(do, q, k, v, gates, cu_seqlens, outputs, lses, bi, _geometry(geometry), names, scale, csr, computed)


@_nsa_bwd_op.register_fake
def _(do, q, k, v, gates, cu_seqlens, o_cmp, o_slc, o_swd, lse, block_indices, csr_entries, csr_key, *args):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(gates)


def _setup_context(ctx, inputs, output):
    q, k, v, gates, cu_seqlens, block_indices, geometry, branches, scale, _ = inputs
    _, o_cmp, o_slc, o_swd, lse, computed, _, csr_entries, csr_key = output
    selected = computed if block_indices is None else block_indices
    if selected is None:
        selected = q.new_empty(0, dtype=torch.int32)
    ctx.save_for_backward(q, k, v, gates, cu_seqlens, o_cmp, o_slc, o_swd, lse, selected, csr_entries, csr_key)
    ctx.geometry, ctx.branches, ctx.scale = geometry, branches, scale
    ctx.computed = block_indices is None
    ctx.set_materialize_grads(False)


def _backward(ctx, do, *unused):
    if do is None:
        return (None,) * 10
    q, k, v, gates, cu_seqlens, o_cmp, o_slc, o_swd, lse, selected, csr_entries, csr_key = ctx.saved_tensors
    dq, dk, dv, dg = torch.ops.nsa_kernels.nsa_bwd(
        do, q, k, v, gates, cu_seqlens, o_cmp, o_slc, o_swd, lse, selected, csr_entries, csr_key, ctx.geometry,
        ctx.branches, ctx.scale, ctx.computed,
    )  # fmt: skip
    return dq, dk, dv, dg, None, None, None, None, None, None


_nsa_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _check_tensors(q: Tensor, k: Tensor, v: Tensor, gates: Tensor) -> None:
    """Shapes, dtypes and devices of :func:`nsa_func`'s tensors, each error naming the argument and the fix."""
    if q.dim() != 4 or q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"q must be a bf16 or fp16 tensor [B, T, HQ, D], got {q.dtype} {tuple(q.shape)}")
    B, T, HQ, D = q.shape
    for name, x in (("k", k), ("v", v), ("gates", gates)):
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; move them to one device")
        if name != "gates" and x.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but q has {q.dtype}; cast them to one dtype")
    if k.dim() != 4 or tuple(k.shape[:2]) != (B, T) or k.shape[3] != D or k.shape != v.shape:
        raise ValueError(
            f"k and v must both be [B={B}, T={T}, HKV, D={D}] to match q, got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    if tuple(gates.shape) != (B, T, HQ, 3):
        raise ValueError(f"gates must be [B, T, HQ, 3] = {(B, T, HQ, 3)} (cmp, slc, swd), got {tuple(gates.shape)}")


def nsa_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gates: Tensor,
    *,
    compress_block: int = 64,
    compress_stride: int = 64,
    select_block: int = 64,
    num_selected: int = 32,
    forced_initial: int = 1,
    forced_local: int = 2,
    window: int = 256,
    branches: tuple[str, ...] = BRANCHES,
    scale: float | None = None,
    cu_seqlens: Tensor | None = None,
    block_indices: Tensor | None = None,
    return_aux: bool = False,
) -> Tensor | tuple[Tensor, dict]:
    """Native sparse attention (clean mode, causal) with Triton kernels, forward and backward.

    ``o = Σ_c gates[..., c] · o_c`` over the enabled branches: ``cmp`` (attention over mean-pooled
    blocks ``[i·d, i·d + l)`` complete at the query), ``slc`` (attention over the tokens ``<= t`` of the
    exact top-n selection blocks, importance from the compression probabilities summed over the G heads
    of a KV head, first ``forced_initial`` and last ``forced_local`` blocks forced) and ``swd`` (the
    ``window`` keys ending at the query). Query head ``h`` reads KV head ``h // G``, for any G.

    Args:
        q: queries ``[B, T, HQ, D]``, bf16 or fp16 (fp32 accumulation inside).
        k: keys ``[B, T, HKV, D]``, ``HQ`` a multiple of ``HKV``.
        v: values ``[B, T, HKV, D]``.
        gates: ``[B, T, HQ, 3]`` branch gates in the order (cmp, slc, swd).
        compress_block: ``l``, tokens per compressed block.
        compress_stride: ``d <= l``.
        select_block: ``s``, tokens per selection block (at most 128).
        num_selected: ``n``, exact (never rounded to a power of two).
        forced_initial: leading blocks always selected.
        forced_local: most recent blocks (own block first) always selected.
        window: ``w``.
        branches: enabled branches, a subset of ``("cmp", "slc", "swd")``.
        scale: softmax scale, ``None`` for ``1/sqrt(D)``.
        cu_seqlens: int ``[NSEQ + 1]`` packed-sequence offsets (``B == 1``); block ids restart per sequence.
        block_indices: int ``[B, T, HKV, S]`` selection blocks to use instead of the computed top-n (-1 empty).
        return_aux: also return a dict with ``outputs``/``lse`` per branch, ``block_indices`` and
            ``block_scores`` (``[B, T, HKV, ceil(B·T / s)]``, zero-padded); gradients flow through ``o`` only.

    Returns:
        ``o [B, T, HQ, D]``, or ``(o, aux)``.
    """
    _check_tensors(q, k, v, gates)
    B, T, HQ, D = q.shape
    HKV = k.shape[2]
    if HKV == 0 or HQ % HKV:
        raise ValueError(f"q has {HQ} heads, not a multiple of the {HKV} KV heads of k")
    if select_block > 128:
        raise ValueError(f"select_block={select_block} is above the supported 128")
    if D > 256:
        raise ValueError(f"head dim D={D} is above the supported 256")
    rows = B * T * max(HQ, HKV * num_selected)
    if rows >= 2**31:
        raise ValueError(
            f"B·T·max(HQ, HKV·num_selected) = {rows} reaches 2^31, past the int32 row and selection offsets of the "
            f"kernels; split the {B * T} tokens into calls of fewer than {2**31 // (rows // (B * T))}"
        )
    if unknown := set(branches) - set(BRANCHES):
        raise ValueError(f"branches has unknown names {sorted(unknown)}; use a subset of {BRANCHES}")
    geometry = [compress_block, compress_stride, select_block, num_selected, forced_initial, forced_local, window]
    flags = [name in branches for name in BRANCHES]
    scale = D**-0.5 if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"scale={scale} must be a positive softmax scale (None for 1/sqrt(D))")
    o, o_cmp, o_slc, o_swd, lse, computed, scores, _, _ = torch.ops.nsa_kernels.nsa_fwd(
        q, k, v, gates.to(q.dtype), cu_seqlens, block_indices, geometry, flags, scale, return_aux
    )
    if not return_aux:
        return o
    per_branch = dict(zip(BRANCHES, (o_cmp, o_slc, o_swd), strict=True))
    aux = {
        "outputs": {n: per_branch[n].reshape(B, T, HQ, D) for n in BRANCHES if n in branches},
        "lse": {n: lse[c].reshape(B, T, HQ) for c, n in enumerate(BRANCHES) if n in branches},
        "block_indices": None,
        "block_scores": None,
    }
    if "slc" in branches:
        aux["block_indices"] = (computed if block_indices is None else block_indices).reshape(B, T, HKV, -1)
        if block_indices is None:
            aux["block_scores"] = scores.reshape(B, T, HKV, -1)
    return o, aux

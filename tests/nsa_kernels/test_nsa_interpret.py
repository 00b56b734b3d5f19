"""The Triton kernels under Triton's interpreter on CPU, forward and backward, against the reference.

Outputs are allocated through a NaN-poisoned ``torch.empty``, so a tile a kernel forgets to write fails.
Attention is compared with the reference given the same block indices (both see the same selection);
the computed top-n is checked for exactness separately.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nsa_core.config import NSAConfig
from nsa_core.ops.reference import nsa_reference, select_blocks, selection_attention
from tests.nsa_kernels._helpers import make_inputs, rel_err, small_config

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="interpreter tier; on a CUDA machine test_nsa_gpu.py runs the compiled kernels"
)

TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}

# (B, T, HKV, G, D, dtype, config overrides, cu_seqlens)
CASES = [
    pytest.param(1, 97, 2, 1, 32, torch.bfloat16, {}, None, id="G1-T97"),
    pytest.param(2, 64, 1, 2, 32, torch.bfloat16, {}, None, id="G2-T64-B2"),
    pytest.param(1, 130, 1, 4, 64, torch.float16, {"num_selected": 3}, None, id="G4-T130-fp16-n3"),
    pytest.param(1, 111, 1, 7, 32, torch.bfloat16, {}, None, id="G7-T111"),
    pytest.param(
        1, 150, 2, 7, 64, torch.bfloat16, {"num_selected": 6, "window": 33}, [0, 37, 37, 150], id="G7-varlen-empty-seq"
    ),
    pytest.param(
        1,
        90,
        1,
        7,
        32,
        torch.bfloat16,
        {"compress_block": 32, "compress_stride": 16, "select_block": 32, "num_selected": 3},
        None,
        id="G7-overlap-32-16-32",
    ),
    pytest.param(
        1,
        300,
        1,
        7,
        32,
        torch.bfloat16,
        {"compress_block": 4, "compress_stride": 4, "select_block": 16, "window": 160},
        [0, 21, 300],
        id="G7-cmp-unmasked-steps",
    ),
    pytest.param(1, 75, 1, 8, 32, torch.bfloat16, {"num_selected": 7}, None, id="G8-T75-n>blocks"),
    pytest.param(1, 70, 1, 16, 16, torch.bfloat16, {"forced_initial": 2, "forced_local": 1}, None, id="G16-T70"),
]


def _run(q, k, v, g, config, cu_seqlens, block_indices=None):
    from nsa_kernels.backend import forward

    return forward(q, k, v, g, config, cu_seqlens=cu_seqlens, block_indices=block_indices, return_aux=True)


def _assert_grads_match(o, ref, inputs, tol=2e-2):
    """Gradients of ``o`` and of the reference output for one random dO, within ``tol`` relative error."""
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, inputs, do)
    ref_grads = torch.autograd.grad(ref, inputs, do)
    for name, got, want in zip(("dq", "dk", "dv", "dgates"), grads, ref_grads, strict=True):
        assert rel_err(got, want) < tol, name


@pytest.mark.parametrize(("B", "T", "HKV", "G", "D", "dtype", "overrides", "cu"), CASES)
def test_forward_backward_match_reference(B, T, HKV, G, D, dtype, overrides, cu, poison_empty):
    config = small_config(**overrides)
    cu_seqlens = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    q, k, v, g = make_inputs(B, T, HKV, G, D, dtype)
    o, aux = _run(q, k, v, g, config, cu_seqlens)
    ref_o, ref_aux = nsa_reference(q, k, v, g, config, cu_seqlens=cu_seqlens, block_indices=aux.block_indices,
                                   return_aux=True)  # fmt: skip
    tol = TOL[dtype]
    assert not o.isnan().any()
    assert rel_err(o, ref_o) < tol
    for branch in config.branches:
        assert rel_err(aux.outputs[branch], ref_aux.outputs[branch]) < tol, branch
        assert rel_err(aux.lse[branch], ref_aux.lse[branch]) < 1e-3, branch
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v, g), do)
    ref_grads = torch.autograd.grad(ref_o, (q, k, v, g), do)
    for name, got, want in zip(("dq", "dk", "dv", "dgates"), grads, ref_grads, strict=True):
        assert not got.isnan().any(), name
        assert rel_err(got, want) < tol, name


@pytest.mark.parametrize(("B", "T", "HKV", "G", "D", "dtype", "overrides", "cu"), CASES[3:7])
def test_selection_is_exact_top_n_of_reference_scores(B, T, HKV, G, D, dtype, overrides, cu):
    """Every chosen block scores at least as high (reference scores, up to rounding) as every block left out."""
    config = small_config(**overrides)
    cu_seqlens = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    q, k, v, g = make_inputs(B, T, HKV, G, D, dtype)
    with torch.no_grad():
        _, aux = _run(q, k, v, g, config, cu_seqlens)
        _, ref_aux = nsa_reference(q, k, v, g, config, cu_seqlens=cu_seqlens, return_aux=True)
    assert rel_err(aux.block_scores, ref_aux.block_scores) < 2e-2
    scores = ref_aux.block_scores.double()
    NS = scores.shape[-1]
    chosen = (aux.block_indices.long()[..., :, None] == torch.arange(NS)).any(-2)
    t = torch.arange(T)
    if cu_seqlens is not None:
        t = t - cu_seqlens[:-1].repeat_interleave(cu_seqlens.diff())
    current = (t // config.select_block)[None, :, None, None]
    j = torch.arange(NS)
    visible = j <= current
    forced = visible & ((j < config.forced_initial) | (j > current - config.forced_local))
    assert (chosen <= visible).all()
    assert (forced <= chosen).all()
    count = chosen.sum(-1)
    assert (count == torch.minimum(visible.sum(-1), torch.tensor(config.num_selected))).all()
    free = chosen & ~forced
    lowest_chosen = torch.where(free, scores, torch.inf).amin(-1)
    highest_left = torch.where(visible & ~chosen, scores, -torch.inf).amax(-1)
    assert (highest_left <= lowest_chosen + 2e-2 * scores.amax(-1)).all()


@pytest.mark.parametrize("n", [1, 3, 5, 8])
def test_select_topk_equals_reference_on_scores_with_ties(n):
    from nsa_kernels.topk import select_topk

    config = small_config(num_selected=n, forced_initial=1, forced_local=0 if n == 1 else 2)
    T, HKV, NS = 100, 2, 7
    scores = torch.randint(0, 4, (1, T, HKV, NS)).float() / 4
    want = select_blocks(scores, config)
    got = select_topk(scores[0], torch.arange(T), num_selected=n, select_block=16,
                      forced_initial=config.forced_initial, forced_local=config.forced_local)  # fmt: skip
    assert torch.equal(got, want[0])


@pytest.mark.parametrize("rows_per_program", [1, 4])
@pytest.mark.parametrize("n", [5, 32])
@pytest.mark.parametrize("spread", ["close", "octaves", "outlier"])
@pytest.mark.parametrize("compact", [0, 16, 64])
def test_select_topk_equals_reference_on_close_scores(n, rows_per_program, spread, compact):
    """Near-uniform scores, some tied: many passes before the n-th pattern stands apart, and ties at it; one row
    per program or four (the search runs until every row of the program is decided). ``octaves``: scores over two
    octaves with many exactly at the powers of two, so the n-th largest may sit on an octave's edge; ``outlier``:
    one score per row far above the rest, so the search cannot start inside the top octave. ``compact``: the search
    ends on rows compacted to that many patterns (16 is below n = 32's power of two, so there it stays off)."""
    from nsa_kernels.topk import select_topk

    config = small_config(num_selected=n)
    gen = torch.Generator().manual_seed(n)
    T, HKV, NS = 16 * 200 + 40, 2, 200
    scores = (7e-3 * (1 + 0.15 * torch.randn(1, T, HKV, NS, generator=gen))).abs()
    if spread == "octaves":
        scores = 2 ** -torch.randint(0, 3, (1, T, HKV, NS), generator=gen).float() * (1 - 0.3 * scores / 7e-3).clamp(0)
        scores[..., 3::11] = 0.5
    elif spread == "outlier":
        scores[..., 7] = 1.0
    scores[..., 1::9] = scores[..., :1]
    rows = torch.cat([torch.arange(0, 600, 60), torch.randint(600, T, (40,), generator=gen)])
    want = select_blocks(scores, config)[0, rows]
    got = select_topk(scores[0, rows], rows, num_selected=n, select_block=16,
                      rows_per_program=rows_per_program, compact=compact,
                      forced_initial=config.forced_initial, forced_local=config.forced_local)  # fmt: skip
    assert torch.equal(got, want)


def test_backward_is_deterministic():
    config = small_config()
    q, k, v, g = make_inputs(1, 80, 1, 7, 32, torch.bfloat16)
    o, _ = _run(q, k, v, g, config, None)
    do = torch.randn_like(o)
    first = torch.autograd.grad(o, (q, k, v, g), do, retain_graph=True)
    second = torch.autograd.grad(o, (q, k, v, g), do)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_gradients_flow_through_the_output_only():
    config = small_config()
    q, k, v, g = make_inputs(1, 40, 1, 7, 32, torch.bfloat16)
    o, aux = _run(q, k, v, g, config, None)
    assert torch.autograd.grad(aux.outputs["cmp"].float().sum(), (q, k, v, g), allow_unused=True) == (None,) * 4
    o, aux = _run(q, k, v, g, config, None)
    dq = torch.autograd.grad(o.float().sum() + aux.outputs["swd"].float().sum(), q)[0]
    assert torch.equal(dq, torch.autograd.grad(_run(q, k, v, g, config, None)[0].float().sum(), q)[0])


def test_single_branches_and_given_indices(poison_empty):
    q, k, v, g = make_inputs(1, 60, 1, 7, 32, torch.bfloat16)
    for branches in (("cmp",), ("slc",), ("swd",), ("cmp", "swd"), ("cmp", "slc")):
        config = small_config(branches=branches)
        o, aux = _run(q, k, v, g, config, None)
        ref = nsa_reference(q, k, v, g, config, block_indices=aux.block_indices)
        assert rel_err(o, ref) < 2e-2, branches
        grads = torch.autograd.grad(o, (q, k, v, g), torch.ones_like(o))
        ref_grads = torch.autograd.grad(ref, (q, k, v, g), torch.ones_like(o))
        for got, want in zip(grads, ref_grads, strict=True):
            assert rel_err(got, want) < 2e-2, branches


def test_torch_compile_traces_around_the_custom_op():
    from nsa_kernels import nsa_func

    q, k, v, g = make_inputs(1, 40, 1, 7, 16, torch.bfloat16)
    kwargs = dict(compress_block=16, compress_stride=16, select_block=16, num_selected=3, window=20)

    def layer(q, k, v, g):
        return (nsa_func(q * 2, k, v, g, **kwargs) + 1).sum()

    eager = layer(q, k, v, g)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(q, k, v, g)
    torch.testing.assert_close(compiled, eager)


def test_bad_arguments_raise_value_error():
    from nsa_kernels import nsa_func

    q, k, v, g = make_inputs(1, 16, 1, 7, 16, torch.bfloat16)
    with pytest.raises(ValueError, match="select_block"):
        nsa_func(q, k, v, g, select_block=256)
    with pytest.raises(ValueError, match="branches"):
        nsa_func(q, k, v, g, branches=("dense",))
    with pytest.raises(ValueError, match=r"scale=-0\.5 must be a positive"):
        nsa_func(q, k, v, g, scale=-0.5)
    with pytest.raises(ValueError, match="q must be a bf16 or fp16 tensor"):
        nsa_func(q.float(), k, v, g)
    with pytest.raises(ValueError, match=r"k has dtype torch\.float32 but q has torch\.bfloat16; cast them"):
        nsa_func(q, k.float(), v, g)
    with pytest.raises(ValueError, match=r"k and v must both be \[B=1, T=16, HKV, D=16\]"):
        nsa_func(q, k, v[:, :8], g)
    with pytest.raises(ValueError, match=r"gates must be \[B, T, HQ, 3\]"):
        nsa_func(q, k, v, g[..., :2])
    with pytest.raises(ValueError, match="k is on meta but q is on cpu; move them to one device"):
        nsa_func(q, k.to("meta"), v, g)
    with pytest.raises(ValueError, match="q has 7 heads, not a multiple of the 0 KV heads"):
        nsa_func(q, k[:, :, :0], v[:, :, :0], g)
    T = 2**24
    huge_q, huge_kv, huge_g = (torch.zeros(1, 1, h, 16, dtype=torch.bfloat16).expand(1, T, h, 16) for h in (7, 1, 7))
    with pytest.raises(ValueError, match=r"reaches 2\^31.*fewer than 16777216"):
        nsa_func(huge_q, huge_kv, huge_kv, huge_g[..., :3], num_selected=128)


def test_triton_backend_is_registered():
    from nsa_core.ops.backends import available_backends

    backend = available_backends()["triton"]
    assert backend.priority > 0
    assert not backend.supports(torch.device("cpu"), torch.bfloat16)
    assert backend.supports(torch.device("cuda"), torch.bfloat16)
    assert isinstance(NSAConfig(), NSAConfig)


@pytest.mark.parametrize(
    ("algo", "fwd_item", "bwd_item", "range_tokens", "dq_fp32", "halves", "prefetch", "dkv_elems"),
    [
        ("block", 5, 10, 17, True, False, True, 0),
        ("block", 7, 3, 17, False, True, False, 2**30),
        ("block", 9, 4, 17, False, True, False, 160_000),
        ("block", 40, 1152, 120, False, True, True, 2**30),
        ("tile", 288, 1152, 17, True, True, False, 0),
    ],
)
def test_selection_algorithms_and_work_items(
    algo, fwd_item, bwd_item, range_tokens, dq_fp32, halves, prefetch, dkv_elems, monkeypatch, poison_empty
):
    """Block-outer selection split into small work items and token ranges (dQ partials fp32 or bf16; partial
    outputs and dQ whole or in D halves; query rows prefetched by hand over work items of five steps, or by Triton's
    pipeliner; the dK/dV partials reduced per token range, for all ranges at once, or in groups of three ranges),
    and the tile-outer kernels."""
    from nsa_kernels import nsa

    monkeypatch.setitem(nsa.SELECTION, "algo", algo)
    tune = {"fwd_item": fwd_item, "bwd_item": bwd_item, "partial_elems": 14 * 4 * 32 * range_tokens,
            "dq_partials_fp32": dq_fp32, "bwd_dq_halves": halves, "fwd_o_halves": halves,
            "fwd_prefetch": prefetch, "bwd_dkv_partial_elems": dkv_elems}  # fmt: skip
    monkeypatch.setitem(nsa.TUNING, "slc_block", {**nsa.TUNING["slc_block"], **tune})
    config = small_config(num_selected=4, window=33)
    cu_seqlens = torch.tensor([0, 37, 37, 120], dtype=torch.int32)
    q, k, v, g = make_inputs(1, 120, 2, 7, 32, torch.bfloat16)
    o, aux = _run(q, k, v, g, config, cu_seqlens)
    ref = nsa_reference(q, k, v, g, config, cu_seqlens=cu_seqlens, block_indices=aux.block_indices)
    assert rel_err(o, ref) < 2e-2
    _assert_grads_match(o, ref, (q, k, v, g))


def _local_selection_case():
    """The selection case of the local-block tests: 4 selections of 16-token blocks over sequences of 37, 0 and 83
    tokens (G = 7, D = 32, bf16), with the top-n the kernels compute. Returns ``(config, lens, (q, k, v, gates) packed
    and detached, the common keyword arguments of selection_fwd / selection_bwd)``."""
    from nsa_kernels import nsa
    from nsa_kernels.selection import selection_plan

    config = small_config(num_selected=4, window=40)
    lens = [37, 0, 83]
    cu = torch.tensor([0, 37, 37, 120], dtype=torch.int32)
    inputs = make_inputs(1, 120, 2, 7, 32, torch.bfloat16)
    with torch.no_grad():
        idx = _run(*inputs, config, cu)[1].block_indices
    geometry = {name: getattr(config, name) for name in nsa.GEOMETRY_KEYS}
    plan = nsa._Plans(cu, lens, 14, 2, geometry)(nsa.TUNING["slc_block"]["block_m"])
    sel = selection_plan(plan, idx[0].to(torch.int32).contiguous(), config.select_block)
    kw = dict(plan=plan, sel=sel, scale=config.softmax_scale(32), select_block=config.select_block)
    return config, lens, tuple(x.detach()[0] for x in inputs), kw


def _local_partials(q, k, v, lens, config):
    """Each row's attention over its token's ``forced_local`` most recent selection blocks alone (normalised output,
    base-2 LSE), what the Gluon window forward emits (``attention.branch_fwd(local=...)``): the reference's selection
    attention on those blocks, sequence by sequence, in float32."""
    outs, lses, start = [], [], 0
    for n in filter(None, lens):
        blocks = (torch.arange(n) // config.select_block)[:, None] - torch.arange(config.forced_local)
        idx = torch.where(blocks >= 0, blocks, -1)[None, :, None].expand(1, n, k.shape[1], -1)
        o, lse = selection_attention(*(x[None, start : start + n].float() for x in (q, k, v)), idx, config)
        outs.append(o[0])
        lses.append(lse[0] * 1.4426950408889634)
        start += n
    return torch.cat(outs).to(q.dtype), torch.cat(lses).contiguous()


@pytest.mark.parametrize("range_tokens", [0, 20], ids=["one-range", "ranges-of-20"])
def test_selection_forward_takes_the_local_blocks_from_their_partial(range_tokens, poison_empty):
    """``selection_fwd(local=...)`` (the path of ``fwd_local_in_window``) leaves each token's two local blocks out of
    its work items and merge, and starts the merge from their given partial: the output and LSE equal the plain
    selection's to rounding, over varlen with an empty sequence and in token ranges; a partial of zeros with an LSE of
    -inf changes the output, so the local selections come from it alone."""
    from nsa_kernels.selection import selection_fwd

    config, lens, (q, k, v, _), kw = _local_selection_case()
    kw["partial_elems"] = 14 * 4 * 32 * range_tokens if range_tokens else 2**31
    o_plain, lse_plain = selection_fwd(q, k, v, **kw)
    o_loc, lse_loc = _local_partials(q, k, v, lens, config)
    o, lse = selection_fwd(q, k, v, local=(o_loc, lse_loc, config.forced_local), **kw)
    assert rel_err(o, o_plain) < 1e-2
    torch.testing.assert_close(lse, lse_plain, atol=1e-3, rtol=0)
    empty = (torch.zeros_like(o_loc), torch.full_like(lse_loc, float("-inf")), config.forced_local)
    assert rel_err(selection_fwd(q, k, v, local=empty, **kw)[0], o_plain) > 0.1


def _local_gradients(q, k, v, do, gates, lse, delta, lens, config):
    """The selection's gradients from each token's ``forced_local`` most recent blocks alone, what the window backward
    adds (``attention.branch_dkv`` / ``branch_dq`` ``local=``): with the full selection's LSE and delta held fixed,
    P = exp(S - lse) and dS = P·(g·dP - delta) are the gradients of Σ P·(g·dO·V) - delta·Σ P over those keys. In
    float64, sequence by sequence; ``(dq, dk, dv)``."""
    G = q.shape[1] // k.shape[1]
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    total, start = 0.0, 0
    for n in filter(None, lens):
        rows = slice(start, start + n)
        t = torch.arange(n)
        first = ((t // config.select_block - config.forced_local + 1) * config.select_block).clamp_min(0)
        local = (t[None, :] >= first[:, None]) & (t[None, :] <= t[:, None])
        kh, vh = (x[rows].repeat_interleave(G, 1) for x in (k, v))
        s = torch.einsum("thd,jhd->thj", q[rows], kh) * config.softmax_scale(q.shape[-1])
        p = torch.where(local[:, None, :], torch.exp(s - lse[rows, :, None].double()), 0.0)
        dp = torch.einsum("thd,jhd->thj", do[rows].double() * gates[rows, :, 1:2].double(), vh)
        total = total + (p * dp).sum() - (delta[rows].double() * p.sum(-1)).sum()
        start += n
    return torch.autograd.grad(total, (q, k, v))


def test_selection_backward_leaves_the_local_blocks_to_the_window(poison_empty):
    """``selection_bwd(local=...)`` (the path of ``bwd_local_in_window``) leaves each token's two local blocks out of
    its work items and dQ partials, in token ranges of 20 over varlen with an empty sequence: its dQ/dK/dV plus those
    blocks' gradients (:func:`_local_gradients`) equal the plain selection backward's, and without them they differ."""
    from nsa_kernels.selection import selection_bwd, selection_fwd

    config, lens, (q, k, v, g), kw = _local_selection_case()
    o, lse = selection_fwd(q, k, v, **kw)
    do = torch.randn_like(q)
    delta = g[..., 1].float() * (do.float() * o.float()).sum(-1)
    kw.update(accumulate_dq=False, partial_elems=14 * 4 * 32 * 20)

    def backward(local):
        dq = torch.empty(q.shape, dtype=torch.float32)
        dk, dv = selection_bwd(q, k, v, do, g, lse, delta, dq, local=local, **kw)
        return dq, dk[0], dv[0]

    plain, skipped = backward(0), backward(config.forced_local)
    added = _local_gradients(q, k, v, do, g, lse, delta, lens, config)
    for name, want, got, extra in zip(("dq", "dk", "dv"), plain, skipped, added, strict=True):
        assert rel_err(got + extra, want) < 1e-2, name
        assert rel_err(got, want) > 0.05, name


def test_local_coefficients_and_their_exact_flag(poison_empty):
    """``attention.local_coefficients``: per row ratio = exp(lse_swd - lse_slc) times the selection's gate and delta,
    and the flag that sends the window backward to the selection's own exponentials, raised by one row whose ratio
    passes ``LOCAL_RATIO_MAX`` (whose coefficients are then 0) and by no other."""
    from nsa_kernels.attention import LOCAL_RATIO_MAX, local_coefficients

    gen = torch.Generator().manual_seed(3)
    lse_swd, lse_slc, delta = (torch.randn(1500, 7, generator=gen) * 4 for _ in range(3))
    gates = torch.rand(1500, 7, 3, generator=gen).to(torch.bfloat16)
    _, _, coef_a, coef_b, exact = local_coefficients(lse_swd, lse_slc, gates, delta)
    ratio = torch.exp(lse_swd - lse_slc)
    torch.testing.assert_close(coef_a, ratio * gates[..., 1].float(), rtol=1e-5, atol=0)
    torch.testing.assert_close(coef_b, ratio * delta, rtol=1e-5, atol=0)
    assert exact.tolist() == [0]
    lse_swd[1234, 5] = lse_slc[1234, 5] + math.log(LOCAL_RATIO_MAX) + 1
    _, _, coef_a, coef_b, exact = local_coefficients(lse_swd, lse_slc, gates, delta)
    assert exact.tolist() == [1]
    assert coef_a[1234, 5] == 0 and coef_b[1234, 5] == 0


def test_selection_ranges_cut_at_query_tiles():
    """The backward's token ranges, when the compression dQ adds their dQ partials, start at its query tiles: every
    cut is a tile's first token (or N), with that tile's index in the tile table, over varlen with empty sequences."""
    from nsa_kernels.index import tile_at, tile_table
    from nsa_kernels.selection import _tile_cuts

    lens = [0, 37, 0, 20, 83]
    cu = torch.tensor([0, 0, 37, 37, 57, 140], dtype=torch.int32)
    _, tile_start = tile_table(cu, 9, lens)
    starts = tile_start.tolist()
    assert tile_at(lens, 9, 0) == (0, 0)
    assert tile_at(lens, 9, 40) == (starts.index(37), 37)
    assert tile_at(lens, 9, 140) == (len(starts), 140)
    for step in (1, 5, 17, 200):
        cuts, tiles = _tile_cuts(lens, 140, step, 9)
        assert cuts[0] == 0 and cuts[-1] == 140 and cuts == sorted(set(cuts))
        assert all(starts[tile] == cut for cut, tile in zip(cuts[:-1], tiles[:-1], strict=True))
        assert tiles[-1] == len(starts)
        assert all(b - a < step + 9 for a, b in itertools.pairwise(cuts))
    assert _tile_cuts(lens, 140, 1, 9)[0] == [0, *starts[1:], 140]


def test_backward_ranges_split_kv_heads_only_where_that_saves_ranges():
    """KV heads per backward token range: as few as asked where that means fewer ranges, all of them where the
    partials of all heads fit as few ranges (one launch, as at short T), and always a divisor of HKV."""
    from nsa_kernels.selection import _range_heads

    def heads(N: int, wanted: int = 1, HKV: int = 4) -> int:
        return _range_heads(HKV, wanted, N, 10, 1000)

    assert heads(25) == 4
    assert heads(26) == 2 and heads(50) == 2
    assert heads(51) == 1 and heads(10_000) == 1
    assert heads(10_000, wanted=0) == 4
    assert heads(10_000, wanted=3) == 1
    assert heads(10_000, wanted=2) == 2
    assert heads(30, HKV=6) == 3 and heads(10_000, HKV=6) == 1
    assert heads(0) == 4


def test_dkv_partials_of_consecutive_ranges_are_grouped_within_the_budget():
    """Groups of token ranges whose dK/dV partials (those of all their head groups) fit the element budget; a range
    larger than it stands alone."""
    from nsa_kernels.selection import _dkv_groups

    sizes = (52, 52, 52, 52, 10, 400)
    ranges = [(i, 0, [(0, (torch.empty(n - n // 3),)), (1, (torch.empty(n // 3),))]) for i, n in enumerate(sizes)]

    def groups(budget: int) -> list[tuple[int, int]]:
        out = []
        for group, items in _dkv_groups(iter(ranges), 2, budget):
            assert items == sum(sizes[r[0]] for r in group)
            out.append((group[0][0], group[-1][0] + 1))
        return out

    assert groups(0) == [(i, i + 1) for i in range(6)]
    assert groups(2 * 156) == [(0, 3), (3, 5), (5, 6)]
    assert groups(2 * 1000) == [(0, 6)]


@pytest.mark.parametrize(
    ("algo", "fwd_item", "pregate", "bwd_block_m", "dq_in_cmp", "range_heads"),
    [
        ("block", 288, False, 64, True, 1),
        ("block", 6, True, 128, True, 1),
        ("block", 6, True, 128, True, 0),
        ("block", 6, False, 64, False, 1),
        ("block", 6, False, 64, False, 0),
        ("tile", 288, False, 64, True, 1),
    ],
)
def test_backward_settings_match_reference(
    algo, fwd_item, pregate, bwd_block_m, dq_in_cmp, range_heads, monkeypatch, poison_empty
):
    """Backward with dO gated per row in the kernels or once before them, 64- or 128-row selection steps,
    selection in 17-token ranges or one, its dQ partials added by the compression dQ or by their own reduction,
    the backward's ranges per KV head or over both; varlen with an empty sequence."""
    from nsa_kernels import nsa

    monkeypatch.setitem(nsa.SELECTION, "algo", algo)
    monkeypatch.setitem(nsa.TUNING, "pregate", dict.fromkeys(("cmp", "slc", "swd"), pregate))
    tune = {"bwd_block_m": bwd_block_m, "fwd_item": fwd_item, "bwd_dq_in_cmp": dq_in_cmp,
            "bwd_range_heads": range_heads}  # fmt: skip
    if fwd_item < 100:
        tune["partial_elems"] = 14 * 4 * 5 * 17
    monkeypatch.setitem(nsa.TUNING, "slc_block", {**nsa.TUNING["slc_block"], **tune})
    config = small_config(num_selected=5, window=33)
    cu_seqlens = torch.tensor([0, 41, 41, 133], dtype=torch.int32)
    q, k, v, g = make_inputs(1, 133, 2, 7, 32, torch.bfloat16)
    o, aux = _run(q, k, v, g, config, cu_seqlens)
    ref, ref_aux = nsa_reference(q, k, v, g, config, cu_seqlens=cu_seqlens, block_indices=aux.block_indices,
                                 return_aux=True)  # fmt: skip
    assert rel_err(o, ref) < 2e-2
    assert torch.allclose(aux.lse["slc"], ref_aux.lse["slc"], atol=2e-2, rtol=0)
    _assert_grads_match(o, ref, (q, k, v, g))


@pytest.mark.parametrize(
    "cmp_dkv",
    [{"block_n": 128, "num_warps": 8, "span": 0}, {"block_n": 16, "num_warps": 4, "span": 13}],
    ids=["keys128", "keys16-span13"],
)
def test_compression_dkv_tiles_and_token_chunks(cmp_dkv, monkeypatch, poison_empty):
    """Compression dK/dV with 128- and 16-key programs, equal shares or 13-token chunks, varlen."""
    from nsa_kernels import nsa

    monkeypatch.setitem(nsa.TUNING, "cmp_dkv", cmp_dkv)
    config = small_config(compress_block=8, compress_stride=4, window=33)
    cu_seqlens = torch.tensor([0, 37, 37, 150], dtype=torch.int32)
    q, k, v, g = make_inputs(1, 150, 2, 7, 32, torch.bfloat16)
    o, aux = _run(q, k, v, g, config, cu_seqlens)
    ref = nsa_reference(q, k, v, g, config, cu_seqlens=cu_seqlens, block_indices=aux.block_indices)
    _assert_grads_match(o, ref, (q, k, v, g))


def test_tuning_overrides_from_the_environment(monkeypatch):
    from nsa_kernels import nsa

    monkeypatch.setattr(nsa, "TUNING", {"swd": {"num_warps": 4, "block_m": 64}})
    monkeypatch.setenv("NSA_KERNELS_TUNING", '{"swd": {"num_warps": 8}}')
    nsa._tuning_from_env()
    assert nsa.TUNING == {"swd": {"num_warps": 8, "block_m": 64}}
    monkeypatch.setenv("NSA_KERNELS_TUNING", '{"swd": 8}')
    with pytest.raises(ValueError, match="'swd' must be one of"):
        nsa._tuning_from_env()
    monkeypatch.setenv("NSA_KERNELS_TUNING", "{swd")
    with pytest.raises(ValueError, match="NSA_KERNELS_TUNING is not JSON"):
        nsa._tuning_from_env()


def test_phase_tuning_overrides_one_phase():
    from nsa_kernels import nsa

    tune = {"num_warps": 4, "bwd_num_warps": 8, "fwd_item": 3, "bwd_item": 5, "partial_elems": 7}
    original = nsa.TUNING["slc_block"]
    nsa.TUNING["slc_block"] = tune
    try:
        assert nsa._phase_tuning("fwd") == {"num_warps": 4, "item": 3, "partial_elems": 7}
        assert nsa._phase_tuning("bwd") == {"num_warps": 8, "item": 5, "partial_elems": 7}
    finally:
        nsa.TUNING["slc_block"] = original


def test_branch_tuning_takes_the_gluon_launch_parameters_only_where_they_apply(monkeypatch):
    from nsa_kernels import attention, nsa

    q = torch.zeros(9, 7, 64, dtype=torch.bfloat16)
    assert not attention.async_applies(q)
    gluon = {"async": ["fwd", "dkv"], "async_block_m": 128, "async_num_warps": 8, "async_block_n": 32,
             "async_fwd_block_n": 48, "async_fwd_maxnreg": 200, "async_dkv_block_m": 192,
             "async_dkv_num_warps": 12, "async_dkv_tma": True, "async_dkv_keys": 128}  # fmt: skip
    monkeypatch.setitem(nsa.TUNING, "cmp", {"block_m": 64, "num_warps": 4, "num_stages": 2, **gluon})
    triton_only = {"block_m": 64, "num_warps": 4, "num_stages": 2}
    assert nsa._branch_tuning("cmp", q, "fwd") == triton_only
    assert nsa._branch_tuning("cmp", q, "bwd") == triton_only
    monkeypatch.setattr(nsa, "async_applies", lambda q: True)
    fwd = {**triton_only, "block_m": 128, "num_warps": 8, "async_block_n": 48, "maxnreg": 200, "asynchronous": True}
    assert nsa._branch_tuning("cmp", q, "fwd") == fwd
    bwd = {
        **triton_only,
        "dkv_block_m": 192,
        "dkv_num_warps": 12,
        "async_dkv": True,
        "dkv_rows_tma": True,
        "dkv_keys": 128,
        "dkv_buffers": 2,
    }
    assert nsa._branch_tuning("cmp", q, "bwd") == bwd


def test_forward_rejects_zero_query_row_buffers(monkeypatch):
    from nsa_kernels import nsa

    monkeypatch.setitem(nsa.TUNING, "slc_block", {**nsa.TUNING["slc_block"], "fwd_async_buffers": 0})
    q, k, v, g = make_inputs(1, 40, 1, 7, 32, torch.bfloat16)
    with pytest.raises(ValueError, match="async_buffers must be at least 1"):
        _run(q, k, v, g, small_config(window=16), None)


def test_backward_reuses_the_forward_selection_csr(monkeypatch):
    """The backward takes the forward's selection CSR (one sort per step), and a plan from a reused CSR has the row
    count and key base of a fresh one (varlen with an empty sequence)."""
    from nsa_kernels import nsa, selection

    calls = []
    build = selection.selection_csr
    monkeypatch.setattr(selection, "selection_csr", lambda *a: calls.append(1) or build(*a))
    config = small_config(num_selected=4, window=33)
    cu_seqlens = torch.tensor([0, 37, 37, 120], dtype=torch.int32)
    q, k, v, g = make_inputs(1, 120, 2, 7, 32, torch.bfloat16)
    o, aux = _run(q, k, v, g, config, cu_seqlens)
    torch.autograd.grad(o, (q, k, v, g), torch.randn_like(o))
    assert len(calls) == 1

    plan = nsa._plan(cu_seqlens, 14, 2, nsa._geometry([16, 16, 16, 4, 1, 2, 33]), 64, [37, 0, 83])
    indices = aux.block_indices.reshape(120, 2, -1).to(torch.int32)
    fresh = selection.selection_plan(plan, indices, config.select_block)
    reused = selection.selection_plan(plan, indices, config.select_block, (fresh["entries"], fresh["key"]))
    assert (reused["rows"], reused["big"]) == (fresh["rows"], fresh["big"]) == (2 * (3 + 6), 120)


def test_top_n_in_token_chunks_equals_one_chunk(monkeypatch):
    """Importance and top-n run chunk by chunk of tokens (one tile per chunk here, varlen with an empty sequence)
    and choose the same blocks, with the same scores, as in one chunk."""
    from nsa_kernels import nsa

    config = small_config(num_selected=4, window=33)
    cu_seqlens = torch.tensor([0, 37, 37, 120], dtype=torch.int32)
    q, k, v, g = make_inputs(1, 120, 2, 7, 32, torch.bfloat16)
    with torch.no_grad():
        _, whole = _run(q, k, v, g, config, cu_seqlens)
        monkeypatch.setitem(nsa.TUNING, "topk", {**nsa.TUNING["topk"], "chunk_elems": 1})
        _, chunked = _run(q, k, v, g, config, cu_seqlens)
    assert torch.equal(chunked.block_indices, whole.block_indices)
    assert torch.equal(chunked.block_scores, whole.block_scores)


def test_plans_are_reused_across_calls_of_one_layout(monkeypatch):
    """Index tables are built once per (lengths, heads, geometry, rows) and then reused; the cache keeps the most
    recent layouts only, and each call's plan carries that call's own ``cu_seqlens``."""
    from nsa_kernels import nsa

    monkeypatch.setattr(nsa, "_plan_cache", nsa.OrderedDict())
    monkeypatch.setattr(nsa, "PLAN_CACHE_SIZE", 2)
    built = []
    monkeypatch.setattr(nsa, "_plan", lambda *args: built.append(args[-1]) or {"lens": args[-1]})
    geometry = nsa._geometry([16, 16, 16, 4, 1, 2, 33])
    cu = torch.tensor([0, 37, 37, 120], dtype=torch.int32)
    first = nsa._Plans(cu, [37, 0, 83], 14, 2, geometry)(64)
    again = nsa._Plans(cu.clone(), [37, 0, 83], 14, 2, geometry)
    assert again(64)["cu_seqlens"] is again.cu and first["cu_seqlens"] is cu
    assert built == [[37, 0, 83]]
    nsa._Plans(cu, [37, 0, 83], 14, 2, geometry)(128)
    nsa._Plans(cu, [120], 14, 2, geometry)(64)
    assert len(built) == 3 and len(nsa._plan_cache) == 2
    nsa._Plans(cu, [37, 0, 83], 14, 2, geometry)(64)
    assert len(built) == 4


def test_tables_of_a_layout_are_built_once(monkeypatch):
    """The tables that depend on the sequence lengths alone (tiles, positions, block offsets, pooled-key positions,
    the work-item units of the token ranges) are built on the first call of a layout and reused by the next forward
    and backward, which give the same result.
    """
    from nsa_kernels import index, nsa, pool, selection, topk

    monkeypatch.setattr(nsa, "_plan_cache", nsa.OrderedDict())
    calls = []

    def counting(module, name):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args, **kw: calls.append(name) or original(*args, **kw))

    for module, name in [(index, "positions"), (index, "tile_table"), (pool, "positions"), (pool, "tile_table"),
                         (topk, "positions"), (topk, "tile_table"), (selection, "token_block_offsets"),
                         (selection, "_unit_table")]:  # fmt: skip
        counting(module, name)
    config = small_config(num_selected=4, window=33)
    cu_seqlens = torch.tensor([0, 37, 37, 120], dtype=torch.int32)
    q, k, v, g = make_inputs(1, 120, 2, 7, 32, torch.bfloat16)
    results, built = [], []
    for _ in range(2):
        calls.clear()
        o, _ = _run(q, k, v, g, config, cu_seqlens)
        o.float().square().sum().backward()
        results.append((o.detach(), *(x.grad.clone() for x in (q, k, v, g))))
        for x in (q, k, v, g):
            x.grad = None
        built.append(sorted(set(calls)))
    assert built[0] == ["_unit_table", "positions", "tile_table", "token_block_offsets"] and built[1] == []
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))

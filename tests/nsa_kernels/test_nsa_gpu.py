"""Compiled kernels on a CUDA GPU: the interpreter cases, then VideoNSA geometry up to T = 16K in bf16.

Accuracy follows FlashAttention's rule: the kernel's error against a float64 reference must be at most
twice the error of the same reference math run in bf16 (plus a small absolute slack for near-zero errors).
Both references are given the kernel's block indices, so they see the same selection.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from nsa_core.config import NSAConfig
from nsa_core.ops.reference import (
    compress_kv,
    compression_attention,
    nsa_reference,
    selection_attention,
    window_attention,
)
from tests.nsa_kernels._helpers import make_inputs, rel_err, small_config
from tests.nsa_kernels.test_nsa_interpret import CASES

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VIDEONSA = NSAConfig()
TRITON_BLOCK_KERNELS = {"fwd_async_gathers": False, "bwd_async_gathers": False}


def _forward(q, k, v, g, config, cu_seqlens=None, block_indices=None):
    from nsa_kernels.backend import forward

    return forward(q, k, v, g, config, cu_seqlens=cu_seqlens, block_indices=block_indices, return_aux=True)


def _reference_in_dtype(q, k, v, g, config, block_indices, bounds):
    """The reference branches run in the inputs' own dtype (no float32 upcast): the 'PyTorch in bf16' error.
    ``bounds``: the packed sequences' token offsets, each sequence run on its own."""
    pieces = []
    for a, b in itertools.pairwise(bounds):
        if b == a:
            continue
        qs, ks, vs, gs = q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b]
        k_cmp, v_cmp = compress_kv(ks, vs, config)
        o_cmp, _ = compression_attention(qs, k_cmp, v_cmp, config)
        o_slc, _ = selection_attention(qs, ks, vs, block_indices[:, a:b], config)
        o_swd, _ = window_attention(qs, ks, vs, config)
        pieces.append(gs[..., 0:1] * o_cmp + gs[..., 1:2] * o_slc + gs[..., 2:3] * o_swd)
    return torch.cat(pieces, 1)


def _assert_flash_attention_rule(q, k, v, g, config, cu=None, backward=True):
    """Output (and with ``backward`` dQ/dK/dV/dgates) of the kernels against a float64 reference: at most twice the
    error of the reference run in the inputs' dtype; ``cu``: packed sequence offsets (a list) or None."""
    cu_seqlens = None if cu is None else torch.tensor(cu, dtype=torch.int32, device="cuda")
    o, aux = _forward(q, k, v, g, config, cu_seqlens)
    idx = aux.block_indices
    with torch.set_grad_enabled(backward):
        ref64 = nsa_reference(*(x.double() for x in (q, k, v, g)), config, cu_seqlens=cu_seqlens, block_indices=idx)
        ref16 = _reference_in_dtype(q, k, v, g, config, idx, [0, q.shape[1]] if cu is None else cu)
    assert rel_err(o, ref64) <= 2 * rel_err(ref16, ref64) + 1e-4
    if not backward:
        return
    do = torch.randn_like(o)
    got = torch.autograd.grad(o, (q, k, v, g), do)
    want64 = torch.autograd.grad(ref64, (q, k, v, g), do.double())
    want16 = torch.autograd.grad(ref16, (q, k, v, g), do)
    for name, a, b, c in zip(("dq", "dk", "dv", "dgates"), got, want64, want16, strict=True):
        assert rel_err(a, b) <= 2 * rel_err(c, b) + 1e-4, name


@pytest.mark.parametrize(("B", "T", "HKV", "G", "D", "dtype", "overrides", "cu"), CASES)
def test_small_cases_match_reference(B, T, HKV, G, D, dtype, overrides, cu, poison_empty):
    config = small_config(**overrides)
    cu_seqlens = None if cu is None else torch.tensor(cu, dtype=torch.int32, device="cuda")
    q, k, v, g = make_inputs(B, T, HKV, G, D, dtype, device="cuda")
    o, aux = _forward(q, k, v, g, config, cu_seqlens)
    ref = nsa_reference(q, k, v, g, config, cu_seqlens=cu_seqlens, block_indices=aux.block_indices)
    assert rel_err(o, ref) < 2e-2
    do = torch.randn_like(o)
    for got, want in zip(
        torch.autograd.grad(o, (q, k, v, g), do), torch.autograd.grad(ref, (q, k, v, g), do), strict=True
    ):
        assert rel_err(got, want) < 2e-2


@pytest.mark.parametrize(
    ("T", "HKV", "backward"),
    [
        pytest.param(1000, 2, True, id="T1000-HQ14"),
        pytest.param(4096, 1, True, id="T4096-HQ7"),
        pytest.param(8192, 1, True, id="T8192-HQ7"),
        pytest.param(16384, 2, False, id="T16384-HQ14-fwd"),
    ],
)
@pytest.mark.parametrize("dq_fp32", [True, False], ids=["dq-part-fp32", "dq-part-bf16"])
def test_videonsa_geometry_flash_attention_rule(T, HKV, backward, dq_fp32, monkeypatch):
    from nsa_kernels import nsa

    if not backward and not dq_fp32:
        pytest.skip("dQ partials only exist in the backward")
    monkeypatch.setitem(nsa.TUNING, "slc_block", {**nsa.TUNING["slc_block"], "dq_partials_fp32": dq_fp32})
    q, k, v, g = make_inputs(1, T, HKV, 7, 128, torch.bfloat16, device="cuda")
    _assert_flash_attention_rule(q, k, v, g, VIDEONSA, backward=backward)


@pytest.mark.parametrize(
    "cmp_dkv",
    [{"block_n": 128, "num_warps": 8, "span": 0}, {"block_n": 128, "num_warps": 8, "span": 1024},
     {"block_n": 64, "num_warps": 4, "span": 1024}],
    ids=["keys128", "keys128-span1024", "keys64-span1024"],
)  # fmt: skip
def test_compression_dkv_settings_flash_attention_rule(cmp_dkv, monkeypatch):
    from nsa_kernels import nsa

    monkeypatch.setitem(nsa.TUNING, "cmp_dkv", cmp_dkv)
    test_videonsa_geometry_flash_attention_rule(4096, 1, True, False, monkeypatch)


@pytest.mark.parametrize(
    ("pregate", "slc_block"),
    [
        (False, {"bwd_block_m": 64, "bwd_num_warps": 4}),
        (True, {"bwd_block_m": 64, "bwd_num_warps": 4}),
        (True, {"bwd_dq_halves": False, "fwd_o_halves": False, **TRITON_BLOCK_KERNELS}),
        (True, TRITON_BLOCK_KERNELS),
        (True, {"bwd_dq_in_cmp": False, "partial_elems": 2**24}),
        (True, {"bwd_range_heads": 0, "partial_elems": 2**22}),
        (True, {"partial_elems": 2**22}),
    ],
    ids=[
        "ungated-dO-bwd-64rows-4warps",
        "pregated-dO-bwd-64rows-4warps",
        "whole-partials",
        "triton-block-kernels",
        "selection-dq-reduction",
        "short-ranges-over-all-heads",
        "short-ranges-per-head",
    ],
)
def test_backward_settings_flash_attention_rule(pregate, slc_block, monkeypatch):
    """The non-default selection settings (the defaults are pregated dO, 128-row 8-warp backward steps, partial
    outputs and dQ in D halves, the dQ partials added by the compression dQ, backward token ranges per KV head, and
    on Hopper the forward and backward with asynchronous gathers, so the Triton block kernels run here only where they
    are asked for)."""
    from nsa_kernels import nsa

    monkeypatch.setitem(nsa.TUNING, "pregate", dict.fromkeys(("cmp", "slc", "swd"), pregate))
    monkeypatch.setitem(nsa.TUNING, "slc_block", {**nsa.TUNING["slc_block"], **slc_block})
    kv_heads = 2 if "partial_elems" in slc_block else 1
    test_videonsa_geometry_flash_attention_rule(4096, kv_heads, True, False, monkeypatch)


@pytest.mark.parametrize(
    ("entry", "settings"),
    [("cmp", {"async_dq_partial_buffers": 2}), ("cmp", {"async_dq_partial_buffers": 3}),
     ("swd", {"async_dq_in_cmp": False})],
    ids=["two-partial-buffers", "three-partial-buffers", "window-dq-apart"],
)  # fmt: skip
def test_compression_dq_settings_flash_attention_rule(entry, settings, monkeypatch):
    """The non-default settings of the Gluon compression dQ kernel, which by default also adds the window's dQ of its
    tiles and copies the selection's dQ partials into as many shared-memory tiles as fit (4 at D = 128)."""
    from nsa_kernels import nsa

    monkeypatch.setitem(nsa.TUNING, entry, {**nsa.TUNING[entry], **settings})
    q, k, v, g = make_inputs(1, 12288 + 37, 1, 7, 128, torch.bfloat16, device="cuda")
    _assert_flash_attention_rule(q, k, v, g, VIDEONSA)


def test_forward_backward_without_host_sync_and_in_a_cuda_graph():
    """No device sync on the hot path (sync debug mode 'error'), and one captured CUDA graph of forward +
    backward replays to the eager results bit for bit on new inputs."""
    from nsa_kernels import nsa_func

    kw = dict(compress_block=64, compress_stride=64, select_block=64, num_selected=16, window=256)
    static = [x.detach().requires_grad_() for x in make_inputs(1, 2048, 2, 7, 128, torch.bfloat16, device="cuda")]
    do = torch.randn(1, 2048, 14, 128, device="cuda", dtype=torch.bfloat16)

    def step():
        o = nsa_func(*static, **kw)
        return (o, *torch.autograd.grad(o, static, do))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    fresh = make_inputs(1, 2048, 2, 7, 128, torch.bfloat16, device="cuda", seed=1)
    with torch.no_grad():
        for x, y in zip(static, fresh, strict=True):
            x.copy_(y)
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    for a, b in zip(captured, eager, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("T", "HKV", "G", "D", "cu", "pregate", "dtype", "slc_block"),
    [
        pytest.param(1000, 2, 7, 128, None, True, torch.bfloat16, {}, id="G7-T1000-pregated"),
        pytest.param(4096, 1, 7, 128, None, False, torch.bfloat16, {}, id="G7-T4096-gated-dO"),
        pytest.param(2500, 2, 7, 64, [0, 777, 777, 2500], True, torch.bfloat16, {}, id="G7-D64-varlen-empty-seq"),
        pytest.param(1531, 2, 1, 128, [0, 1531], True, torch.float16, {}, id="G1-T1531-fp16"),
        pytest.param(2049, 1, 16, 64, [0, 63, 2049], False, torch.bfloat16, {}, id="G16-D64-varlen-63"),
        pytest.param(3001, 1, 7, 128, [0, 1400, 3001], True, torch.bfloat16,
                     {"partial_elems": 2**22, "bwd_dkv_partial_elems": 2**21, "fwd_async_buffers": 3},
                     id="G7-varlen-token-ranges-3-buffers"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("bwd_kernel", ["async", "ws"])
def test_async_selection_flash_attention_rule(
    T, HKV, G, D, cu, pregate, dtype, slc_block, bwd_kernel, poison_empty, monkeypatch
):
    """The Hopper selection forward and backward with asynchronous row gathers, on awkward shapes, the backward's
    copies issued by its MMA warps or by a producer warpgroup (``ws``); the Triton block kernels and the other backward
    are made unusable, so a silent fallback fails the test. The last case runs ~20 token ranges (partials indexed
    from each range's first selection), dK/dV partials reduced in groups, three row buffers."""
    from nsa_kernels import nsa, selection, selection_async, selection_ws

    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the asynchronous selection kernels are built for compute capability 9.x")
    monkeypatch.setitem(nsa.TUNING, "pregate", dict.fromkeys(("cmp", "slc", "swd"), pregate))
    warp_specialized = bwd_kernel == "ws"
    asynchronous = {"fwd_async_gathers": True, "bwd_async_gathers": True, "bwd_warp_specialized": warp_specialized}
    monkeypatch.setitem(nsa.TUNING, "slc_block", {**nsa.TUNING["slc_block"], **asynchronous, **slc_block})
    monkeypatch.setattr(selection, "slc_fwd_kernel_block", None)
    monkeypatch.setattr(selection, "slc_bwd_kernel_block", None)
    unused = (
        (selection_async, "slc_bwd_kernel_block_async")
        if warp_specialized
        else (selection_ws, "slc_bwd_kernel_block_ws")
    )
    monkeypatch.setattr(*unused, None)
    q, k, v, g = make_inputs(1, T, HKV, G, D, dtype, device="cuda")
    _assert_flash_attention_rule(q, k, v, g, VIDEONSA, cu)


@pytest.mark.parametrize(
    ("T", "HKV", "G", "D", "cu", "pregate", "dtype", "config", "tuning"),
    [
        pytest.param(1000, 2, 7, 128, None, True, torch.bfloat16, VIDEONSA, {}, id="G7-T1000-pregated"),
        pytest.param(4096, 1, 7, 128, None, False, torch.bfloat16, VIDEONSA, {}, id="G7-T4096-gated-dO-8-splits"),
        pytest.param(2500, 2, 7, 64, [0, 777, 777, 2500], True, torch.bfloat16, VIDEONSA, {},
                     id="G7-D64-varlen-empty-seq"),
        pytest.param(1531, 2, 1, 128, [0, 1531], True, torch.float16, VIDEONSA, {}, id="G1-T1531-fp16"),
        pytest.param(100, 2, 7, 128, [0, 40, 100], True, torch.bfloat16, VIDEONSA, {},
                     id="G7-no-compressed-keys"),
        pytest.param(2049, 1, 16, 64, [0, 63, 2049], False, torch.bfloat16, VIDEONSA, {}, id="G16-D64-varlen-63"),
        pytest.param(3001, 1, 7, 128, [0, 1400, 3001], True, torch.bfloat16,
                     NSAConfig(compress_stride=32, window=100), {"cmp_dkv": {"span": 300}},
                     id="G7-stride32-window100-token-chunks"),
        pytest.param(2000, 2, 7, 128, None, False, torch.bfloat16, VIDEONSA,
                     {"async_block_m": 128, "async_num_warps": 8, "async_block_n": 64, "async_dkv_block_m": 64,
                      "async_dkv_num_warps": 4},
                     id="G7-128-rows-64-keys-forward-dQ-64-row-dKdV"),
        pytest.param(1777, 3, 3, 64, [0, 1000, 1777], True, torch.float16, VIDEONSA, {}, id="G3-D64-two-head-parts"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("dkv_rows", ["tma", "copy", "keyrows"])
def test_async_compression_window_flash_attention_rule(
    T, HKV, G, D, cu, pregate, dtype, config, tuning, dkv_rows, poison_empty, monkeypatch
):
    """The Hopper compression and window kernels (forward, dQ, dK/dV) on awkward shapes, the dK/dV with its rows by
    TMA in head parts, by ``cp.async``, or with 128 keys as the MMA rows (the window then without the selection's
    local blocks); the Triton branch kernels and the other dK/dV kernels are made unusable, so a silent fallback fails
    the test (the selection runs its block kernels)."""
    from nsa_kernels import attention, attention_async, dkv_async, dkv_keyrows, nsa

    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the asynchronous compression/window kernels are built for compute capability 9.x")
    monkeypatch.setitem(nsa.TUNING, "pregate", dict.fromkeys(("cmp", "slc", "swd"), pregate))
    branch = {key: value for key, value in tuning.items() if key.startswith("async")}
    branch["async_dkv_tma"] = dkv_rows == "tma"
    branch["async_dkv_keys"] = 128 if dkv_rows == "keyrows" else 64
    if dkv_rows == "keyrows":
        monkeypatch.setattr(dkv_keyrows, "MIN_WAVES", 0)
        monkeypatch.setitem(nsa.TUNING, "slc_block", {**nsa.TUNING["slc_block"], "bwd_local_in_window": False})
    for name in ("cmp", "swd"):
        monkeypatch.setitem(nsa.TUNING, name, {**nsa.TUNING[name], "async": ["fwd", "dq", "dkv"], **branch})
    monkeypatch.setitem(nsa.TUNING, "cmp_dkv", {**nsa.TUNING["cmp_dkv"], **tuning.get("cmp_dkv", {})})
    for kernel in ("branch_fwd_kernel_attn", "branch_bwd_kernel_dq", "branch_bwd_kernel_dkv"):
        monkeypatch.setattr(attention, kernel, None)
    if dkv_rows != "copy":
        monkeypatch.setattr(attention_async, "branch_bwd_kernel_dkv_async", None)
    if dkv_rows != "tma":
        monkeypatch.setattr(dkv_async, "branch_bwd_kernel_dkv_tma", None)
    q, k, v, g = make_inputs(1, T, HKV, G, D, dtype, device="cuda")
    _assert_flash_attention_rule(q, k, v, g, config, cu)


@pytest.mark.parametrize(
    ("T", "HKV", "G", "D", "cu", "dtype", "ratio_max"),
    [
        pytest.param(3001, 2, 7, 128, [0, 1400, 3001], torch.bfloat16, None, id="G7-varlen"),
        pytest.param(2500, 2, 7, 64, [0, 777, 777, 2500], torch.bfloat16, None, id="G7-D64-varlen-empty-seq"),
        pytest.param(1531, 2, 1, 128, None, torch.float16, None, id="G1-fp16"),
        pytest.param(2049, 1, 16, 64, [0, 63, 2049], torch.bfloat16, None, id="G16-D64-varlen-63"),
        pytest.param(3001, 2, 7, 128, [0, 1400, 3001], torch.bfloat16, 2.0**-100, id="G7-varlen-own-exponentials"),
        pytest.param(2049, 1, 16, 64, [0, 63, 2049], torch.bfloat16, 2.0**-100, id="G16-D64-own-exponentials"),
    ],
)
def test_window_local_blocks_flash_attention_rule(T, HKV, G, D, cu, dtype, ratio_max, poison_empty, monkeypatch):
    """``fwd_local_in_window`` / ``bwd_local_in_window``: the window forward emits each row's selection partial over
    its two local blocks, the window backward adds the selection's gradients over them, and the block-outer selection
    leaves those selections out both ways. The call must take both paths (they are spied on), meet the
    flash-attention rule, and give the plain path's branch outputs and gradients to rounding (the selection's partials
    are NaN-poisoned, so a row the window skips, or a dQ partial the selection no longer writes but is read, fails).
    A tiny ``ratio_max`` (``attention.LOCAL_RATIO_MAX``) makes the window backward take the selection's probabilities
    from their own exponentials everywhere, not from its own times a per-row factor."""
    from nsa_kernels import attention, nsa

    if ratio_max is not None:
        monkeypatch.setattr(attention, "LOCAL_RATIO_MAX", ratio_max)

    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon window kernels are built for compute capability 9.x")
    q, k, v, g = make_inputs(1, T, HKV, G, D, dtype, device="cuda")
    geometry = {key: getattr(VIDEONSA, key) for key in ("select_block", "forced_local", "window")}
    assert attention.window_emits_local(q[0], geometry, 64, nsa.TUNING["swd"]["async_fwd_block_n"])
    assert attention.window_takes_local(q[0], geometry, nsa.TUNING["cmp"]["async_block_n"])
    cu_seqlens = None if cu is None else torch.tensor(cu, dtype=torch.int32, device="cuda")
    seen = []

    def spy_on(name):
        run = getattr(nsa, name)

        def spy(*args, local=None, **kwargs):
            seen.append((name, bool(local)))
            return run(*args, local=local, **kwargs)

        monkeypatch.setattr(nsa, name, spy)

    spy_on("selection_fwd")
    spy_on("selection_bwd")
    do = torch.randn(q.shape, device="cuda", dtype=dtype)
    results = {}
    for fused in (False, True):
        switches = {"fwd_local_in_window": fused, "bwd_local_in_window": fused}
        monkeypatch.setitem(nsa.TUNING, "slc_block", {**nsa.TUNING["slc_block"], **switches})
        o, aux = _forward(q, k, v, g, VIDEONSA, cu_seqlens)
        results[fused] = aux, torch.autograd.grad(o, (q, k, v, g), do)
    fwd, bwd = ("selection_fwd", "selection_bwd")
    assert seen == [(fwd, False), (bwd, False), (fwd, True), (bwd, True)]
    (plain, plain_grads), (fused, fused_grads) = results[False], results[True]
    assert torch.equal(plain.block_indices, fused.block_indices)
    for branch in ("slc", "swd"):
        assert rel_err(fused.outputs[branch], plain.outputs[branch]) < 1e-2, branch
        torch.testing.assert_close(fused.lse[branch], plain.lse[branch], atol=2e-3, rtol=0)
    for name, got, want in zip(("dq", "dk", "dv", "dgates"), fused_grads, plain_grads, strict=True):
        assert rel_err(got, want) < 1e-2, name
    _assert_flash_attention_rule(q, k, v, g, VIDEONSA, cu)


def test_triton_compression_window_kernels_flash_attention_rule(monkeypatch):
    """The Triton compression and window kernels, which the Hopper defaults replace by the Gluon ones."""
    from nsa_kernels import nsa

    for name in ("cmp", "swd"):
        monkeypatch.setitem(nsa.TUNING, name, {**nsa.TUNING[name], "async": []})
    test_videonsa_geometry_flash_attention_rule(4096, 1, True, False, monkeypatch)


@pytest.mark.parametrize(
    ("T", "HKV", "G", "D", "cu", "dtype", "config", "launch"),
    [
        pytest.param(3001, 2, 7, 128, [0, 1400, 3001], torch.bfloat16, VIDEONSA, {}, id="G7-varlen"),
        pytest.param(1531, 2, 1, 128, None, torch.float16, VIDEONSA, {}, id="G1-fp16"),
        pytest.param(2049, 1, 16, 64, [0, 63, 2049], torch.bfloat16, VIDEONSA, {}, id="G16-D64-varlen-63"),
        pytest.param(2000, 2, 3, 128, None, torch.bfloat16, NSAConfig(compress_stride=32), {},
                     id="G3-stride32-overlap-weights"),
        pytest.param(1000, 2, 7, 128, [0, 1, 1000], torch.bfloat16, VIDEONSA,
                     {"async_block_m": 64, "async_num_warps": 8, "async_block_n": 32}, id="G7-64-rows-8-warps-32-keys"),
    ],
)  # fmt: skip
def test_async_importance_matches_triton_kernel(T, HKV, G, D, cu, dtype, config, launch, poison_empty, monkeypatch):
    """The Hopper importance kernel (rows permuted so that the head sum is mostly in-thread) gives the Triton kernel's
    scores up to the order of the fp32 head sum, the same top-n, and a forward/backward within the FlashAttention rule;
    the Triton scores kernel is made unusable for it, so a silent fallback fails the test. Without returned scores the
    score buffer is left uninitialised (NaN here), and the output must not change."""
    from nsa_kernels import backend, nsa, topk

    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the asynchronous importance kernel is built for compute capability 9.x")
    cu_seqlens = None if cu is None else torch.tensor(cu, dtype=torch.int32, device="cuda")
    q, k, v, g = make_inputs(1, T, HKV, G, D, dtype, device="cuda")
    monkeypatch.setitem(nsa.TUNING, "topk", {**nsa.TUNING["topk"], "asynchronous": False})
    with torch.no_grad():
        _, want = _forward(q, k, v, g, config, cu_seqlens)
    monkeypatch.setitem(nsa.TUNING, "topk", {**nsa.TUNING["topk"], "asynchronous": True, **launch})
    monkeypatch.setattr(topk, "topk_fwd_kernel_scores", None)
    with torch.no_grad():
        o, got = _forward(q, k, v, g, config, cu_seqlens)
        o_without_scores = backend.forward(q, k, v, g, config, cu_seqlens=cu_seqlens)
    torch.testing.assert_close(got.block_scores, want.block_scores, rtol=2e-5, atol=1e-7)
    assert (got.block_indices == want.block_indices).float().mean() > 0.999
    assert torch.equal(o_without_scores, o)
    _assert_flash_attention_rule(q, k, v, g, config, cu)

"""Parity of the converted model with stock transformers Qwen2.5-VL (same weights, fp32, CPU).

Stock attention lets vision rows read earlier text keys, clean-mode NSA does not (spec §5.2). Two
meaningful parity set-ups follow from that, both with NSA reduced to dense (window ≥ T, only the
window branch, window gate 1):

- vision first: the video tokens open the sequence, so no text precedes any vision row and stock
  causal attention is exactly "vision rows see earlier vision rows";
- masked stock: any layout (text prefix, two videos, left padding) against stock run with a 4-D mask
  that is causal, drops padding keys and blocks vision-query → text-key pairs, with the stock
  M-RoPE positions passed explicitly (a 4-D mask disables stock's own position computation).

Text-only inputs never reach the hybrid path, so they match stock bit for bit in any NSA setting.
"""

from __future__ import annotations

import pytest
import torch

from nsa_core import NSAConfig
from nsa_core.models.qwen2_5_vl import convert_to_nsa
from tests.nsa_core.models.tiny import IMAGE, VIDEO, VISION_END, VISION_START, build_batch, tiny_model

SMALL = NSAConfig(
    compress_block=4, compress_stride=4, select_block=4, num_selected=3, forced_initial=1, forced_local=1, window=8
)
DENSE_LIMIT = {"nsa_config": NSAConfig(window=4096, branches=("swd",)), "fixed_gates": (1.0, 1.0, 1.0)}
TWO_VIDEOS_PADDED = [
    [("text", [VISION_START]), ("video", 4, 56, 56), ("text", [VISION_END]), ("text", 5)],
    [
        ("text", 3),
        ("text", [VISION_START]),
        ("video", 4, 112, 56),
        ("text", [VISION_END, VISION_START]),
        ("video", 2, 56, 112),
        ("text", [VISION_END]),
        ("text", 4),
    ],
]


def _logits(model, batch, **extra):
    with torch.no_grad():
        return model(**batch, **extra).logits


def _masked_stock_logits(stock, batch):
    """Stock logits where vision queries cannot see text keys (plus causal and padding masks)."""
    pos, _ = stock.model.get_rope_index(
        batch["input_ids"],
        batch["mm_token_type_ids"],
        image_grid_thw=batch.get("image_grid_thw"),
        video_grid_thw=batch.get("video_grid_thw"),
        second_per_grid_ts=batch.get("second_per_grid_ts"),
        attention_mask=batch["attention_mask"],
    )
    T = batch["input_ids"].shape[1]
    valid = batch["attention_mask"].bool()
    vision = (batch["input_ids"] == VIDEO) | (batch["input_ids"] == IMAGE)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()[None] & valid[:, None, :]
    allowed = allowed & ~(vision[:, :, None] & ~vision[:, None, :])
    allowed = allowed | ~valid[:, :, None]  # padding rows: anything, to avoid empty softmax rows
    mask = allowed[:, None]
    if stock.config.text_config._attn_implementation == "eager":
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    inputs = {k: v for k, v in batch.items() if k != "attention_mask"}
    return _logits(stock, inputs, position_ids=pos, attention_mask=mask)


def test_dense_mode_is_stock_bit_for_bit():
    batch = build_batch(TWO_VIDEOS_PADDED, seed=1)
    stock, nsa = tiny_model(), convert_to_nsa(tiny_model(), SMALL, attention="dense")
    assert all(hasattr(layer.self_attn, "nsa_gate") for layer in nsa.model.language_model.layers)
    assert torch.equal(_logits(stock, batch), _logits(nsa, batch))


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="videonsa-defaults"),
        pytest.param({"nsa_config": SMALL, "gate": "linear"}, id="small-blocks-linear-gate"),
        pytest.param({"nsa_config": NSAConfig(window=2, branches=("cmp",))}, id="cmp-only"),
    ],
)
def test_text_only_is_stock_bit_for_bit(settings):
    batch = build_batch([[("text", 11)], [("text", 6)]], seed=2)
    stock, nsa = tiny_model(), convert_to_nsa(tiny_model(), **settings)
    assert torch.equal(_logits(stock, batch), _logits(nsa, batch))


@pytest.mark.parametrize("impl", [pytest.param("sdpa", id="sdpa"), pytest.param("eager", id="eager")])
def test_vision_first_dense_limit_matches_stock(impl):
    batch = build_batch([[("video", 4, 112, 112), ("text", [VISION_END]), ("text", 6)]], seed=3)
    stock = tiny_model(attn_implementation=impl)
    nsa = convert_to_nsa(tiny_model(), **DENSE_LIMIT)
    expected, got = _logits(stock, batch), _logits(nsa, batch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - _logits(convert_to_nsa(tiny_model(), SMALL), batch)).abs().max() > 1e-3


IMAGE_AND_VIDEO = [
    [
        ("text", 2),
        ("text", [VISION_START]),
        ("image", 56, 84),
        ("text", [VISION_END, 7, VISION_START]),
        ("video", 4, 56, 56),
        ("text", [VISION_END]),
        ("text", 3),
    ]
]


@pytest.mark.parametrize("impl", [pytest.param("sdpa", id="sdpa"), pytest.param("eager", id="eager")])
@pytest.mark.parametrize(
    "samples",
    [pytest.param(TWO_VIDEOS_PADDED, id="two-videos-padded"), pytest.param(IMAGE_AND_VIDEO, id="image-and-video")],
)
def test_dense_limit_matches_stock_with_vision_to_text_blocked(impl, samples):
    batch = build_batch(samples, seed=4)
    stock = tiny_model(attn_implementation=impl)
    nsa = convert_to_nsa(tiny_model(), **DENSE_LIMIT)
    valid = batch["attention_mask"].bool()
    expected, got = _masked_stock_logits(stock, batch), _logits(nsa, batch)
    torch.testing.assert_close(got[valid], expected[valid], rtol=1e-5, atol=1e-5)
    assert (_logits(stock, batch) - got)[valid].abs().max() > 1e-3

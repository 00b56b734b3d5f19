"""Metamorphic checks of the vision/text routing on the tiny model with all NSA branches on (small blocks).

A vision row's hidden state depends only on vision rows (the LLM never lets it read text keys, and
norms and MLPs act per row), so changing a text token's content (not its length) must leave the
logits at every vision position unchanged, while text rows after it do change.
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
LAYOUT = [
    ("text", 4),
    ("text", [VISION_START]),
    ("video", 4, 112, 112),
    ("text", [VISION_END, VISION_START]),
    ("video", 4, 56, 112),
    ("text", [VISION_END]),
    ("text", 5),
]


def _model():
    return convert_to_nsa(tiny_model(seed=5), SMALL)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(LAYOUT, id="two-videos"),
        pytest.param([*LAYOUT[:2], ("image", 56, 112), ("text", [VISION_END, VISION_START]), *LAYOUT[4:]], id="image"),
    ],
)
def test_vision_rows_never_read_text(layout):
    model, batch = _model(), build_batch([layout], seed=6)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, 1] = (changed["input_ids"][0, 1] + 7) % 100 + 1
    base, moved = _logits(model, batch), _logits(model, changed)
    vision = (batch["input_ids"][0] == VIDEO) | (batch["input_ids"][0] == IMAGE)
    assert vision.sum() > 16
    torch.testing.assert_close(moved[0, vision], base[0, vision], rtol=0, atol=1e-6)
    assert (moved[0, -1] - base[0, -1]).abs().max() > 1e-4


def test_text_rows_see_earlier_vision():
    model, batch = _model(), build_batch([LAYOUT], seed=7)
    changed = dict(batch, pixel_values_videos=batch["pixel_values_videos"] + 0.5)
    base, moved = _logits(model, batch), _logits(model, changed)
    assert torch.equal(moved[0, :5], base[0, :5])
    assert (moved[0, -1] - base[0, -1]).abs().max() > 1e-4


@pytest.mark.parametrize(
    "target",
    [pytest.param("late-text", id="late-text"), pytest.param("second-video", id="second-video")],
)
def test_later_tokens_never_change_earlier_logits(target):
    model, batch = _model(), build_batch([LAYOUT], seed=8)
    changed = {k: v.clone() for k, v in batch.items()}
    first_video_tokens = 2 * 8 * 8 // 4
    if target == "late-text":
        cut = batch["input_ids"].shape[1] - 3
        changed["input_ids"][0, cut] = (changed["input_ids"][0, cut] + 3) % 100 + 1
    else:
        cut = 5 + first_video_tokens + 2
        pixels = changed["pixel_values_videos"]
        pixels[2 * 8 * 8 :] += 1.0
    base, moved = _logits(model, batch), _logits(model, changed)
    torch.testing.assert_close(moved[0, :cut], base[0, :cut], rtol=0, atol=1e-6)
    assert (moved[0, cut:] - base[0, cut:]).abs().max() > 1e-4


def test_padded_batch_equals_each_sample_alone():
    model = _model()
    samples = [
        LAYOUT,
        [("text", 2), ("text", [VISION_START]), ("video", 2, 56, 56), ("text", [VISION_END]), ("text", 3)],
    ]
    batch = build_batch(samples, seed=9)
    together = _logits(model, batch)
    pixels = torch.split(batch["pixel_values_videos"], batch["video_grid_thw"].prod(-1).tolist())
    video = 0
    for b, segments in enumerate(samples):
        n_videos = sum(s[0] == "video" for s in segments)
        valid = batch["attention_mask"][b].bool()
        alone = {
            "input_ids": batch["input_ids"][b : b + 1, valid],
            "attention_mask": batch["attention_mask"][b : b + 1, valid],
            "mm_token_type_ids": batch["mm_token_type_ids"][b : b + 1, valid],
            "pixel_values_videos": torch.cat(pixels[video : video + n_videos]),
            "video_grid_thw": batch["video_grid_thw"][video : video + n_videos],
            "second_per_grid_ts": batch["second_per_grid_ts"][video : video + n_videos],
        }
        video += n_videos
        torch.testing.assert_close(together[b, valid], _logits(model, alone)[0], rtol=1e-5, atol=1e-5)


def test_inputs_embeds_route_like_input_ids():
    model, batch = _model(), build_batch([LAYOUT], seed=10)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    by_embeds = {k: v for k, v in batch.items() if k != "input_ids"}
    with torch.no_grad():
        from_embeds = model.model(inputs_embeds=embeds, **by_embeds, position_ids=_positions(model, batch))
        from_ids = model.model(**batch)
    torch.testing.assert_close(from_embeds.last_hidden_state, from_ids.last_hidden_state, rtol=1e-6, atol=1e-6)


def _positions(model, batch):
    return model.model.get_rope_index(
        batch["input_ids"],
        batch["mm_token_type_ids"],
        video_grid_thw=batch["video_grid_thw"],
        second_per_grid_ts=batch["second_per_grid_ts"],
        attention_mask=batch["attention_mask"],
    )[0]

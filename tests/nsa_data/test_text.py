"""Prompt layout, label masking, padding and tokenizer round trips of nsa_data.text (no downloads)."""

from __future__ import annotations

import pytest
import torch

from nsa_data.text import (
    IGNORE_INDEX,
    SPECIAL_TOKENS,
    VideoQATokenizer,
    build_prompt_ids,
    build_training_example,
    collate,
    corpus_texts,
)

ITEMS = [
    {"question": "Which object briefly appeared in the video?", "options": ["red circle", "blue cross"], "answer": "B"},
    {"question": "How many times did the cyan square appear?", "options": ["1", "2", "3", "4"], "answer": "C"},
]


@pytest.fixture(scope="module")
def tokenizer() -> VideoQATokenizer:
    return VideoQATokenizer.train(corpus_texts(ITEMS), vocab_size=320)


def _item(answer: str = "B", grid: tuple[int, int, int] = (2, 4, 4)) -> dict:
    t, h, w = grid
    return {
        **ITEMS[0],
        "answer": answer,
        "num_video_tokens": t * h * w // 4,
        "pixel_values_videos": torch.randn(t * h * w, 1176, generator=torch.Generator().manual_seed(0)),
        "video_grid_thw": torch.tensor([[t, h, w]]),
        "second_per_grid_ts": 0.5,
    }


def test_special_token_ids_and_text_round_trip(tokenizer):
    ids = [tokenizer.tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer.pad_id != tokenizer.eos_id and tokenizer.video_token_id != tokenizer.image_token_id
    text = "Where in the frame did the blue cross appear?\nA. top-left"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.vocab_size <= 320


def test_prompt_layout_video_first(tokenizer):
    ids = build_prompt_ids(tokenizer, ITEMS[1]["question"], ITEMS[1]["options"], num_video_tokens=5)
    assert ids.count(tokenizer.video_token_id) == 5
    start = ids.index(tokenizer.vision_start_id)
    assert ids[start + 1 : start + 6] == [tokenizer.video_token_id] * 5
    assert ids[start + 6] == tokenizer.vision_end_id
    text = tokenizer.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith(
        "<|vision_end|>How many times did the cyan square appear?\nA. 1\nB. 2\nC. 3\nD. 4\n"
        "Answer with the option's letter from the given choices directly.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_labels_cover_only_answer_and_eos(tokenizer):
    example = build_training_example(tokenizer, _item("B"))
    labelled = example["labels"] != IGNORE_INDEX
    assert tokenizer.decode(example["input_ids"][labelled].tolist(), skip_special_tokens=False) == "B<|im_end|>"
    assert labelled[-1] and labelled.sum() == len(tokenizer.encode("B")) + 1
    assert not labelled[: -int(labelled.sum())].any()
    assert example["pixel_values_videos"].shape == (32, 1176)
    assert example["second_per_grid_ts"].tolist() == [0.5]


def test_mismatched_video_tokens_name_the_fix(tokenizer):
    item = {**_item(), "num_video_tokens": 7}
    with pytest.raises(ValueError, match=r"num_video_tokens 7 .* re-run `nsa-data prepare`"):
        build_training_example(tokenizer, item)


@pytest.mark.parametrize("side", [pytest.param("right", id="right"), pytest.param("left", id="left")])
def test_collate_padding(tokenizer, side):
    short = build_training_example(tokenizer, _item("A", (2, 4, 4)))
    long = build_training_example(tokenizer, _item("A", (4, 4, 4)))
    batch = collate([short, long], tokenizer.pad_id, padding_side=side)
    n, T = len(short["input_ids"]), len(long["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, T)
    kept = slice(0, n) if side == "right" else slice(T - n, T)
    assert torch.equal(batch["input_ids"][0, kept], short["input_ids"])
    assert batch["attention_mask"][0].sum() == n and batch["attention_mask"][0, kept].all()
    assert (batch["labels"][0][batch["attention_mask"][0] == 0] == IGNORE_INDEX).all()
    assert batch["pixel_values_videos"].shape[0] == 32 + 64
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4], [4, 4, 4]]


def test_save_load_and_from_pretrained(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "local")
    loaded = VideoQATokenizer.load(tmp_path / "local")
    ids = build_prompt_ids(loaded, "q?", ["x", "y"], 3)
    assert ids == build_prompt_ids(tokenizer, "q?", ["x", "y"], 3)
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tokenizer.tokenizer).save_pretrained(tmp_path / "hf")
    hf = VideoQATokenizer.from_pretrained(tmp_path / "hf")
    assert build_prompt_ids(hf, "q?", ["x", "y"], 3) == ids
    assert (hf.eos_id, hf.video_token_id) == (tokenizer.eos_id, tokenizer.video_token_id)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(lambda: VideoQATokenizer.train(["a"], vocab_size=10), "vocab_size must be >= 300", id="vocab"),
        pytest.param(lambda: VideoQATokenizer.load("/nonexistent"), "tokenizer.json does not exist", id="load"),
        pytest.param(lambda: collate([], 0), "at least one example", id="empty"),
    ],
)
def test_bad_input_errors(call, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        call()

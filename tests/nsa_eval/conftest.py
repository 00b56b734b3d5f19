"""Fixtures for nsa_eval: a micro synthetic benchmark, prepared shards and a tiny NSA checkpoint with tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nsa_data.config import PrepareConfig, SamplingConfig, SynthConfig

MICRO_SYNTH = SynthConfig(num_videos=8, durations=(4.0,), fps=4.0, width=56, height=56, test_fraction=0.5)
MICRO_PREPARE = PrepareConfig(sampling=SamplingConfig(fps=2.0, max_pixels=56 * 56, min_pixels=28 * 28), num_workers=1)


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/synth`` and ``<root>/prepared`` of an 8-video synthetic benchmark (4 test questions)."""
    from nsa_data.shards import prepare_shards
    from nsa_data.synth.generate import generate_synthetic

    root = tmp_path_factory.mktemp("micro")
    manifest = generate_synthetic(MICRO_SYNTH, root / "synth", progress=False)
    prepare_shards(manifest, root / "prepared", MICRO_PREPARE, progress=False)
    return root


def build_checkpoint(directory: Path, items: list[dict], nsa: bool = True, seed: int = 0) -> Path:
    """Save a tiny random Qwen2.5-VL (NSA-converted unless ``nsa`` is False) plus a locally trained tokenizer."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from nsa_core import NSAConfig
    from nsa_core.models.qwen2_5_vl import convert_to_nsa
    from nsa_data.text import VideoQATokenizer, corpus_texts

    tokenizer = VideoQATokenizer.train(corpus_texts(items), vocab_size=320)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 112,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 7,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "eos_token_id": tokenizer.eos_id,
            "pad_token_id": tokenizer.pad_id,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_heads": 2,
            "out_hidden_size": 112,
            "fullatt_block_indexes": [0],
            "window_size": 56,
            "tokens_per_second": 2,
        },
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.vision_start_id,
        vision_end_token_id=tokenizer.vision_end_id,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
    if nsa:
        small = NSAConfig(
            compress_block=4,
            compress_stride=4,
            select_block=4,
            num_selected=3,
            forced_initial=1,
            forced_local=1,
            window=4,
        )
        convert_to_nsa(model, small)
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory


@pytest.fixture(scope="session")
def micro_items(micro_data: Path) -> list[dict]:
    """Question/option/answer dicts of the micro benchmark (the tokenizer's corpus)."""
    from nsa_data.manifest import read_manifest

    return [r.model_dump() for r in read_manifest(micro_data / "synth" / "manifest.parquet")]


@pytest.fixture(scope="session")
def nsa_checkpoint(tmp_path_factory: pytest.TempPathFactory, micro_items: list[dict]) -> Path:
    """A tiny NSA checkpoint (untrained, gates ≈ 0.5) with its tokenizer."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt-nsa"), micro_items, nsa=True)


@pytest.fixture(scope="session")
def dense_checkpoint(tmp_path_factory: pytest.TempPathFactory, micro_items: list[dict]) -> Path:
    """A tiny dense checkpoint with its tokenizer."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt-dense"), micro_items, nsa=False)

"""Build the model to train: a tiny random Qwen2.5-VL or a local checkpoint, converted to VideoNSA, with freezing.

Parameter groups follow VideoNSA's split: vision tower (``model.visual`` without the merger), merger
(``model.visual.merger``), LLM (everything else) and gates (``*.nsa_gate.*``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from nsa_core.models.qwen2_5_vl import convert_to_nsa, load_nsa_model
from nsa_data.text import VideoQATokenizer
from nsa_train.config import ModelConfig, TinyModelConfig

PartName = Literal["vision", "merger", "llm", "gates"]


def tiny_qwen_config(tiny: TinyModelConfig, tokenizer: VideoQATokenizer) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of the tiny shape whose special token ids are the tokenizer's.

    Args:
        tiny: The tiny shape.
        tokenizer: The tokenizer; its vocabulary size becomes the model's.

    Returns:
        The config, with ``sdpa`` attention (conversion switches the LLM to NSA).
    """
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": tiny.hidden_size,
            "intermediate_size": tiny.intermediate_size,
            "num_hidden_layers": tiny.num_hidden_layers,
            "num_attention_heads": tiny.num_attention_heads,
            "num_key_value_heads": tiny.num_key_value_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(tiny.mrope_section)},
            "bos_token_id": tokenizer.im_start_id,
            "eos_token_id": tokenizer.eos_id,
            "pad_token_id": tokenizer.pad_id,
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": tiny.vision_depth,
            "hidden_size": tiny.vision_hidden_size,
            "intermediate_size": 2 * tiny.vision_hidden_size,
            "num_heads": tiny.vision_heads,
            "out_hidden_size": tiny.hidden_size,
            "fullatt_block_indexes": [tiny.vision_depth - 1],
            "window_size": 56,
            "tokens_per_second": 2,
        },
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.vision_start_id,
        vision_end_token_id=tokenizer.vision_end_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    config._attn_implementation = "sdpa"
    return config


def build_model(config: ModelConfig, tokenizer: VideoQATokenizer, seed: int) -> Qwen2_5_VLForConditionalGeneration:
    """The model in fp32 on CPU, converted to VideoNSA with ``config.nsa`` and ``config.attention``.

    Args:
        config: Model section of the run config.
        tokenizer: The tokenizer (its vocabulary sizes the tiny model).
        seed: Seed of the random init (tiny model and fresh gates).

    Returns:
        The model in train mode with frozen parts set, before sharding or moving to a device.

    Raises:
        ValueError: when a local checkpoint's vocabulary is smaller than the tokenizer's.
    """
    torch.manual_seed(seed)
    if config.source == "tiny":
        model = Qwen2_5_VLForConditionalGeneration(tiny_qwen_config(config.tiny, tokenizer))
        model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
    else:
        model = load_nsa_model(config.path, dtype=torch.float32)
        if model.config.text_config.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"checkpoint {config.path} has vocab_size {model.config.text_config.vocab_size} < tokenizer's "
                f"{tokenizer.vocab_size}; use data.tokenizer: pretrained"
            )
    convert_to_nsa(model, config.nsa, gate=config.gate, attention=config.attention)
    set_trainable(model, config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model.train()


def part_of(name: str) -> PartName:
    """Which trainable part a parameter name belongs to."""
    if ".nsa_gate." in name:
        return "gates"
    if ".visual.merger." in name or name.startswith("visual.merger."):
        return "merger"
    if ".visual." in name or name.startswith("visual."):
        return "vision"
    return "llm"


def set_trainable(model: nn.Module, config: ModelConfig) -> dict[PartName, int]:
    """Freeze or unfreeze each part; in dense mode the gates are unused and always frozen.

    Returns:
        Trainable parameter counts per part.
    """
    flags: dict[PartName, bool] = {
        "vision": config.train_vision,
        "merger": config.train_merger,
        "llm": config.train_llm,
        "gates": config.train_gates and config.attention == "nsa",
    }
    counts: dict[PartName, int] = dict.fromkeys(flags, 0)
    for name, param in model.named_parameters():
        part = part_of(name)
        param.requires_grad_(flags[part])
        counts[part] += param.numel() if flags[part] else 0
    return counts


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices, none on biases and norm weights (1-D tensors)."""
    named: Iterator = ((n, p) for n, p in model.named_parameters() if p.requires_grad)
    decay, no_decay = [], []
    for _, param in named:
        (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

"""Tiny random Qwen2.5-VL (G = 7 like the 7B model) and hand-built video inputs; nothing is downloaded.

Shape legend: B batch, T tokens, F frames, H/W pixels; one LLM video token covers 2 frames × 28×28 px.
"""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

VOCAB = 160
PAD, IMAGE, VIDEO, VISION_START, VISION_END = 0, 151, 152, 153, 154
TEXT_IDS = (1, 150)
"""Plain text token ids are drawn from this half-open range."""


def tiny_config(attn_implementation: str = "sdpa") -> Qwen2_5_VLConfig:
    """2 text layers, 14 query / 2 KV heads (G = 7), head_dim 16, M-RoPE [2, 3, 3]; 2 vision layers."""
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": VOCAB,
            "hidden_size": 224,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": PAD,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_heads": 2,
            "out_hidden_size": 224,
            "fullatt_block_indexes": [1],
            "window_size": 56,
            "tokens_per_second": 2,
        },
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )
    config._attn_implementation = attn_implementation
    return config


def tiny_model(seed: int = 0, attn_implementation: str = "sdpa") -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(seed)
    config = tiny_config(attn_implementation)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.set_attn_implementation({"text_config": attn_implementation, "vision_config": "sdpa"})
    return model


def patchify(frames: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Qwen2-VL patchify of normalised frames ``[F, 3, H, W]`` (F even, H/W multiples of 28): rows of 1176, grid."""
    F, C, H, W = frames.shape
    x = frames.reshape(F // 2, 2, C, H // 28, 2, 14, W // 28, 2, 14)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # group, block row, block col, merge row, merge col, c, frame, px, px
    return x.reshape(-1, C * 2 * 14 * 14), [F // 2, H // 14, W // 14]


def build_batch(samples: list[list[tuple]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded batch of segments ``("text", n | [ids])``, ``("video", F, H, W)`` and ``("image", H, W)``.

    A vision segment inserts only its placeholder tokens; add ``VISION_START`` / ``VISION_END`` as text ids.
    An image is one frame repeated for the temporal patch, as the Qwen image processor does.
    """
    g = torch.Generator().manual_seed(seed)
    rows, types = [], []
    media = {"image": ([], []), "video": ([], [])}
    for segments in samples:
        ids, kinds = [], []
        for segment in segments:
            if segment[0] == "text":
                part = segment[1]
                part = torch.randint(*TEXT_IDS, (part,), generator=g).tolist() if isinstance(part, int) else part
                ids += part
                kinds += [0] * len(part)
                continue
            if segment[0] == "image":
                frames = torch.randn(1, 3, segment[1], segment[2], generator=g).expand(2, -1, -1, -1)
            else:
                frames = torch.randn(segment[1], 3, segment[2], segment[3], generator=g)
            values, grid = patchify(frames)
            media[segment[0]][0].append(values)
            media[segment[0]][1].append(grid)
            n = grid[0] * grid[1] * grid[2] // 4
            ids += [IMAGE if segment[0] == "image" else VIDEO] * n
            kinds += [1 if segment[0] == "image" else 2] * n
        rows.append(ids)
        types.append(kinds)
    T = max(len(r) for r in rows)
    batch = {
        "input_ids": torch.tensor([[PAD] * (T - len(r)) + r for r in rows]),
        "attention_mask": torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows]),
        "mm_token_type_ids": torch.tensor([[0] * (T - len(k)) + k for k in types]),
    }
    if media["image"][0]:
        batch["pixel_values"] = torch.cat(media["image"][0])
        batch["image_grid_thw"] = torch.tensor(media["image"][1])
    if media["video"][0]:
        batch["pixel_values_videos"] = torch.cat(media["video"][0])
        batch["video_grid_thw"] = torch.tensor(media["video"][1])
        batch["second_per_grid_ts"] = torch.full((len(media["video"][1]),), 0.5)
    return batch

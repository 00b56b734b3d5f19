"""Qwen2.5-VL video preprocessing: smart-resize, rescale + CLIP normalisation and patchify.

Every step reproduces ``transformers``' ``Qwen2VLImageProcessorPil`` bit-exactly: PIL bicubic resize of the
uint8 RGB frame, ``float64(x) * (1/255)`` cast to float32, then ``(x - mean) / std`` in float32. Because the
normalisation is element-wise on uint8 inputs it is applied through a per-channel 256-entry lookup table, which
gives the same float32 values as the processor's arithmetic.

Legend: F frames (a multiple of TP), TP temporal patch size, H and W resized sides (multiples of P·M),
P patch side, M spatial merge, C = 3 channels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 3136, max_pixels: int = 50176) -> tuple:
    """Qwen2-VL's resize rule: sides multiples of ``factor``, H·W in [min_pixels, max_pixels], aspect kept.

    Args:
        height: Source height in pixels.
        width: Source width in pixels.
        factor: Side-length multiple (patch 14 × merge 2 = 28).
        min_pixels: Lower bound on the resized H·W.
        max_pixels: Upper bound on the resized H·W.

    Returns:
        ``(resized_height, resized_width)``.

    Raises:
        ValueError: if a side is not positive or the aspect ratio exceeds 200 (Qwen's limit).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {height}x{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize one uint8 RGB frame with PIL bicubic, exactly as the Qwen PIL processor does.

    Args:
        frame: ``[h, w, 3]`` uint8 RGB.
        height: Target height.
        width: Target width.

    Returns:
        ``[height, width, 3]`` uint8 RGB.
    """
    if frame.shape[0] == height and frame.shape[1] == width:
        return np.ascontiguousarray(frame)
    image = Image.fromarray(frame, mode="RGB")
    return np.asarray(image.resize((width, height), resample=Image.Resampling.BICUBIC))


def _normalise_lut() -> np.ndarray:
    """``[C, 256]`` float32: the processor's rescale + normalise applied to every uint8 value."""
    values = (np.arange(256, dtype=np.uint8).astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(OPENAI_CLIP_MEAN, dtype=np.float32)[:, None]
    std = np.asarray(OPENAI_CLIP_STD, dtype=np.float32)[:, None]
    return (values[None, :] - mean) / std


_LUT = _normalise_lut()


def normalise(frames: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1] and CLIP-normalise uint8 frames, channel-first.

    Args:
        frames: ``[F, H, W, C]`` uint8 RGB.

    Returns:
        ``[F, C, H, W]`` float32.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    out = np.empty((frames.shape[0], 3, frames.shape[1], frames.shape[2]), dtype=np.float32)
    for c in range(3):
        out[:, c] = _LUT[c][frames[..., c]]
    return out


def patchify(
    frames: np.ndarray, temporal_patch_size: int = 2, patch_size: int = 14, merge_size: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Turn resized uint8 frames into ``pixel_values_videos`` and ``video_grid_thw``.

    Args:
        frames: ``[F, H, W, 3]`` uint8 RGB; F a multiple of ``temporal_patch_size`` (pad by repeating the last
            frame first), H and W multiples of ``patch_size·merge_size``.
        temporal_patch_size: Frames per temporal patch (TP).
        patch_size: Patch side (P).
        merge_size: Spatial merge (M).

    Returns:
        ``pixel_values_videos`` ``[F/TP · H/P · W/P, C·TP·P·P]`` float32, rows ordered by (temporal group,
        merged row, merged col, row in merge, col in merge) and columns by (channel, frame in group, pixel row,
        pixel col); and ``video_grid_thw`` ``[1, 3]`` int64 = ``[[F/TP, H/P, W/P]]``.

    Raises:
        ValueError: if a shape is not divisible as required.
    """
    F, H, W, _ = frames.shape
    factor = patch_size * merge_size
    if F % temporal_patch_size or H % factor or W % factor:
        raise ValueError(
            f"frames {frames.shape} must have F divisible by {temporal_patch_size} and H, W divisible by {factor}; "
            "pad frames with pad_frames() and resize with smart_resize() first"
        )
    x = normalise(frames)
    gt, gh, gw = F // temporal_patch_size, H // patch_size, W // patch_size
    TP, P, M, C = temporal_patch_size, patch_size, merge_size, 3
    x = x.reshape(gt, TP, C, gh // M, M, P, gw // M, M, P)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = np.ascontiguousarray(x).reshape(gt * gh * gw, C * TP * P * P)
    return pixel_values, np.asarray([[gt, gh, gw]], dtype=np.int64)


def pad_frames(frames: np.ndarray, multiple: int = 2) -> np.ndarray:
    """Repeat the last frame until the frame count is a multiple of ``multiple`` (Qwen's padding).

    Args:
        frames: ``[F, ...]`` with F ≥ 1.
        multiple: Required divisor of the frame count.

    Returns:
        ``frames`` itself when F already divides, else a padded copy.
    """
    if len(frames) == 0:
        raise ValueError("cannot pad an empty frame array")
    missing = (-len(frames)) % multiple
    if not missing:
        return frames
    return np.concatenate([frames, np.repeat(frames[-1:], missing, axis=0)], axis=0)


def llm_tokens(video_grid_thw: np.ndarray, merge_size: int = 2) -> int:
    """LLM video tokens for one grid: ``t·h·w / merge_size²``."""
    t, h, w = (int(v) for v in np.asarray(video_grid_thw).reshape(-1)[:3])
    return t * h * w // (merge_size * merge_size)

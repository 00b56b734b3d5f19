"""Write H.264 mp4 files with PyAV (no system ffmpeg), atomically."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from nsa_data.atomic import atomic_path


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    crf: int = 23,
    gop: int | None = None,
    rotation: int = 0,
    faststart: bool = False,
) -> int:
    """Encode RGB frames as a yuv420p H.264 mp4.

    Args:
        path: Output file; written to a temporary sibling and renamed, so it is never half-written.
        frames: ``[H, W, 3]`` uint8 RGB frames, all the same even size.
        fps: Frame rate (a fraction up to 1/1000 precision).
        crf: libx264 constant rate factor.
        gop: Keyframe interval in frames; ``2·fps`` when None, so seeks stay cheap.
        rotation: Display-matrix rotation in degrees counter-clockwise (metadata only; pixels are unchanged).
        faststart: Put the index (moov) before the data, as streaming-friendly files do.

    Returns:
        The number of frames written.

    Raises:
        ValueError: if no frame is given or a frame has the wrong shape or dtype.
    """
    rate = Fraction(fps).limit_denominator(1000)
    count = 0
    with atomic_path(path) as tmp:
        options = {"movflags": "+faststart"} if faststart else {}
        with av.open(str(tmp), mode="w", format="mp4", options=options) as container:
            stream = None
            for frame in frames:
                if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                    raise ValueError(f"frame {count} must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
                if stream is None:
                    stream = container.add_stream("libx264", rate=rate)
                    stream.width, stream.height = frame.shape[1], frame.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {
                        "crf": str(crf),
                        "preset": "veryfast",
                        "g": str(gop or max(1, round(2 * fps))),
                        "x264-params": "aq-mode=0:mbtree=0:psy=0",
                    }
                    stream.codec_context.thread_count = 1
                    if rotation:
                        stream.set_display_rotation(rotation)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise ValueError(f"no frames given for {path}")
            for packet in stream.encode():
                container.mux(packet)
    return count

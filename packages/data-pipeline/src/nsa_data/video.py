"""Streaming video probing and frame sampling with PyAV (bundled FFmpeg).

A video is read in two passes: a demux-only probe that collects every packet's presentation time (cheap,
exact for variable frame rate) and one sequential decode that converts, rotates and resizes only the
sampled frames, so at most one full-resolution frame is alive at a time.

Legend: N source frames, F sampled frames (padded to a multiple of TP), H and W resized sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import av
import numpy as np

from nsa_data.config import SamplingConfig
from nsa_data.errors import VideoReadError
from nsa_data.processor import pad_frames, patchify, resize_frame, smart_resize


@dataclass(frozen=True)
class VideoInfo:
    """What a demux-only probe learns about a video stream.

    Attributes:
        path: The file.
        width: Coded width in pixels (before rotation).
        height: Coded height in pixels (before rotation).
        frames: Number of video frames N (counted packets, not the container's claim).
        duration: Seconds covered by the N frames: ``(t_last - t_first)·N/(N-1)``, i.e. N/fps for constant rate.
        fps: Average frame rate ``N / duration``.
        times: ``[N]`` presentation times in seconds from the first frame, sorted.
        is_cfr: Whether frame intervals are constant up to timestamp rounding.
        codec: Decoder name.
        ticks: ``[N]`` sorted presentation timestamps in the stream's time base.
        keyframes: Sorted presentation-order indices of keyframes (seek points).
    """

    path: str
    width: int
    height: int
    frames: int
    duration: float
    fps: float
    times: np.ndarray = field(repr=False)
    is_cfr: bool
    codec: str
    ticks: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    keyframes: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoReadError(path, "missing", "file does not exist; check the video path or video root")
    if not path.is_file():
        raise VideoReadError(path, "unreadable", "not a regular file")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoReadError(path, "unreadable", f"FFmpeg cannot open it as media ({err})") from err


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise VideoReadError(path, "no_video_stream", f"no video stream (found: {', '.join(kinds)})")
    return container.streams.video[0]


def probe_video(path: str | Path) -> VideoInfo:
    """Count frames and collect their presentation times without decoding.

    Args:
        path: Video file.

    Returns:
        The stream's :class:`VideoInfo`.

    Raises:
        VideoReadError: if the file is missing, not media, has no video stream, cannot be demuxed or has no frames.
    """
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        tb = float(stream.time_base) if stream.time_base else 0.0
        stamps: list[int] = []
        keys: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                stamps.append(stamp if stamp is not None else (stamps[-1] + 1 if stamps else 0))
                if packet.is_keyframe:
                    keys.append(stamps[-1])
        except av.error.FFmpegError as err:
            raise VideoReadError(path, "corrupt", f"demuxing failed after {len(stamps)} packets ({err})") from err
        if not stamps:
            raise VideoReadError(path, "empty", "the video stream has no frames")
        ticks = np.sort(np.asarray(stamps, dtype=np.int64))
        times = (ticks - ticks[0]) * tb if tb else np.arange(len(ticks), dtype=np.float64)
        n = len(times)
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        duration = times[-1] * n / (n - 1) if n > 1 and times[-1] > 0 else n / rate
        steps = np.diff(times)
        tick = tb if tb else 0.0
        is_cfr = n < 3 or float(steps.max() - steps.min()) <= max(0.1 * float(np.median(steps)), 2 * tick)
        ctx = stream.codec_context
        return VideoInfo(
            path=str(path),
            width=int(ctx.width),
            height=int(ctx.height),
            frames=n,
            duration=float(duration),
            fps=n / float(duration),
            times=times.astype(np.float64),
            is_cfr=bool(is_cfr),
            codec=str(ctx.name),
            ticks=ticks,
            keyframes=np.unique(np.searchsorted(ticks, np.asarray(keys, dtype=np.int64))).astype(np.int64),
        )


def num_sampled_frames(duration: float, total: int, config: SamplingConfig) -> int:
    """Frames to sample (before padding): ``clamp(duration·fps, min_frames, max_frames, total)`` floored to TP.

    Args:
        duration: Video length in seconds.
        total: Source frames N.
        config: Sampling knobs.

    Returns:
        A multiple of ``temporal_patch_size``, or ``total`` itself when the video is shorter than one temporal
        patch (the caller pads by repeating the last frame).
    """
    tp = config.temporal_patch_size
    lo = math.ceil(config.min_frames / tp) * tp
    hi = (min(config.max_frames, total) // tp) * tp
    n = min(max(duration * config.fps, lo), hi, total)
    n = int(n // tp) * tp
    return n if n >= tp else total


def frame_indices(info: VideoInfo, config: SamplingConfig) -> np.ndarray:
    """Indices (in presentation order) of the frames to sample, spread uniformly.

    Args:
        info: Probe result.
        config: Sampling knobs; ``uniform`` picks index- or time-uniform spacing.

    Returns:
        ``[F]`` int64, non-decreasing (a frame may repeat in time-uniform mode when the video has gaps).
    """
    n = num_sampled_frames(info.duration, info.frames, config)
    mode = config.uniform if config.uniform != "auto" else ("index" if info.is_cfr else "time")
    if mode == "index" or info.frames == 1:
        return np.round(np.linspace(0, info.frames - 1, n)).astype(np.int64)
    targets = np.linspace(0.0, float(info.times[-1]), n)
    right = np.clip(np.searchsorted(info.times, targets), 1, info.frames - 1)
    nearer_left = (targets - info.times[right - 1]) <= (info.times[right] - targets)
    return np.where(nearer_left, right - 1, right).astype(np.int64)


def _to_rgb(frame: av.VideoFrame, apply_rotation: bool) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    rotation = int(frame.rotation or 0) if apply_rotation else 0
    if rotation % 90:
        raise ValueError(f"unsupported display rotation {rotation}°; only multiples of 90° are handled")
    return np.rot90(rgb, k=(rotation // 90) % 4) if rotation else rgb


@dataclass
class SampledVideo:
    """Sampled, resized frames of one video and what Qwen2.5-VL needs to position them.

    Attributes:
        path: The source file.
        frames: ``[F, H, W, 3]`` uint8 RGB, F padded to a multiple of the temporal patch size.
        video_grid_thw: ``[1, 3]`` int64 ``[[F/TP, H/14, W/14]]``.
        fps: True sampling rate ``sampled frames / duration`` (before padding).
        second_per_grid_ts: Seconds per temporal patch, ``TP / fps``; feeds the M-RoPE temporal ids.
        frame_indices: ``[F]`` source frame index of each sampled frame (padding repeats the last).
        frame_times: ``[F]`` presentation time in seconds of each sampled frame.
        source_fps: Average frame rate of the file.
        duration: Video length in seconds.
        total_frames: Source frame count N.
        rotation: Display rotation applied, in degrees counter-clockwise.
        config: The sampling config used.
    """

    path: str
    frames: np.ndarray = field(repr=False)
    video_grid_thw: np.ndarray
    fps: float
    second_per_grid_ts: float
    frame_indices: np.ndarray = field(repr=False)
    frame_times: np.ndarray = field(repr=False)
    source_fps: float
    duration: float
    total_frames: int
    rotation: int
    config: SamplingConfig = field(repr=False)

    @cached_property
    def pixel_values_videos(self) -> np.ndarray:
        """``[F/TP · H/14 · W/14, 1176]`` float32 rows, bit-identical to the Qwen processor's output."""
        c = self.config
        return patchify(self.frames, c.temporal_patch_size, c.patch_size, c.merge_size)[0]

    @property
    def num_llm_tokens(self) -> int:
        """Video tokens the LLM sees: ``t·h·w / merge²``."""
        t, h, w = (int(v) for v in self.video_grid_thw[0])
        return t * h * w // (self.config.merge_size**2)


class _Decoded:
    """Frames collected so far by :func:`_decode_wanted`."""

    def __init__(self, wanted: np.ndarray, config: SamplingConfig) -> None:
        self.wanted, self.config = wanted, config
        self.slot = {int(i): k for k, i in enumerate(wanted)}
        self.kept: np.ndarray | None = None
        self.rotation, self.target, self.last = 0, (0, 0), -1
        self.missing = len(wanted)

    def add(self, frame: av.VideoFrame, index: int) -> None:
        self.last = index
        if self.kept is None:
            self.rotation = int(frame.rotation or 0) if self.config.apply_rotation else 0
            h, w = (frame.width, frame.height) if self.rotation % 180 else (frame.height, frame.width)
            c = self.config
            self.target = smart_resize(h, w, c.factor, c.min_pixels, c.max_pixels)
            self.kept = np.empty((len(self.wanted), *self.target, 3), dtype=np.uint8)
        k = self.slot.pop(index, None)
        if k is not None:
            self.kept[k] = resize_frame(_to_rgb(frame, self.config.apply_rotation), *self.target)
            self.missing -= 1


def _decode_wanted(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    info: VideoInfo,
    state: _Decoded,
    seek: bool,
) -> None:
    """Decode in presentation order; seek to the keyframe before the next wanted frame when that skips at least
    one whole GOP (a seek costs about as much as decoding a few frames, so shorter jumps decode through)."""
    keys = info.keyframes if seek and len(info.keyframes) > 1 else np.zeros(0, np.int64)
    pending = iter(state.wanted.tolist())
    goal = next(pending)
    floor, last_seek = 0, 0
    while True:
        for frame in container.decode(stream):
            i = int(np.searchsorted(info.ticks, frame.pts)) if frame.pts is not None else state.last + 1
            if i < floor:
                continue
            state.add(frame, i)
            while goal is not None and goal <= i:
                goal = next(pending, None)
            if goal is None:
                return
            j = int(np.searchsorted(keys, goal, side="right")) - 1
            k = int(keys[j]) if j >= 1 else 0
            if k > last_seek and keys[j - 1] > i:
                break
        else:
            return
        container.seek(int(info.ticks[k]), stream=stream, backward=True, any_frame=False)
        floor = last_seek = k


def sample_video(path: str | Path, config: SamplingConfig | None = None) -> SampledVideo:
    """Decode, sample, rotate and smart-resize one video in a single streaming pass.

    Args:
        path: Video file.
        config: Sampling knobs; VideoNSA's defaults when None.

    Returns:
        The :class:`SampledVideo`.

    Raises:
        VideoReadError: if the file is missing, unreadable, has no video stream, is corrupt or ends before the
            frames its index promises (truncated).
    """
    config = config or SamplingConfig()
    path = Path(path)
    info = probe_video(path)
    indices = frame_indices(info, config)
    wanted = np.unique(indices)
    state = _Decoded(wanted, config)
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = config.decode_threads
        try:
            _decode_wanted(container, stream, info, state, config.seek)
        except av.error.FFmpegError as err:
            raise VideoReadError(
                path, "corrupt", f"decoding failed near frame {state.last} of {info.frames} ({err})"
            ) from err
        except ValueError as err:
            raise VideoReadError(path, "unreadable", str(err)) from err
    if state.kept is None or state.missing:
        raise VideoReadError(
            path,
            "truncated",
            f"{state.missing} sampled frames never decoded (stream index lists {info.frames} frames); "
            "the file ends early",
        )
    kept, rotation, target = state.kept, state.rotation, state.target
    frames = kept if len(wanted) == len(indices) else kept[np.searchsorted(wanted, indices)]
    frames = pad_frames(frames, config.temporal_patch_size)
    padded_indices = pad_frames(indices, config.temporal_patch_size)
    fps = len(indices) / info.duration
    grid = np.asarray(
        [[len(frames) // config.temporal_patch_size, target[0] // config.patch_size, target[1] // config.patch_size]],
        dtype=np.int64,
    )
    return SampledVideo(
        path=str(path),
        frames=frames,
        video_grid_thw=grid,
        fps=fps,
        second_per_grid_ts=config.temporal_patch_size / fps,
        frame_indices=padded_indices,
        frame_times=info.times[padded_indices],
        source_fps=info.fps,
        duration=info.duration,
        total_frames=info.frames,
        rotation=rotation,
        config=config,
    )


def temporal_position_ids(grid_t: int, second_per_grid_ts: float, tokens_per_second: float = 2.0) -> np.ndarray:
    """M-RoPE temporal id offset of each temporal group: ``floor(g · second_per_grid_ts · tokens_per_second)``.

    Args:
        grid_t: Temporal groups (``video_grid_thw[0, 0]``).
        second_per_grid_ts: Seconds per temporal group.
        tokens_per_second: Qwen2.5-VL's ``vision_config.tokens_per_second`` (2).

    Returns:
        ``[grid_t]`` int64 offsets to add to the video's start position.
    """
    return np.floor(np.arange(grid_t) * second_per_grid_ts * tokens_per_second).astype(np.int64)

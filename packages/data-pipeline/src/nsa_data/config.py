"""Typed, frozen configuration for every knob of the data pipeline.

This module imports only pydantic and the standard library, so recipes, flows and tests can build and
validate configs without loading PyAV, numpy or pyarrow. ``params.yaml`` sections (``synth``, ``prepare``,
``ingest``) round-trip through :class:`DataParams`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SPATIAL_FACTOR = 28
"""Side lengths are multiples of patch (14) x spatial merge (2)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SamplingConfig(_Frozen):
    """How a video becomes Qwen2.5-VL video inputs (VideoNSA defaults).

    The frame count follows the Qwen/VideoNSA eval rule: ``clamp(duration·fps, min_frames, max_frames, total)``
    rounded down to a multiple of ``temporal_patch_size``; frames are spread uniformly over the video.
    """

    fps: float = Field(4.0, gt=0)
    """Target sampling rate in frames per second (VideoNSA trains at 4 fps)."""
    min_frames: int = Field(4, ge=1)
    """Lower bound on the sampled frame count (rounded up to a multiple of ``temporal_patch_size``)."""
    max_frames: int = Field(768, ge=2)
    """Upper bound on the sampled frame count (rounded down to a multiple of ``temporal_patch_size``)."""
    min_pixels: int = Field(56 * 56, ge=SPATIAL_FACTOR * SPATIAL_FACTOR)
    """Smart-resize lower bound on H·W of a sampled frame."""
    max_pixels: int = Field(50176, ge=SPATIAL_FACTOR * SPATIAL_FACTOR)
    """Smart-resize upper bound on H·W; 50176 = 224² gives 64 LLM tokens per 2-frame group."""
    temporal_patch_size: int = Field(2, ge=1)
    """Frames merged into one temporal patch; the frame count is made a multiple of it."""
    patch_size: int = Field(14, ge=1)
    """ViT patch side in pixels."""
    merge_size: int = Field(2, ge=1)
    """Spatial merge of the ViT output (2x2 patches per LLM token)."""
    uniform: Literal["auto", "index", "time"] = "auto"
    """Spread frames uniformly over frame indices (Qwen's rule), over presentation time, or ``auto``:
    index for constant-frame-rate streams and time for variable-frame-rate ones."""
    apply_rotation: bool = True
    """Rotate frames by the container's display-matrix rotation, as players and ffmpeg do."""
    seek: bool = True
    """Jump to the next keyframe when a whole GOP holds no sampled frame (long videos, few frames); the decoded
    frames are the same as with one sequential pass."""
    decode_threads: int = Field(0, ge=0)
    """FFmpeg decoder threads; 0 lets FFmpeg choose."""

    @model_validator(mode="after")
    def _check(self) -> SamplingConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"min_pixels ({self.min_pixels}) must be <= max_pixels ({self.max_pixels}); lower min_pixels "
                "(VideoNSA's eval wrapper passes 200704 but max_pixels 50176 wins, i.e. min_pixels <= 50176)"
            )
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) must be <= max_frames ({self.max_frames})")
        if self.max_frames < self.temporal_patch_size:
            raise ValueError(f"max_frames ({self.max_frames}) must be >= temporal_patch_size")
        return self

    @property
    def factor(self) -> int:
        """Side-length multiple of a resized frame (patch_size × merge_size)."""
        return self.patch_size * self.merge_size


class SynthConfig(_Frozen):
    """The synthetic long-video benchmark: TimeScope-like multiple-choice tasks on generated mp4 files."""

    seed: int = 0
    """Master seed; every video and question is a pure function of (seed, index)."""
    num_videos: int = Field(48, ge=1)
    """Videos to generate; each carries one question."""
    durations: tuple[float, ...] = (4.0, 8.0, 16.0)
    """Video lengths in seconds, cycled over videos; the length groups of the benchmark."""
    fps: float = Field(8.0, gt=0)
    """Frame rate of the written videos."""
    width: int = Field(112, ge=32)
    """Frame width in pixels (even; a multiple of 28 avoids resampling at sampling time)."""
    height: int = Field(112, ge=32)
    """Frame height in pixels (even)."""
    tasks: tuple[Literal["needle", "order", "count", "spatial"], ...] = ("needle", "order", "count", "spatial")
    """Task kinds, cycled over videos."""
    event_seconds: float = Field(1.0, gt=0)
    """How long an inserted event stays on screen; fixed, so its share of the video shrinks with length."""
    distractors: int = Field(2, ge=0)
    """Grey shapes drifting across every frame, so a single frame is never trivially empty."""
    test_fraction: float = Field(0.25, ge=0, le=1)
    """Share of each (task, length) cell that goes to the test split."""
    crf: int = Field(23, ge=0, le=51)
    """libx264 constant rate factor of the written files."""
    num_workers: int = Field(1, ge=1)
    """Processes that render and encode videos."""

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even for yuv420p, got {self.width}x{self.height}")
        if not self.durations or min(self.durations) <= 0:
            raise ValueError(f"durations must be non-empty and positive, got {self.durations}")
        if min(self.durations) < 3 * self.event_seconds:
            raise ValueError(
                f"every duration must be >= 3 x event_seconds ({3 * self.event_seconds}s) so events fit; "
                f"got {min(self.durations)}s"
            )
        if not self.tasks:
            raise ValueError("tasks must name at least one of needle, order, count, spatial")
        return self


class ReadableRule(_Frozen):
    """Drop rows whose video is missing or cannot be probed."""

    rule: Literal["readable"] = "readable"


class NonEmptyRule(_Frozen):
    """Drop rows with an empty question or answer."""

    rule: Literal["non_empty"] = "non_empty"


class UniqueIdRule(_Frozen):
    """Drop rows whose id was already seen (the first one is kept)."""

    rule: Literal["unique_id"] = "unique_id"


class SampledFramesRule(_Frozen):
    """Keep rows whose video yields ``min ≤ floor(duration·fps) ≤ max`` frames (VideoNSA: 4 fps, 350–550)."""

    rule: Literal["sampled_frames"] = "sampled_frames"
    fps: float = Field(4.0, gt=0)
    """Sampling rate at which frames are counted."""
    min: int = Field(350, ge=0)
    """Smallest kept frame count."""
    max: int = Field(550, ge=0)
    """Largest kept frame count."""


class DurationRule(_Frozen):
    """Keep rows whose video duration in seconds lies in ``[min_s, max_s]`` (``max_s`` None: no upper bound)."""

    rule: Literal["duration"] = "duration"
    min_s: float = Field(0.0, ge=0)
    """Shortest kept duration."""
    max_s: float | None = Field(None, gt=0)
    """Longest kept duration."""


FilterRule = Annotated[
    ReadableRule | NonEmptyRule | UniqueIdRule | SampledFramesRule | DurationRule, Field(discriminator="rule")
]


def videonsa_rules() -> tuple[FilterRule, ...]:
    """The VideoNSA training filter: readable, non-empty, unique, 350–550 frames at 4 fps."""
    return (ReadableRule(), NonEmptyRule(), UniqueIdRule(), SampledFramesRule())


class IngestConfig(_Frozen):
    """Ingest LLaVA-Video-178K / ms-swift JSON(L) into the normalized manifest."""

    source: str = "llava-video-178k"
    """Dataset name written to the ``source`` column."""
    split: str = "train"
    """Split written to the ``split`` column."""
    rules: tuple[FilterRule, ...] = Field(default_factory=videonsa_rules)
    """Filter rules, applied in order; the report counts what each one removed."""
    num_workers: int = Field(1, ge=1)
    """Processes that probe videos."""


class PrepareConfig(_Frozen):
    """Turn a manifest into content-addressed shards of model-ready tensors."""

    sampling: SamplingConfig = SamplingConfig()
    """How each video is sampled and resized."""
    shard_size: int = Field(16, ge=1)
    """Videos per shard."""
    store: Literal["frames", "pixel_values"] = "frames"
    """``frames`` stores resized uint8 frames (4x smaller; patchified bit-exactly on read),
    ``pixel_values`` stores the float32 ``pixel_values_videos`` rows."""
    num_workers: int = Field(2, ge=1)
    """Processes that decode videos and write shards."""
    splits: tuple[str, ...] = ()
    """Only prepare rows of these splits; empty means all."""


class DataParams(BaseModel):
    """The data sections of ``params.yaml``; other top-level sections (train, evaluate, ...) are kept as-is."""

    model_config = ConfigDict(frozen=True, extra="allow")

    synth: SynthConfig = SynthConfig()
    """``nsa-data synth``: the synthetic benchmark."""
    prepare: PrepareConfig = PrepareConfig()
    """``nsa-data prepare``: sampling and sharding."""
    ingest: IngestConfig = IngestConfig()
    """``nsa-data ingest``: annotation parsing and filter rules."""


def load_params(path: str | Path) -> DataParams:
    """Load and validate a params file.

    Args:
        path: YAML file with top-level ``synth``/``prepare``/``ingest`` sections (all optional).

    Returns:
        The validated params.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a YAML mapping or a field is invalid (the message names the field).
    """
    from nsa_core.configio import read_yaml_mapping

    raw = read_yaml_mapping(path, "params file")
    try:
        return DataParams.model_validate(raw)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err

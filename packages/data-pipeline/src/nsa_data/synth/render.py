"""Frame rendering for the synthetic benchmark: coloured event shapes over drifting grey distractors.

Everything is a pure function of a :class:`Scene`, so a video is reproducible from its description alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (60, 90, 240),
    "yellow": (235, 220, 40),
    "magenta": (215, 50, 205),
    "cyan": (40, 215, 215),
}
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def shape_mask(shape: str, size: int) -> np.ndarray:
    """``[size, size]`` bool mask of a named shape.

    Args:
        shape: One of :data:`SHAPES`.
        size: Side of the bounding square in pixels.

    Returns:
        The mask.
    """
    c = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(c, c, indexing="ij")
    masks = {
        "circle": x**2 + y**2 <= 0.9**2,
        "square": (np.abs(x) <= 0.8) & (np.abs(y) <= 0.8),
        "triangle": (y <= 0.8) & (y >= -0.8) & (np.abs(x) <= (y + 0.8) / 1.6 * 0.9),
        "diamond": np.abs(x) + np.abs(y) <= 0.9,
        "cross": ((np.abs(x) <= 0.28) | (np.abs(y) <= 0.28)) & (np.abs(x) <= 0.9) & (np.abs(y) <= 0.9),
    }
    if shape not in masks:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    return masks[shape]


@dataclass(frozen=True)
class Event:
    """A coloured shape shown from ``start`` to ``end`` seconds with its top-left corner at ``(y, x)``."""

    shape: str
    color: str
    start: float
    end: float
    y: int
    x: int
    size: int

    @property
    def name(self) -> str:
        """Human-readable object name, e.g. ``red circle``."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Distractor:
    """A grey shape moving at constant velocity (pixels per second), bouncing off the frame edges."""

    shape: str
    gray: int
    y0: float
    x0: float
    vy: float
    vx: float
    size: int


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one video."""

    height: int
    width: int
    fps: float
    num_frames: int
    background: tuple[int, int, int]
    events: tuple[Event, ...]
    distractors: tuple[Distractor, ...]


def _bounce(p0: float, v: float, t: float, span: float) -> int:
    if span <= 0:
        return 0
    p = (p0 + v * t) % (2 * span)
    return round(p if p <= span else 2 * span - p)


def _paste(frame: np.ndarray, mask: np.ndarray, y: int, x: int, rgb: tuple[int, int, int]) -> None:
    h, w = mask.shape
    region = frame[y : y + h, x : x + w]
    region[mask[: region.shape[0], : region.shape[1]]] = rgb


def render(scene: Scene) -> Iterator[np.ndarray]:
    """Yield the scene's frames one by one (``[H, W, 3]`` uint8), never holding the whole video.

    Args:
        scene: The scene.

    Yields:
        Frames in display order.
    """
    masks: dict[tuple[str, int], np.ndarray] = {}

    def mask(shape: str, size: int) -> np.ndarray:
        if (shape, size) not in masks:
            masks[(shape, size)] = shape_mask(shape, size)
        return masks[(shape, size)]

    for i in range(scene.num_frames):
        t = i / scene.fps
        frame = np.empty((scene.height, scene.width, 3), dtype=np.uint8)
        frame[:] = scene.background
        for d in scene.distractors:
            y = _bounce(d.y0, d.vy, t, scene.height - d.size)
            x = _bounce(d.x0, d.vx, t, scene.width - d.size)
            _paste(frame, mask(d.shape, d.size), y, x, (d.gray, d.gray, d.gray))
        for e in scene.events:
            if e.start <= t < e.end:
                _paste(frame, mask(e.shape, e.size), e.y, e.x, COLORS[e.color])
        yield frame

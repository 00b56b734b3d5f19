"""TimeScope-like tasks: needle (what appeared?), order (which came first/last?), count (how many times?) and
spatial (where?). Each task places short events of fixed length into the video, so the share of frames that
carries the answer shrinks as the video grows; counts and event numbers also grow with length.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from nsa_data.config import SynthConfig
from nsa_data.synth.render import COLORS, QUADRANTS, SHAPES, Event

OBJECTS = tuple(product(COLORS, SHAPES))
"""Every (colour, shape) pair an event can use."""

GAP_SECONDS = 0.25
"""Blank time between two slots, so consecutive appearances stay separable after sampling."""


@dataclass(frozen=True)
class TaskSample:
    """The events of one video and its multiple-choice question."""

    events: tuple[Event, ...]
    question: str
    options: tuple[str, ...]
    answer_index: int


def _objects(rng: np.random.Generator, k: int) -> list[tuple[str, str]]:
    return [OBJECTS[i] for i in rng.choice(len(OBJECTS), size=k, replace=False)]


def _slots(rng: np.random.Generator, duration: float, event_seconds: float, k: int) -> list[float]:
    """Start times of ``k`` non-overlapping event slots, in increasing order."""
    slot = event_seconds + GAP_SECONDS
    n = int(duration // slot)
    chosen = np.sort(rng.choice(n, size=min(k, n), replace=False))
    return [float(c * slot + GAP_SECONDS / 2) for c in chosen]


def num_slots(duration: float, event_seconds: float) -> int:
    """How many events fit in a video without overlapping."""
    return int(duration // (event_seconds + GAP_SECONDS))


def _event(
    rng: np.random.Generator, obj: tuple[str, str], start: float, config: SynthConfig, quadrant: int | None = None
) -> Event:
    size = max(8, round(0.3 * min(config.height, config.width)))
    if quadrant is None:
        y = int(rng.integers(0, config.height - size + 1))
        x = int(rng.integers(0, config.width - size + 1))
    else:
        qy, qx = divmod(quadrant, 2)
        h2, w2 = config.height // 2, config.width // 2
        y = qy * h2 + int(rng.integers(0, h2 - size + 1))
        x = qx * w2 + int(rng.integers(0, w2 - size + 1))
    color, shape = obj
    return Event(shape=shape, color=color, start=start, end=start + config.event_seconds, y=y, x=x, size=size)


def _name(obj: tuple[str, str]) -> str:
    return f"{obj[0]} {obj[1]}"


def _shuffled(rng: np.random.Generator, options: list[str], correct: str) -> tuple[tuple[str, ...], int]:
    order = rng.permutation(len(options))
    shuffled = tuple(options[i] for i in order)
    return shuffled, shuffled.index(correct)


def needle(rng: np.random.Generator, duration: float, config: SynthConfig) -> TaskSample:
    """One short event; the question asks which object it was among four."""
    objs = _objects(rng, 4)
    (start,) = _slots(rng, duration, config.event_seconds, 1)
    options, answer = _shuffled(rng, [_name(o) for o in objs], _name(objs[0]))
    question = "Which object briefly appeared in the video?"
    return TaskSample((_event(rng, objs[0], start, config),), question, options, answer)


def order(rng: np.random.Generator, duration: float, config: SynthConfig) -> TaskSample:
    """Up to four objects appear one after another; the question asks which came first (or last)."""
    objs = _objects(rng, 4)
    starts = _slots(rng, duration, config.event_seconds, 4)
    events = tuple(_event(rng, o, s, config) for o, s in zip(objs, starts, strict=False))
    which = "first" if rng.random() < 0.5 else "last"
    target = events[0] if which == "first" else events[-1]
    options, answer = _shuffled(rng, [_name(o) for o in objs], target.name)
    return TaskSample(events, f"Which of these objects appeared {which} in the video?", options, answer)


def count(rng: np.random.Generator, duration: float, config: SynthConfig) -> TaskSample:
    """An object appears 1..c_max times (c_max grows with length) among decoy appearances of another object."""
    slots = num_slots(duration, config.event_seconds)
    c_max = max(2, min(6, slots - 1))
    c = int(rng.integers(1, c_max + 1))
    decoys = int(rng.integers(0, min(2, slots - c) + 1))
    target, decoy = _objects(rng, 2)
    starts = _slots(rng, duration, config.event_seconds, c + decoys)
    kinds = [target] * c + [decoy] * decoys
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    events = tuple(_event(rng, o, s, config) for o, s in zip(kinds, starts, strict=True))
    others = [n for n in range(1, max(c_max, 4) + 1) if n != c]
    counts = sorted([c, *(int(v) for v in rng.choice(others, size=3, replace=False))])
    options = tuple(str(v) for v in counts)
    question = f"How many times did the {_name(target)} appear in the video?"
    return TaskSample(events, question, options, options.index(str(c)))


def spatial(rng: np.random.Generator, duration: float, config: SynthConfig) -> TaskSample:
    """An object appears once in one quadrant, a decoy object in another; the question asks where the first was."""
    target, decoy = _objects(rng, 2)
    quadrant, decoy_quadrant = (int(q) for q in rng.choice(4, size=2, replace=False))
    starts = [float(s) for s in rng.permutation(_slots(rng, duration, config.event_seconds, 2))]
    events = (
        _event(rng, target, starts[0], config, quadrant),
        _event(rng, decoy, starts[1], config, decoy_quadrant),
    )
    question = f"Where in the frame did the {_name(target)} appear?"
    return TaskSample(tuple(sorted(events, key=lambda e: e.start)), question, QUADRANTS, quadrant)


TASKS = {"needle": needle, "order": order, "count": count, "spatial": spatial}

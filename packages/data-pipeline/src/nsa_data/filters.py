"""Manifest filter rules: each rule keeps or removes rows and explains every removal."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nsa_data.config import DurationRule, FilterRule, NonEmptyRule, ReadableRule, SampledFramesRule, UniqueIdRule
from nsa_data.manifest import ManifestRow


def _why_removed(rule: FilterRule, row: ManifestRow, probe: dict[str, Any], seen: set[str]) -> str | None:
    """None to keep the row, else the reason for removing it."""
    if isinstance(rule, ReadableRule):
        return probe["error"]["reason"] if "error" in probe else None
    if isinstance(rule, NonEmptyRule):
        return None if row.question.strip() and row.answer.strip() else "empty question or answer"
    if isinstance(rule, UniqueIdRule):
        if row.id in seen:
            return f"duplicate id {row.id}"
        seen.add(row.id)
        return None
    if row.duration is None:
        return "duration unknown (the video could not be probed)"
    if isinstance(rule, SampledFramesRule):
        n = math.floor(row.duration * rule.fps)
        return (
            None if rule.min <= n <= rule.max else f"{n} frames at {rule.fps:g} fps, outside [{rule.min}, {rule.max}]"
        )
    if isinstance(rule, DurationRule):
        upper = rule.max_s if rule.max_s is not None else math.inf
        return None if rule.min_s <= row.duration <= upper else f"duration {row.duration:.2f}s outside the range"
    raise TypeError(f"unknown rule {rule!r}")


@dataclass
class RuleReport:
    """What one rule did: rows before, rows removed, and a few example ids."""

    rule: dict[str, Any]
    before: int
    removed: int = 0
    examples: list[str] = field(default_factory=list)


def apply_rules(
    rows: list[ManifestRow], rules: tuple[FilterRule, ...], probes: dict[str, dict[str, Any]]
) -> tuple[list[ManifestRow], list[RuleReport], list[dict[str, str]]]:
    """Apply rules in order.

    Args:
        rows: Rows with duration/fps/frames filled in where the probe succeeded.
        rules: Rules from the config.
        probes: Probe result per row ``video_path`` (``{"error": reject}`` when probing failed).

    Returns:
        ``(kept rows, one report per rule, reject records)``.
    """
    reports, rejects = [], []
    for rule in rules:
        report = RuleReport(rule=rule.model_dump(mode="json"), before=len(rows))
        kept, seen = [], set()
        for row in rows:
            reason = _why_removed(rule, row, probes.get(row.video_path, {}), seen)
            if reason is None:
                kept.append(row)
                continue
            report.removed += 1
            if len(report.examples) < 5:
                report.examples.append(row.id)
            rejects.append(
                {
                    "id": row.id,
                    "path": row.video_path,
                    "stage": f"filter:{rule.rule}",
                    "kind": rule.rule,
                    "reason": reason,
                }
            )
        reports.append(report)
        rows = kept
    return rows, reports, rejects

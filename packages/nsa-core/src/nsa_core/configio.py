"""Reading config files and applying ``--set key=value`` overrides, one way for every package's CLI.

Configs are frozen pydantic models; the YAML recipes, the sections of DVC's ``params.yaml`` and Prefect
parameters are plain mappings validated by those models. These helpers only build the mappings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is ``{}``).

    Args:
        path: The YAML file.
        what: How error messages name the file (``"config file"``, ``"params file"``).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file does not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; pass an existing YAML file")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a YAML mapping, got {type(raw).__name__}")
    return raw


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base``: nested mappings merge, everything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_assignment(item: str) -> dict[str, Any]:
    """``"optim.lr=1e-4"`` -> ``{"optim": {"lr": 0.0001}}``; the value is parsed as YAML.

    Raises:
        ValueError: when ``item`` is not ``key=value``.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set expects key=value with a dotted key (e.g. --set loop.max_steps=20), got {item!r}")
    value: Any = yaml.safe_load(raw)
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def apply_assignments(data: Mapping[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """``data`` with every ``key=value`` assignment merged in, in order (``data`` is not modified)."""
    merged = dict(data)
    for item in assignments:
        merged = deep_merge(merged, parse_assignment(item))
    return merged

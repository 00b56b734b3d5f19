"""Load a local Qwen2.5-VL or VideoNSA checkpoint as an NSA model with stock ``from_pretrained`` plus the gates.

Stock ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` loads every stock weight (with its own
checkpoint key conversions) and skips the unknown gate tensors; :func:`convert_to_nsa` then adds
gates and the settings stored in ``config.nsa`` (defaults for a dense checkpoint), and the gate
tensors are read from the safetensors files by layer index. A subclass would instead count as
custom code in transformers 5 and lose the stock key conversions.
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.utils import logging as hf_logging

from nsa_core.models.qwen2_5_vl.convert import convert_to_nsa

logger = logging.getLogger(__name__)

_GATE_KEY = re.compile(r"layers\.(\d+)\.self_attn\.nsa_gate\.(.+)$")


@contextmanager
def _quiet_transformers():
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return sorted({path / name for name in json.loads(index.read_text())["weight_map"].values()})
    return sorted(path.glob("*.safetensors"))


def _load_gates(model: Qwen2_5_VLForConditionalGeneration, path: Path) -> int:
    """Copy each ``layers.<i>.self_attn.nsa_gate.<param>`` checkpoint tensor into the model; returns the count."""
    layers = model.model.language_model.layers
    loaded = 0
    for file in _safetensors_files(path):
        with safe_open(str(file), framework="pt") as tensors:
            for key in tensors.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                match = _GATE_KEY.search(key)
                if match is None:
                    continue
                target = layers[int(match.group(1))].self_attn.nsa_gate.get_parameter(match.group(2))
                with torch.no_grad():
                    target.copy_(tensors.get_tensor(key))
                loaded += 1
    return loaded


def load_nsa_model(path: str | os.PathLike, **from_pretrained_kwargs: Any) -> Qwen2_5_VLForConditionalGeneration:
    """Load a local Qwen2.5-VL or VideoNSA checkpoint as an NSA model; nothing is downloaded.

    A dense checkpoint gets default settings and fresh gates (≈ 0.5); a checkpoint saved from a
    converted model gets its settings and gates back.

    Args:
        path: a directory written by ``save_pretrained`` (safetensors).
        **from_pretrained_kwargs: passed to ``from_pretrained`` (e.g. ``dtype=torch.bfloat16``).

    Returns:
        The converted model in eval mode, in the attention mode stored in ``config.nsa`` (``nsa`` by default).

    Raises:
        ValueError: when stock weights are missing or mismatched, or the checkpoint holds only some of the gates.
    """
    path = Path(path)
    from_pretrained_kwargs.setdefault("local_files_only", True)
    with _quiet_transformers():
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, output_loading_info=True, **from_pretrained_kwargs
        )
    missing = sorted(info["missing_keys"])
    if missing or info["mismatched_keys"]:
        raise ValueError(
            f"checkpoint at {path} does not match Qwen2.5-VL: missing {missing[:5]}, mismatched "
            f"{list(info['mismatched_keys'])[:5]}; pass the directory of a Qwen2.5-VL save_pretrained"
        )
    unexpected = sorted(k for k in info["unexpected_keys"] if ".nsa_gate." not in k)
    if unexpected:
        logger.warning(
            "ignoring %d unexpected checkpoint tensors in %s, e.g. %s", len(unexpected), path, unexpected[:3]
        )
    convert_to_nsa(model)
    expected = sum(1 for name, _ in model.named_parameters() if ".nsa_gate." in name)
    loaded = _load_gates(model, path)
    if loaded not in (0, expected):
        raise ValueError(f"checkpoint at {path} holds {loaded} gate tensors but the model expects {expected}")
    if loaded == 0:
        logger.info("no NSA gates in %s: gates start at their ≈ 0.5 initialisation", path)
    return model.eval()

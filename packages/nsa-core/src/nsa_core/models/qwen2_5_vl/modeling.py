"""Loading: a stock Qwen2.5-VL subclass that attaches the gates in ``__init__``, so ``from_pretrained`` fills them."""

from __future__ import annotations

import os
from typing import Any

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from nsa_core.models.qwen2_5_vl.convert import convert_to_nsa


class VideoNSAForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Stock ``Qwen2_5_VLForConditionalGeneration`` converted by :func:`convert_to_nsa` in ``__init__``.

    The settings come from ``config.nsa`` (VideoNSA defaults when absent). Gate weights found in a
    checkpoint are loaded; missing ones (a dense Qwen2.5-VL checkpoint) are initialised by
    transformers' ``_init_weights``: N(0, initializer_range = 0.02) weights and zero biases, the same
    as :class:`nsa_core.layers.NSAGate`, so the gates start at ≈ 0.5.
    """

    def __init__(self, config: Qwen2_5_VLConfig) -> None:
        super().__init__(config)
        convert_to_nsa(self)


def load_nsa_model(path: str | os.PathLike, **from_pretrained_kwargs: Any) -> VideoNSAForConditionalGeneration:
    """Load a local Qwen2.5-VL or VideoNSA checkpoint as an NSA model; nothing is downloaded.

    Args:
        path: a directory written by ``save_pretrained`` (dense Qwen2.5-VL or a converted model).
        **from_pretrained_kwargs: passed to ``from_pretrained`` (e.g. ``dtype=torch.bfloat16``, ``device_map``).

    Returns:
        The model in eval mode, in the attention mode stored in its ``config.nsa`` (``nsa`` by default).
    """
    from_pretrained_kwargs.setdefault("local_files_only", True)
    model = VideoNSAForConditionalGeneration.from_pretrained(path, **from_pretrained_kwargs)
    return convert_to_nsa(model)

"""Model loading per method, video inputs and greedy generation for one sample (batch 1).

Shape legend: T prompt tokens, P patch rows of the video (``t·h·w``), N new tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nsa_eval.config import EvalConfig, MethodConfig, TaskConfig
from nsa_eval.tasks.base import Sample, Task

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checkpoint_has_nsa(model_dir: str | Path) -> bool:
    """Whether a checkpoint was saved from an NSA model (its ``config.json`` carries ``nsa`` settings)."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} does not exist; model_dir must be a save_pretrained folder")
    return "nsa" in json.loads(config.read_text())


def load_model(config: EvalConfig) -> Any:
    """Load the checkpoint and put it in the method's attention mode with its overrides.

    Args:
        config: The evaluation; ``method`` decides the mode.

    Returns:
        The model in eval mode on ``config.device``.

    Raises:
        ValueError: when the method does not fit the checkpoint (``dense-transfer`` needs NSA-trained weights,
            ``nsa-at-test`` dense ones) or an override is invalid.
    """
    from nsa_core.models.qwen2_5_vl import load_nsa_model, update_nsa_settings

    method: MethodConfig = config.method
    trained_nsa = checkpoint_has_nsa(config.model_dir)
    if method.name == "dense-transfer" and not trained_nsa:
        raise ValueError(f"method 'dense-transfer' needs NSA-trained weights; {config.model_dir} is dense: use 'dense'")
    if method.name == "nsa-at-test" and trained_nsa:
        raise ValueError(f"method 'nsa-at-test' needs dense weights; {config.model_dir} is NSA-trained: use 'nsa'")
    model = load_nsa_model(config.model_dir, dtype=DTYPES[config.dtype])
    update_nsa_settings(model, **method.overrides())
    return model.to(config.device).eval()


def load_tokenizer(config: EvalConfig) -> Any:
    """The ``VideoQATokenizer`` saved with the checkpoint (or in ``tokenizer_dir``)."""
    from nsa_data.text import TOKENIZER_FILE, VideoQATokenizer

    directory = Path(config.tokenizer_dir or config.model_dir)
    if (directory / TOKENIZER_FILE).is_file():
        return VideoQATokenizer.load(directory)
    return VideoQATokenizer.from_pretrained(directory)


@dataclass
class VideoInputs:
    """Model inputs of one video: ``pixel_values_videos`` [P, 1176], ``video_grid_thw`` [1, 3], seconds per grid."""

    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor
    second_per_grid_ts: float

    @property
    def num_tokens(self) -> int:
        """LLM video tokens, ``t·h·w / 4``."""
        return int(self.video_grid_thw.prod()) // 4


class VideoSource:
    """Videos of a task: from prepared shards when the sample has them and no resampling is asked, else decoded."""

    def __init__(self, task: Task, config: TaskConfig) -> None:
        """Bind to a task.

        Args:
            task: The task (its F / TPF defaults apply when the config leaves them None).
            config: The task config.
        """
        self.task, self.config = task, config
        self._shards: Any = None

    def sampling(self) -> Any:
        """The ``nsa_data`` sampling config: ``max_frames = F``, ``max_pixels = TPF·784`` (spec §9.3)."""
        from nsa_data.config import SamplingConfig

        frames = self.config.frames or self.task.frames or 768
        tpf = self.config.tokens_per_frame or self.task.tokens_per_frame
        changes: dict[str, Any] = {"fps": self.config.fps or 4.0, "max_frames": frames}
        if tpf is not None:
            changes.update(max_pixels=tpf * 784, min_pixels=min(3136, tpf * 784))
        return SamplingConfig(**changes)

    def load(self, sample: Sample) -> VideoInputs:
        """The video inputs of ``sample``.

        Raises:
            nsa_data.errors.VideoReadError: when the video cannot be decoded.
        """
        if "shard" in sample.extra and not self.config.resample:
            from nsa_data.dataset import ShardDataset

            self._shards = self._shards or ShardDataset(self.config.root)
            tensors = self._shards.video(sample.extra["video_key"], sample.extra["shard"])
            grid = torch.as_tensor(tensors["video_grid_thw"]).reshape(1, 3).long()
            pixels = torch.as_tensor(tensors["pixel_values_videos"]).float()
            return VideoInputs(pixels, grid, float(sample.extra["second_per_grid_ts"]))
        from nsa_data.video import sample_video

        sampled = sample_video(sample.video, self.sampling())
        grid = torch.as_tensor(sampled.video_grid_thw).reshape(1, 3).long()
        return VideoInputs(torch.from_numpy(sampled.pixel_values_videos).float(), grid, sampled.second_per_grid_ts)


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompt_ids: list[int], video: VideoInputs, max_new_tokens: int) -> list[int]:
    """Greedy decoding (temperature 0, 1 beam) of one prompt; returns the new ids up to ``<|im_end|>``.

    Args:
        model: A loaded model.
        tokenizer: ``VideoQATokenizer`` (``eos_id``, ``pad_id``, ``video_token_id``).
        prompt_ids: Prompt ids with the video placeholders.
        video: The video inputs.
        max_new_tokens: Generation length.

    Returns:
        The generated ids without the prompt and the end token.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    input_ids = torch.tensor([prompt_ids], device=device)  # [1, T]
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        mm_token_type_ids=(input_ids == tokenizer.video_token_id).long() * 2,
        pixel_values_videos=video.pixel_values_videos.to(device, dtype),  # [P, 1176]
        video_grid_thw=video.video_grid_thw.to(device),
        second_per_grid_ts=torch.tensor([video.second_per_grid_ts], device=device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
        suppress_tokens=[tokenizer.video_token_id, tokenizer.image_token_id],
    )
    new = out[0, input_ids.shape[1] :].tolist()  # [N]
    return new[: new.index(tokenizer.eos_id)] if tokenizer.eos_id in new else new

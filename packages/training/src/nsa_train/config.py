"""Typed, frozen training configuration; recipes in ``configs/train/*.yaml`` validate against :class:`TrainConfig`.

One config system for the CLI, DVC and Prefect: a recipe file, then the ``train:`` section of ``params.yaml``
and then ``--set key=value`` overrides are deep-merged and validated by :func:`load_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nsa_core import NSAConfig
from nsa_core.configio import apply_assignments, deep_merge, read_yaml_mapping
from nsa_core.tracking import TrackingConfig


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TinyModelConfig(_Frozen):
    """A random-init Qwen2.5-VL small enough for a 2-core CPU, with Qwen's 7 query heads per KV head."""

    hidden_size: int = Field(112, ge=8)
    """LLM width; must be divisible by ``num_attention_heads``."""
    intermediate_size: int = Field(224, ge=8)
    """LLM MLP width."""
    num_hidden_layers: int = Field(2, ge=1)
    """LLM decoder layers."""
    num_attention_heads: int = Field(14, ge=1)
    """LLM query heads."""
    num_key_value_heads: int = Field(2, ge=1)
    """LLM KV heads (14 / 2 gives G = 7, as in Qwen2.5-VL-7B)."""
    mrope_section: tuple[int, int, int] = (1, 1, 2)
    """M-RoPE frequency pairs for (t, h, w); must sum to head_dim / 2."""
    vision_depth: int = Field(2, ge=1)
    """Vision transformer blocks."""
    vision_hidden_size: int = Field(32, ge=8)
    """Vision transformer width."""
    vision_heads: int = Field(2, ge=1)
    """Vision attention heads."""

    @model_validator(mode="after")
    def _check(self) -> TinyModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        head_dim = self.hidden_size // self.num_attention_heads
        if sum(self.mrope_section) * 2 != head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim / 2 = {head_dim // 2}")
        return self


class ModelConfig(_Frozen):
    """Which model is trained and which parts of it."""

    source: Literal["tiny", "pretrained"] = "tiny"
    """``tiny``: random init from :attr:`tiny`; ``pretrained``: a local checkpoint at :attr:`path`."""
    path: str | None = None
    """Local Qwen2.5-VL / VideoNSA checkpoint folder (``source: pretrained``); nothing is downloaded."""
    tiny: TinyModelConfig = TinyModelConfig()
    """Shape of the tiny model (``source: tiny``)."""
    nsa: NSAConfig = NSAConfig()
    """NSA operator settings for the vision rows (VideoNSA: 64/64 compression, 32x64 selection, window 256)."""
    gate: Literal["mlp", "linear"] = "mlp"
    """Gate module (VideoNSA: the 2-layer MLP)."""
    attention: Literal["nsa", "dense"] = "nsa"
    """``nsa`` trains the hybrid attention; ``dense`` is the dense SFT baseline (gates unused and frozen)."""
    train_vision: bool = True
    """Train the vision tower (patch embedding and blocks)."""
    train_merger: bool = True
    """Train the patch merger that maps vision features to the LLM width."""
    train_llm: bool = True
    """Train the LLM (embeddings, decoder layers without gates, final norm, LM head)."""
    train_gates: bool = True
    """Train the NSA gates."""
    gradient_checkpointing: bool = False
    """Recompute LLM and vision activations in the backward pass (needed at 7B and long videos)."""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.source == "pretrained" and not self.path:
            raise ValueError("model.path must name a local checkpoint folder when model.source is 'pretrained'")
        if not (self.train_vision or self.train_merger or self.train_llm or self.train_gates):
            raise ValueError("everything is frozen: set at least one of model.train_vision/merger/llm/gates to true")
        return self


class DataConfig(_Frozen):
    """Training data: a folder prepared by ``nsa-data prepare``."""

    prepared_dir: str = "data/prepared"
    """Folder with ``index.parquet`` and shards (relative paths are resolved against the working directory)."""
    splits: tuple[str, ...] = ("train",)
    """Index splits used for training."""
    tokenizer: Literal["local", "pretrained"] = "local"
    """``local``: a byte-level BPE trained on the prepared questions; ``pretrained``: the checkpoint's tokenizer."""
    vocab_size: int = Field(512, ge=300)
    """Vocabulary of the local tokenizer (also the tiny model's vocabulary)."""
    max_examples: int | None = Field(None, ge=1)
    """Use only the first N examples (smoke runs)."""


class OptimConfig(_Frozen):
    """AdamW with linear warm-up then cosine decay (VideoNSA: lr 1e-6, β 0.9/0.999, wd 0.01, clip 1.0, 10%)."""

    lr: float = Field(1e-6, gt=0)
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW β1, β2."""
    eps: float = Field(1e-8, gt=0)
    """AdamW ε."""
    weight_decay: float = Field(0.01, ge=0)
    """Decoupled weight decay (not applied to biases and norm weights)."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Max global gradient norm; ``None`` disables clipping."""
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """Share of optimizer steps spent in the linear warm-up."""
    warmup_start_factor: float = Field(1e-5, gt=0, le=1)
    """Learning-rate factor at step 0 of the warm-up."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Floor of the cosine as a fraction of ``lr``."""


class LoopConfig(_Frozen):
    """Steps, batching, precision and checkpoints."""

    seed: int = 0
    """Seed of the model init, the data order and every RNG."""
    epochs: int = Field(1, ge=1)
    """Passes over the data (VideoNSA: 1)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (also sets the schedule length); ``None``: epochs x steps per epoch."""
    micro_batch_size: int = Field(1, ge=1)
    """Examples per forward pass and rank."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step and rank (global batch = micro x accum x world size)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 autocast on GPU with fp32 master weights, fp32 on CPU."""
    log_every: int = Field(1, ge=1)
    """Log metrics every N optimizer steps."""
    save_every: int | None = Field(None, ge=1)
    """Write a resumable checkpoint every N optimizer steps (and at the end); ``None``: only at the end."""
    keep_checkpoints: int = Field(2, ge=1)
    """Most recent checkpoints kept on disk."""
    progress: bool = True
    """Show a progress bar on the console (rank 0)."""


class DistributedConfig(_Frozen):
    """How ranks share the model; the launch itself comes from torchrun or Ray (``nsa-train --launcher``)."""

    shard: Literal["auto", "fsdp", "none"] = "auto"
    """``fsdp``: FSDP2 ``fully_shard`` per decoder layer and vision block; ``none``: replicated with gradient
    all-reduce; ``auto``: FSDP on GPU with more than one rank, replicated otherwise."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend; ``auto``: nccl on GPU, gloo on CPU."""
    num_workers: int = Field(2, ge=1)
    """Ray Train workers (``--launcher ray``)."""
    use_gpu: bool = False
    """Ray Train workers get one GPU each."""


class TrainConfig(_Frozen):
    """The root config of a training run."""

    name: str = "videonsa"
    """Run name (MLflow run name and the default output folder name)."""
    output_dir: str | None = None
    """Checkpoints, final model and metrics; ``None``: ``<artifact root>/train/<name>``."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    loop: LoopConfig = LoopConfig()
    distributed: DistributedConfig = DistributedConfig()
    tracking: TrackingConfig = TrackingConfig()
    system_metrics: bool = True
    """Let MLflow sample CPU, memory (and GPU) usage of the run every 2 s."""

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.data.tokenizer == "pretrained" and self.model.source != "pretrained":
            raise ValueError(
                "data.tokenizer 'pretrained' needs model.source 'pretrained' (the tokenizer comes from it)"
            )
        return self

    def resolved_output_dir(self) -> Path:
        """:attr:`output_dir`, or ``<artifact root>/train/<name>``."""
        if self.output_dir is not None:
            return Path(self.output_dir)
        from nsa_core.tracking import artifact_root

        return artifact_root() / "train" / self.name


def load_config(
    path: str | Path | None = None, params: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Build a :class:`TrainConfig` from a recipe, the ``train:`` section of a params file and overrides.

    Args:
        path: Recipe YAML (e.g. ``configs/train/tiny.yaml``); ``None`` starts from the defaults.
        params: ``params.yaml`` whose optional ``train:`` section is merged over the recipe.
        overrides: ``key=value`` strings with dotted keys, applied last.

    Returns:
        The validated config.

    Raises:
        FileNotFoundError: when a file is missing.
        ValueError: when a file is not a mapping or a field is invalid (the message names the file and field).
    """
    raw: dict[str, Any] = read_yaml_mapping(path, "config file") if path is not None else {}
    source = str(path or "defaults")
    if params is not None:
        section = read_yaml_mapping(params, "params file").get("train") or {}
        if not isinstance(section, dict):
            raise ValueError(f"{params}: the train: section must be a mapping of TrainConfig fields")
        raw = deep_merge(raw, section)
        source += f" + {params}:train"
    raw = apply_assignments(raw, overrides)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"invalid training config ({source}, overrides {list(overrides)}): {error}") from error

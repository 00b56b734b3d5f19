"""Training data: prepared shards -> supervised examples, with a resumable, rank-aware sample order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nsa_data.dataset import ShardDataset
from nsa_data.text import VideoQATokenizer, build_training_example, collate, corpus_texts
from nsa_train.config import DataConfig, ModelConfig


def open_dataset(config: DataConfig) -> ShardDataset:
    """The prepared training split(s) as torch tensors.

    Raises:
        FileNotFoundError: when ``data.prepared_dir`` is not a prepared folder.
        ValueError: when the chosen splits hold no rows.
    """
    root = Path(config.prepared_dir)
    if not (root / "index.parquet").is_file():
        raise FileNotFoundError(
            f"data.prepared_dir {root} is not a prepared folder; run `nsa-data synth` and `nsa-data prepare` "
            "(or `dvc repro prepare`) first, or set data.prepared_dir"
        )
    dataset = ShardDataset(root, splits=config.splits, as_torch=True)
    if config.max_examples is not None:
        dataset.rows = dataset.rows[: config.max_examples]
    if not len(dataset):
        raise ValueError(f"data.splits {list(config.splits)} select no rows of {root}; check the index's split column")
    return dataset


def build_tokenizer(data: DataConfig, model: ModelConfig, dataset: ShardDataset) -> VideoQATokenizer:
    """The run's tokenizer: trained on every question of the prepared folder, or the checkpoint's own.

    The local tokenizer sees all splits' text (questions and options, not answers' correctness), so
    evaluation prompts never meet unknown words; it is deterministic for a given prepared folder.
    """
    if data.tokenizer == "pretrained":
        return VideoQATokenizer.from_pretrained(model.path)
    every_split = ShardDataset(dataset.root)
    return VideoQATokenizer.train(corpus_texts(every_split.rows), vocab_size=data.vocab_size)


class ExampleDataset:
    """Map-style dataset of :func:`nsa_data.text.build_training_example` outputs."""

    def __init__(self, shards: ShardDataset, tokenizer: VideoQATokenizer) -> None:
        """Wrap a shard dataset.

        Args:
            shards: Items with torch tensors.
            tokenizer: Tokenizer used for prompts and answers.
        """
        self.shards, self.tokenizer = shards, tokenizer

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return build_training_example(self.tokenizer, self.shards[index])

    def batch(self, indices: list[int]) -> dict[str, Any]:
        """A right-padded training batch of ``indices``."""
        return collate([self[i] for i in indices], self.tokenizer.pad_id, padding_side="right")


@dataclass(frozen=True)
class SampleOrder:
    """Which examples a rank sees: a seeded permutation per epoch, cut into micro-batches.

    Every rank gets the same number of micro-batches; the permutation is padded by wrapping around so
    that ``micro_batch_size × world_size`` divides it.
    """

    num_examples: int
    micro_batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1

    def permutation(self, epoch: int) -> list[int]:
        """The epoch's global order (same on every rank)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_examples, generator=generator).tolist()

    def micro_batches(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches of the epoch, in order."""
        order = self.permutation(epoch)
        chunk = self.micro_batch_size * self.world_size
        padded = -(-len(order) // chunk) * chunk
        order = (order * (padded // len(order) + 1))[:padded]
        mine = order[self.rank :: self.world_size]
        return [mine[i : i + self.micro_batch_size] for i in range(0, len(mine), self.micro_batch_size)]

    def steps_per_epoch(self, grad_accum: int) -> int:
        """Optimizer steps per epoch (a trailing partial accumulation is dropped)."""
        return len(self.micro_batches(0)) // grad_accum

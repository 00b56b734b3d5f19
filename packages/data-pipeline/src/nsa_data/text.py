"""Prompts and training examples for video multiple-choice QA, shared by training and evaluation.

The layout is Qwen2.5-VL's chat template with the video first::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<|vision_start|><|video_pad|>×N<|vision_end|>
    {question}\\nA. …\\nB. …\\n{instruction}<|im_end|>\\n<|im_start|>assistant\\n

Text between special tokens is encoded piece by piece, as Hugging Face tokenizers do after splitting on
special tokens. :class:`VideoQATokenizer` wraps either a byte-level BPE trained locally on the synthetic
corpus (no downloads) or the tokenizer of a local Qwen2.5-VL checkpoint.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_START, VISION_END, VIDEO_PAD, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
"""Qwen2.5-VL's special tokens used here; a locally trained tokenizer gives them ids 0 to 6 in this order."""
DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_INSTRUCTION = "Answer with the option's letter from the given choices directly."
IGNORE_INDEX = -100
"""Label of positions that carry no loss."""
TOKENIZER_FILE = "tokenizer.json"


class VideoQATokenizer:
    """A ``tokenizers.Tokenizer`` plus the ids of the chat and vision special tokens.

    Attributes:
        tokenizer: The wrapped fast tokenizer.
        vocab_size: Number of ids, special tokens included.
        pad_id: Padding id (``<|endoftext|>``).
        eos_id: End of an answer (``<|im_end|>``).
        video_token_id: ``<|video_pad|>``, repeated once per LLM video token.
        image_token_id: ``<|image_pad|>``.
        vision_start_id: ``<|vision_start|>``.
        vision_end_id: ``<|vision_end|>``.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        """Wrap a tokenizer that knows every token of :data:`SPECIAL_TOKENS`.

        Args:
            tokenizer: A ``tokenizers.Tokenizer``.

        Raises:
            ValueError: when a special token is missing (the message names it).
        """
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the Qwen2.5-VL special tokens {missing}; train or load a Qwen tokenizer")
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        self.pad_id, self.eos_id, self.im_start_id = ids[ENDOFTEXT], ids[IM_END], ids[IM_START]
        self.video_token_id, self.image_token_id = ids[VIDEO_PAD], ids[IMAGE_PAD]
        self.vision_start_id, self.vision_end_id = ids[VISION_START], ids[VISION_END]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512) -> VideoQATokenizer:
        """Train a byte-level BPE on ``texts`` (e.g. every question, option and prompt string of a corpus).

        Args:
            texts: Training corpus.
            vocab_size: Target vocabulary size, special tokens included; at least 300 (256 bytes + specials).

        Returns:
            The trained tokenizer; deterministic for the same texts.

        Raises:
            ValueError: when ``vocab_size`` is too small.
        """
        if vocab_size < 300:
            raise ValueError(f"vocab_size must be >= 300 (256 byte symbols + special tokens), got {vocab_size}")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(list(texts), trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, directory: str | Path) -> VideoQATokenizer:
        """Load a tokenizer written by :meth:`save`.

        Args:
            directory: Folder holding ``tokenizer.json``.

        Raises:
            FileNotFoundError: when the file is missing.
        """
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; save a tokenizer there with VideoQATokenizer.save")
        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> VideoQATokenizer:
        """Wrap the tokenizer of a local Qwen2.5-VL checkpoint (``AutoTokenizer``, local files only).

        Args:
            directory: A checkpoint folder with the tokenizer files.

        Raises:
            FileNotFoundError: when ``directory`` does not exist.
            ValueError: when the tokenizer is not a fast tokenizer or lacks the Qwen special tokens.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"checkpoint folder {directory} does not exist")
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"{directory} holds a slow tokenizer; a fast tokenizer (tokenizer.json) is required")
        return cls(backend)

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` into ``directory`` (created if needed); returns the file path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKENIZER_FILE
        self.tokenizer.save(str(path))
        return path

    def encode(self, text: str) -> list[int]:
        """Ids of plain text, without special tokens added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped unless ``skip_special_tokens`` is False."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def option_letter(index: int) -> str:
    """``0 -> "A"``, ``1 -> "B"``, ..."""
    if not 0 <= index < 26:
        raise ValueError(f"option index must be in [0, 26), got {index}")
    return string.ascii_uppercase[index]


def format_question(question: str, options: Sequence[str], instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The user text after the video: the question, one ``"A. option"`` line per option, the instruction."""
    lines = [question.strip(), *(f"{option_letter(i)}. {option}" for i, option in enumerate(options))]
    if instruction:
        lines.append(instruction)
    return "\n".join(lines)


def corpus_texts(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """Strings a local tokenizer should be trained on: the prompt scaffolding, questions, options and answers."""
    texts = ["system\n" + DEFAULT_SYSTEM, "user\n", "assistant\n", DEFAULT_INSTRUCTION, *string.ascii_uppercase]
    for item in items:
        texts.append(format_question(item["question"], list(item["options"])))
        texts.append(str(item["answer"]))
    return texts


def build_prompt_ids(
    tokenizer: VideoQATokenizer,
    question: str,
    options: Sequence[str],
    num_video_tokens: int,
    system: str = DEFAULT_SYSTEM,
    instruction: str = DEFAULT_INSTRUCTION,
) -> list[int]:
    """Ids of the chat prompt up to and including ``<|im_start|>assistant\\n``; the video comes before the text.

    Args:
        tokenizer: The tokenizer.
        question: Question text.
        options: Answer options, lettered A, B, ... in order.
        num_video_tokens: LLM video tokens of the video (``t·h·w / merge²``); ``<|video_pad|>`` is repeated this often.
        system: System message.
        instruction: Line appended after the options; empty for none.

    Returns:
        The prompt ids.

    Raises:
        ValueError: when ``num_video_tokens`` is negative or there are more than 26 options.
    """
    if num_video_tokens < 0:
        raise ValueError(f"num_video_tokens must be >= 0, got {num_video_tokens}")
    t = tokenizer
    video = [t.vision_start_id, *([t.video_token_id] * num_video_tokens), t.vision_end_id] if num_video_tokens else []
    return [
        t.im_start_id,
        *t.encode(f"system\n{system}"),
        t.eos_id,
        *t.encode("\n"),
        t.im_start_id,
        *t.encode("user\n"),
        *video,
        *t.encode(format_question(question, options, instruction)),
        t.eos_id,
        *t.encode("\n"),
        t.im_start_id,
        *t.encode("assistant\n"),
    ]


def build_training_example(tokenizer: VideoQATokenizer, item: Mapping[str, Any]) -> dict[str, Any]:
    """A supervised example: the prompt, then the answer letter and ``<|im_end|>``; only those carry labels.

    Args:
        tokenizer: The tokenizer.
        item: A :class:`nsa_data.dataset.ShardDataset` item with torch tensors (``as_torch=True``): ``question``,
            ``options``, ``answer`` (letter), ``num_video_tokens``, ``pixel_values_videos``, ``video_grid_thw``,
            ``second_per_grid_ts``.

    Returns:
        ``input_ids`` and ``labels`` (int64 ``[T]``), ``pixel_values_videos`` ``[P, 1176]``, ``video_grid_thw``
        ``[1, 3]`` and ``second_per_grid_ts`` ``[1]``.

    Raises:
        ValueError: when ``num_video_tokens`` disagrees with ``video_grid_thw``.
    """
    import torch

    grid = torch.as_tensor(item["video_grid_thw"]).reshape(-1, 3)
    expected = int(grid.prod(-1).sum()) // 4
    if int(item["num_video_tokens"]) != expected:
        raise ValueError(
            f"item {item.get('id', '?')}: num_video_tokens {item['num_video_tokens']} != t·h·w/4 = {expected} "
            "from video_grid_thw; re-run `nsa-data prepare`"
        )
    prompt = build_prompt_ids(tokenizer, item["question"], list(item["options"]), expected)
    answer = [*tokenizer.encode(str(item["answer"])), tokenizer.eos_id]
    return {
        "input_ids": torch.tensor(prompt + answer, dtype=torch.long),
        "labels": torch.tensor([IGNORE_INDEX] * len(prompt) + answer, dtype=torch.long),
        "pixel_values_videos": torch.as_tensor(item["pixel_values_videos"], dtype=torch.float32),
        "video_grid_thw": grid.to(torch.long),
        "second_per_grid_ts": torch.tensor([float(item["second_per_grid_ts"])] * grid.shape[0]),
    }


def collate(
    examples: Sequence[Mapping[str, Any]], pad_id: int, padding_side: Literal["right", "left"] = "right"
) -> dict[str, Any]:
    """Pad a list of examples into one batch (right padding for training, left for generation).

    Args:
        examples: Outputs of :func:`build_training_example` (``labels`` optional).
        pad_id: Id written into padded ``input_ids``; padded labels are ``-100``.
        padding_side: Where padding goes.

    Returns:
        ``input_ids``, ``attention_mask`` (and ``labels``) ``[B, T]``, plus the videos concatenated in order.

    Raises:
        ValueError: for an empty list or an unknown ``padding_side``.
    """
    import torch

    if not examples:
        raise ValueError("collate needs at least one example")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    T = max(len(e["input_ids"]) for e in examples)

    def pad(values: Any, fill: int) -> Any:
        filler = torch.full((T - len(values),), fill, dtype=torch.long)
        return torch.cat([values, filler] if padding_side == "right" else [filler, values])

    batch: dict[str, Any] = {
        "input_ids": torch.stack([pad(e["input_ids"], pad_id) for e in examples]),
        "attention_mask": torch.stack([pad(torch.ones_like(e["input_ids"]), 0) for e in examples]),
    }
    if all("labels" in e for e in examples):
        batch["labels"] = torch.stack([pad(e["labels"], IGNORE_INDEX) for e in examples])
    if all("pixel_values_videos" in e for e in examples):
        batch["pixel_values_videos"] = torch.cat([e["pixel_values_videos"] for e in examples])
        batch["video_grid_thw"] = torch.cat([e["video_grid_thw"] for e in examples])
        batch["second_per_grid_ts"] = torch.cat([e["second_per_grid_ts"] for e in examples])
    return batch

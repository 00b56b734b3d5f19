"""Deterministic answer parsers (spec §7). None means unparsable: the sample counts as wrong and is recorded.

The released lmms-eval code falls back to a random letter; nothing here is random.
"""

from __future__ import annotations

import re

ANSWER_PREFIXES: tuple[str, ...] = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
    "Answer:",
    "Option:",
)
"""lmms-eval's prefixes (LongVideoBench, TimeScope), removed before looking for a letter."""


def strip_prefixes(response: str, prefixes: tuple[str, ...] = ANSWER_PREFIXES) -> str:
    """Remove every answer prefix (case-insensitive) and surrounding whitespace.

    Args:
        response: Model output.
        prefixes: Phrases to remove.

    Returns:
        The stripped text.
    """
    text = response
    for prefix in prefixes:
        text = re.sub(re.escape(prefix), "", text, flags=re.IGNORECASE)
    return text.strip()


def first_letter(response: str, letters: str) -> str | None:
    """The first standalone option letter after prefix stripping (``"(B)"``, ``"B."``, ``"B"`` → ``B``).

    A letter counts only when no other letter touches it, so the ``A`` of ``"A cat"`` counts but the ``I`` of
    ``"It"`` does not (lmms-eval's bare ``[ABCDE]`` search reads ``"Because"`` as B).

    Args:
        response: Model output.
        letters: Valid letters, e.g. ``"ABCD"``.

    Returns:
        The letter, or None when there is none.
    """
    if not letters:
        return None
    match = re.search(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", strip_prefixes(response))
    return match.group(1) if match else None


def letter_or_option_text(response: str, options: tuple[str, ...], letters: str) -> str | None:
    """:func:`first_letter`, else the letter of the one option whose full text the response contains.

    Args:
        response: Model output.
        options: Option texts in letter order.
        letters: Letters of the options.

    Returns:
        The letter, or None (no letter and zero or several option texts found).
    """
    letter = first_letter(response, letters)
    if letter is not None:
        return letter
    text = response.lower()
    hits = [letters[i] for i, option in enumerate(options) if option and option.lower() in text]
    return hits[0] if len(hits) == 1 else None


def mlvu_letter(response: str, letters: str) -> str | None:
    """MLVU: the character before the first ``)``, else the whole stripped string; valid only if a letter.

    Args:
        response: Model output (the prompt ends with ``Best option: (``).
        letters: Valid letters.

    Returns:
        The letter, or None.
    """
    text = response.strip()
    candidate = text[text.index(")") - 1] if ")" in text and text.index(")") > 0 else text
    candidate = candidate.strip().strip("(").strip()
    return candidate if len(candidate) == 1 and candidate in letters else None


def first_word_letter(response: str, letters: str) -> str | None:
    """VSIBench multiple choice: the first word, without punctuation, must be an option letter.

    Args:
        response: Model output.
        letters: Valid letters.

    Returns:
        The letter, or None.
    """
    words = response.strip().split()
    if not words:
        return None
    word = words[0].strip(".,:;()[]").upper()
    return word if len(word) == 1 and word in letters else None


def first_number(response: str) -> float | None:
    """VSIBench numeric answers: the first number in the response (``"about 3.5 m"`` → 3.5).

    Args:
        response: Model output.

    Returns:
        The number, or None.
    """
    match = re.search(r"-?\d+(?:\.\d+)?", response.replace(",", ""))
    return float(match.group(0)) if match else None

"""Deterministic answer parsers: every benchmark's rule on hand-written responses, never a random fallback."""

from __future__ import annotations

import pytest

from nsa_eval.tasks.benchmarks import mean_relative_accuracy
from nsa_eval.tasks.parsing import first_letter, first_number, first_word_letter, letter_or_option_text, mlvu_letter


@pytest.mark.parametrize(
    ("response", "letters", "expected"),
    [
        pytest.param("B", "ABCD", "B", id="bare"),
        pytest.param("(C) a red square", "ABCD", "C", id="parenthesised"),
        pytest.param("The best answer is D.", "ABCD", "D", id="prefix"),
        pytest.param("Answer: A", "ABCD", "A", id="answer-prefix"),
        pytest.param("Because it moves, E", "ABCDE", "E", id="no-letter-inside-words"),
        pytest.param("It is unclear", "ABCD", None, id="unparsable"),
        pytest.param("F", "ABCDE", None, id="letter-out-of-range"),
        pytest.param("", "ABCD", None, id="empty"),
    ],
)
def test_first_letter(response, letters, expected):
    assert first_letter(response, letters) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        pytest.param("A) the cat", "A", id="paren"),
        pytest.param("B", "B", id="whole-string"),
        pytest.param("(C)", "C", id="both-parens"),
        pytest.param("the dog)", None, id="char-before-paren-not-letter"),
        pytest.param("nothing", None, id="unparsable"),
    ],
)
def test_mlvu_letter(response, expected):
    assert mlvu_letter(response, "ABCD") == expected


def test_option_text_fallback_needs_a_unique_match():
    options = ("red square", "blue circle", "green cross")
    assert letter_or_option_text("it was a blue circle", options, "ABC") == "B"
    assert letter_or_option_text("red square or blue circle", options, "ABC") is None


@pytest.mark.parametrize(
    ("response", "expected"),
    [pytest.param("B. left", "B", id="dot"), pytest.param("left, B", None, id="not-first-word")],
)
def test_vsibench_first_word(response, expected):
    assert first_word_letter(response, "ABCD") == expected


def test_first_number_and_mra():
    assert first_number("about 3.5 meters") == 3.5
    assert first_number("1,200 cm") == 1200.0
    assert first_number("none") is None
    assert mean_relative_accuracy(10.0, 10.0) == 1.0
    assert mean_relative_accuracy(10.7, 10.0) == pytest.approx(0.9)  # relative error 0.07 passes θ = 0.50 … 0.90
    assert mean_relative_accuracy(20.0, 10.0) == 0.0


def test_parsers_are_deterministic():
    responses = ["maybe C", "x", "The answer is B", "(D) yes"] * 10
    assert [first_letter(r, "ABCD") for r in responses] == [first_letter(r, "ABCD") for r in responses]

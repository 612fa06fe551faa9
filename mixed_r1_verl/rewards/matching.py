"""Matching reward: yes/no, multiple choice, or short exact answers."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .text import normalize_text

_OPTION_LETTER_GT = re.compile(r"\(?([A-Za-z])\)?[.:)]?")
# A capital letter standing alone: "B", "(B)", "B.", "B) text", "answer is B".
_STANDALONE_CAPITAL = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9'\u2019])")
_ARTICLE_A = re.compile(r"\s+[a-z]")
_OPTION_TEXT_PREFIX = re.compile(r"^\s*\(?[A-Z]\)?[.:)]\s*")
_YES_NO = re.compile(r"\b(yes|no)\b")


def _mentioned_letters(answer: str, option_count: int) -> set[str]:
    letters = set()
    for match in _STANDALONE_CAPITAL.finditer(answer):
        letter = match.group(1)
        if letter == "A" and _ARTICLE_A.match(answer, match.end()):
            continue  # "A dog ..." is an article, not option A
        if letter == "I" and option_count < 9:
            continue  # the pronoun, unless there are that many options
        letters.add(letter)
    return letters


def option_letter_accuracy(answer: str, letter: str, options: Sequence[str] | None = None) -> float:
    """1.0 iff the answer names exactly one option letter and it is `letter`, or (with `options`) the
    answer is exactly the text of that option."""
    option_count = len(options) if options else 0
    letters = _mentioned_letters(answer, max(option_count, ord(letter) - ord("A") + 1))
    if letters:
        return 1.0 if letters == {letter} else 0.0
    index = ord(letter) - ord("A")
    if options and index < len(options):
        option_text = _OPTION_TEXT_PREFIX.sub("", str(options[index]))
        return 1.0 if normalize_text(answer) == normalize_text(option_text) != "" else 0.0
    return 0.0


def yes_no_accuracy(answer: str, expected: str) -> float:
    """1.0 iff exactly one of yes/no appears as a word, and it is the expected one."""
    said = set(_YES_NO.findall(answer.lower()))
    return 1.0 if said == {expected} else 0.0


def matching_accuracy(answer: str, ground_truth: str, options: Sequence[str] | None = None) -> float:
    ground_truth = ground_truth.strip()
    letter = _OPTION_LETTER_GT.fullmatch(ground_truth)
    if letter:
        return option_letter_accuracy(answer, letter.group(1).upper(), options)
    expected = normalize_text(ground_truth)
    if expected in ("yes", "no"):
        return yes_no_accuracy(answer, expected)
    return 1.0 if normalize_text(answer) == expected else 0.0

"""Text normalisation and bounded number parsing shared by the rule rewards."""

from __future__ import annotations

import math
import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_WHITESPACE = re.compile(r"\s+")
_EDGE_CHARS = string.punctuation + string.whitespace

# A plain or thousands-grouped decimal, optionally signed and in scientific notation. Every part is
# anchored on a distinct character class, so matching is linear in the input length.
NUMBER_PATTERN = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
NUMBER_TOKEN = re.compile(r"(?<![\w.])(?:" + NUMBER_PATTERN + r")")
_UNICODE_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-"})


def normalize_text(text: str) -> str:
    """Lower case, articles removed (unless nothing else is left: "a" stays "a"), whitespace collapsed,
    punctuation (ASCII's and Unicode's: quotes, ellipses, full stops) stripped from both ends."""
    lowered = strip_edges(_WHITESPACE.sub(" ", text.lower()))
    return strip_edges(_WHITESPACE.sub(" ", _ARTICLES.sub(" ", lowered))) or lowered


def strip_edges(text: str) -> str:
    start, end = 0, len(text)
    while start < end and _is_edge(text[start]):
        start += 1
    while end > start and _is_edge(text[end - 1]):
        end -= 1
    return text[start:end]


def _is_edge(char: str) -> bool:
    return char in _EDGE_CHARS or char.isspace() or unicodedata.category(char).startswith("P")


def to_float(token: str) -> float | None:
    """A finite float from a number token (thousands commas allowed), else None."""
    value = float(token.replace(",", ""))
    return value if math.isfinite(value) else None


def unicode_minus_as_hyphen(text: str) -> str:
    return text.translate(_UNICODE_MINUS)


def find_numbers(text: str) -> list[str]:
    """Number tokens in reading order (unicode minus signs read as '-')."""
    return NUMBER_TOKEN.findall(unicode_minus_as_hyphen(text))

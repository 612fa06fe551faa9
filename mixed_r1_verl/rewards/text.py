"""Text normalisation and bounded number parsing shared by the rule rewards."""

from __future__ import annotations

import math
import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_WHITESPACE = re.compile(r"\s+")
# Comparison signs are kept: "<18" is not "18".
_EDGE_CHARS = "".join(char for char in string.punctuation if char not in "<=>") + string.whitespace

# A plain or thousands-grouped decimal (commas, or the no-break and thin spaces of "45 000"; or Indian
# lakh groups, "1,00,000"), optionally signed and in scientific notation. A group of more digits ("1,0000")
# is no grouping. Lakh groups start only where no digit, comma or opening bracket precedes them ("[25,50,100]"
# is a list) and end where no comma and digit follow. Every part is anchored on a distinct character class,
# and lakh groups start only once in a run of digits and commas, so matching is linear in the input length.
NUMBER_PATTERN = (
    r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|(?<![\d,\[(])\d{1,2},(?:\d\d,)+\d{3}(?!,?\d)"
    r"|\d{1,3}(?:[\u00a0\u202f\u2009]\d{3})+(?!\d)|\d+)"
    r"(?:\.\d+)?(?:[eE][-+]?\d+)?"
    r"|[-+]?\.\d+(?:[eE][-+]?\d+)?"
)
_NUMBER_CANDIDATE = re.compile(r"(?<![\w.])(?:" + NUMBER_PATTERN + r")")
_POINT_AND_DIGIT = re.compile(r"\.\d")
_GROUP_SEPARATORS = str.maketrans(dict.fromkeys(",\u00a0\u202f\u2009"))
# The minus sign, en dash, figure dash, small and full-width hyphen-minus, as a number's sign is written.
_UNICODE_MINUS = str.maketrans(dict.fromkeys("\u2212\u2013\u2012\ufe63\uff0d", "-"))
# Full-width ASCII (U+FF01-U+FF5E) and the ideographic space as ASCII; no other compatibility form (NFKC would
# also make "2³" read "23").
_FULL_WIDTH = str.maketrans({**{code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}, 0x3000: " "})
# A comparison sign apart from its number ("< 18") as written against it.
_SPACE_AFTER_COMPARISON = re.compile(r"(?<=[<>=≤≥≠])\s+(?=[-+]?\d)")


def normalize_text(text: str) -> str:
    """Lower case, articles removed (unless nothing else is left: "a" stays "a"), whitespace collapsed,
    punctuation (ASCII's and Unicode's: quotes, ellipses, full stops) stripped from both ends, but for the
    minus sign of a leading number ("-5" is not "5")."""
    lowered = strip_edges(_SPACE_AFTER_COMPARISON.sub("", _WHITESPACE.sub(" ", text.lower())))
    return strip_edges(_WHITESPACE.sub(" ", _ARTICLES.sub(" ", lowered))) or lowered


def strip_edges(text: str) -> str:
    start, end = 0, len(text)
    while start < end and _is_edge(text[start]) and not _is_sign_of_number(text, start):
        start += 1
    while end > start and _is_edge(text[end - 1]):
        end -= 1
    return text[start:end]


def _is_sign_of_number(text: str, position: int) -> bool:
    return text[position] == "-" and text[position + 1 : position + 2].isdigit()


def _is_edge(char: str) -> bool:
    return char in _EDGE_CHARS or char.isspace() or unicodedata.category(char).startswith("P")


def to_float(token: str) -> float | None:
    """A finite float from a number token (digit groups allowed), else None."""
    value = float(token.translate(_GROUP_SEPARATORS))
    return value if math.isfinite(value) else None


def unicode_minus_as_hyphen(text: str) -> str:
    return text.translate(_UNICODE_MINUS)


def folded(text: str) -> str:
    """Full-width letters, digits and punctuation as ASCII ("（Ｂ）" is "(B)", "ＹＥＳ" is "YES"), and minus
    signs as '-'."""
    return text.translate(_FULL_WIDTH).translate(_UNICODE_MINUS)


def number_tokens(text: str) -> list[re.Match]:
    """The numbers of `text` in reading order: NUMBER_PATTERN where no letter, digit or point precedes it,
    read whole, and none where a point and a digit follow ("12.05.2020", "1.2.3" and "1.000.000" are no
    number, not "12.05" or "12.0"). Those are dropped here: a lookahead in the pattern would backtrack into
    ever shorter numbers, quadratic in a run of digit groups."""
    return [match for match in _NUMBER_CANDIDATE.finditer(text) if not _POINT_AND_DIGIT.match(text, match.end())]


def find_numbers(text: str) -> list[str]:
    """Number tokens in reading order (unicode minus signs read as '-')."""
    return [match.group() for match in number_tokens(unicode_minus_as_hyphen(text))]

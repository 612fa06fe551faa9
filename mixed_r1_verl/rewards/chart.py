"""Chart reward: ChartQA relaxed accuracy."""

from __future__ import annotations

import re

from .text import NUMBER_PATTERN, find_numbers, normalize_text, to_float, unicode_minus_as_hyphen

RELATIVE_TOLERANCE = 0.05

# A numeric target: one number, at most a currency sign before it and a unit after it (% or words of
# letters only: "million", "kg", "USD"). "Jan 2020", "2019 Q4" or "under 18" are categories.
_NUMERIC_TARGET = re.compile(
    r"\s*[$€£¥₹₩₽¢]?\s*(" + NUMBER_PATTERN + r")\s*(?:%|[^\W\d_]+(?:\s+[^\W\d_]+)*)?\s*"
)


def single_number(text: str) -> float | None:
    """The value of the only number in `text` (%, currency signs, thousands commas and unit words
    ignored), or None if it holds zero or several numbers or a non-finite one."""
    numbers = find_numbers(text)
    if len(numbers) != 1:
        return None
    return to_float(numbers[0])


def numeric_target(ground_truth: str) -> float | None:
    """The value of a numeric ground truth (see `_NUMERIC_TARGET`), or None for a text target."""
    match = _NUMERIC_TARGET.fullmatch(unicode_minus_as_hyphen(ground_truth))
    return to_float(match.group(1)) if match else None


def chart_accuracy(answer: str, ground_truth: str) -> float:
    """Numeric ground truth: correct iff the answer holds exactly one number p with
    |p - g| <= 5% of |g| (g = 0 needs p = 0). Otherwise normalised exact match."""
    expected = numeric_target(ground_truth)
    if expected is None:
        return 1.0 if normalize_text(answer) == normalize_text(ground_truth) else 0.0
    predicted = single_number(answer)
    if predicted is None:
        return 0.0
    if expected == 0:
        return 1.0 if predicted == 0 else 0.0
    return 1.0 if abs(predicted - expected) <= RELATIVE_TOLERANCE * abs(expected) else 0.0

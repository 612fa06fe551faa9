"""Chart reward: ChartQA relaxed accuracy."""

from __future__ import annotations

import re

from .text import find_numbers, folded, normalize_text, number_tokens, to_float

RELATIVE_TOLERANCE = 0.05

# Words that may precede the number of a numeric target: currencies and approximations ("USD 12",
# "Rs. 50", "about 12"). Other words before it make a label ("Jan 2020", "under 18", "Group B 12").
CURRENCY_CODES = "usd eur gbp jpy cny rmb inr rs aud cad chf hkd sgd krw rub brl mxn".split()
VALUE_PREFIX_WORDS = frozenset(
    CURRENCY_CODES + "us about approx approximately around roughly nearly almost circa ca".split()
)
# Months, quarters and halves name a period even after the number ("2019 Q4", "5 May").
_PERIOD_WORD = re.compile(
    r"\b(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?|"
    r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?|q[1-4]|h[12])\b",
    re.IGNORECASE,
)
_LETTER_WORD = re.compile(r"[^\W\d_]+")
# A currency written against its number ("Rs.50", "USD45"), which would otherwise hide the number.
_GLUED_CURRENCY = re.compile(r"(?i)\b((?:" + "|".join(CURRENCY_CODES) + r")\.?)(?=[-+]?\.?\d)")
# A dollar sign, with the letters of the country whose dollar it is against it where a number follows ("US$12",
# "HK$ 12", "A$12"; in "$r$ = 0.85" the r is a variable).
_DOLLAR_SIGN = re.compile(r"(?i)\b(?:us|hk|a|au|c|ca|nz|s|sg|nt|r|mx)\$(?=\s*[-+]?\.?\d)|\$")
# A comparison before the number makes it a bound, not a value ("<45", "≥ 45"), as "under 45" does.
_COMPARISON_SIGNS = frozenset("<>≤≥≦≧≠≮≯⩽⩾")
# LaTeX's ways of writing a number: digit groups `45{,}000` and `45\,000`, and `4.5 \times 10^{4}`.
_LATEX_DIGIT_GROUP = re.compile(r"(?<=\d)(?:\{,\}|\\,)(?=\d{3})")
_LATEX_POWER_OF_TEN = re.compile(r"(?<=\d)\s*(?:\\times|\\cdot|×)\s*10\^\{?([-+]?\d+)\}?")
# Slack for binary floating point: 2.1 against 2 is exactly 5 % off, as 21 against 20 is.
_ROUNDING_SLACK = 1e-9


def with_currency_apart(text: str) -> str:
    return _GLUED_CURRENCY.sub(r"\1 ", text)


def single_number(text: str) -> float | None:
    """The value of the only number in `text` (%, currency signs, thousands commas and unit words
    ignored, full-width forms read as ASCII ones), or None if it holds zero or several numbers or a
    non-finite one."""
    numbers = find_numbers(with_currency_apart(folded(text)))
    if len(numbers) != 1:
        return None
    return to_float(numbers[0])


def with_latex_numbers_plain(text: str) -> str:
    """LaTeX's digit groups and powers of ten written plain ("45,000", "4.5e4"), and math delimiters
    dropped ("$-$45" is -45); a dollar sign, bare or with its country's letters ("US$12", "HK$12"), is a
    currency sign, which the value ignores anyway."""
    text = _LATEX_POWER_OF_TEN.sub(r"e\1", _LATEX_DIGIT_GROUP.sub(",", text))
    # Trying a country's letters at every position is slow on long texts: only where there is a dollar sign.
    return _DOLLAR_SIGN.sub("", text) if "$" in text else text


def numeric_value(text: str) -> float | None:
    """The value of a numeric ground truth or answer, else None (a text target, or an answer that is no
    value). Numeric: one number, before it at most currency signs or words of VALUE_PREFIX_WORDS, after it
    anything but a period (a unit: "%", "million", "kg/m2", "°C", "(approx)"). "under 18" and "<18" are a
    label as a target, and as an answer no value of 18. Full-width forms read as ASCII ones (`folded`)."""
    text = with_currency_apart(with_latex_numbers_plain(folded(text)))
    numbers = number_tokens(text)
    if len(numbers) != 1 or _PERIOD_WORD.search(text):
        return None
    prefix = text[: numbers[0].start()]
    if not set(_LETTER_WORD.findall(prefix.lower())) <= VALUE_PREFIX_WORDS or _COMPARISON_SIGNS & set(prefix):
        return None
    return to_float(numbers[0].group())


def chart_accuracy(answer: str, ground_truth: str) -> float:
    """Numeric ground truth g: correct iff the answer is a number p read as g is (`numeric_value`) with
    |p - g| <= 5% of |g| (g = 0 needs p = 0). Otherwise normalised exact match. Full-width forms read as
    ASCII ones on both sides (`folded`)."""
    expected = numeric_value(ground_truth)
    if expected is None:
        return 1.0 if normalize_text(folded(answer)) == normalize_text(folded(ground_truth)) else 0.0
    predicted = numeric_value(answer)
    if predicted is None:
        return 0.0
    if expected == 0:
        return 1.0 if predicted == 0 else 0.0
    return 1.0 if abs(predicted - expected) <= RELATIVE_TOLERANCE * (1 + _ROUNDING_SLACK) * abs(expected) else 0.0

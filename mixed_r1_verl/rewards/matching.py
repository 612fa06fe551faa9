"""Matching reward: yes/no, multiple choice, or short exact answers."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from .text import folded, normalize_text

_OPTION_LETTER_GT = re.compile(r"\(?([A-Za-z])\)?[.:)]?")
_BARE_CAPITAL = re.compile(r"\(?[A-Z]\)?[.:)]?")
# A capital letter standing alone: "B", "(B)", "B.", "B) text", "answer is B".
# An apostrophe after it makes a word ("A's", "I'm"); a closing quote ("'B'") does not.
_STANDALONE_CAPITAL = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])(?!['\u2019][A-Za-z])")
# "A dog" is the article; "A is correct", "A and B", "A has the highest value", "A best describes it", "A as
# shown" name option A.
_ARTICLE_A = re.compile(
    r"\s+(?!(?:is|was|has|have|seems|appears|looks|shows|matches|represents|describes|fits|corresponds|indicates"
    r"|and|or|would|should|could|might|because|since|as|based|given)\b|best\s+[a-z]*[a-rt-z]s\b)[a-z]"
)
# Letters named as options whatever follows them: a leading "B.", "B)", "(B)", "B:", and "Option B". After
# other cues ("the answer is", "I choose") "I" may be the pronoun and "A" the article, as anywhere else.
_LEADING_LETTER = re.compile(r"\s*\(?([A-Z])(?:\)|[.:])(?=\s|$)")
_OPTION_WORD = re.compile(r"\b[Oo]ption\s+\(?([A-Z])(?![A-Za-z0-9])(?!['\u2019][A-Za-z])")
_YES_NO = re.compile(r"\b(yes|no)\b")
# Whole answers that say yes or no in Chinese ("is", "right", "there is"; their negations).
CHINESE_YES_NO = {**dict.fromkeys(("是", "是的", "对", "有"), "yes"), **dict.fromkeys(("否", "不是", "不对", "没有"), "no")}
# Number words as the official VQA scorer reads them: "three" answers "3".
NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate("zero one two three four five six seven eight nine ten".split())
}
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def options_without_their_letters(options: Sequence[str]) -> tuple[str, ...]:
    """Options that all begin with their own letter in order ("A. red", "(B) blue", "C) green", "D: grey")
    without it, as the prompt letters them itself (it would show "A. A. red"); other options as they are:
    an option's text may begin with another capital and a period ("E. coli", "A. thaliana")."""
    texts = [
        re.fullmatch(rf"(?:\({letter}\)|{letter}[.:)])\s+(\S.*)", option, re.DOTALL | re.IGNORECASE)
        for letter, option in zip(OPTION_LETTERS, options)
    ]
    return tuple(text.group(1) for text in texts) if all(texts) else tuple(options)


def option_texts(options) -> list[str] | None:
    """The option texts of any sequence (list, tuple, numpy array, as a parquet row holds them), `folded`,
    without the letters they all carry in order (`options_without_their_letters`); None when there are none.
    A string is not a list of options."""
    if options is None:
        return None
    if isinstance(options, str):
        raise TypeError(f"options must be a sequence of option texts, got the string {options!r}")
    return list(options_without_their_letters([folded(str(option)) for option in options])) or None


def _named_letter_positions(answer: str) -> set[int]:
    leading = _LEADING_LETTER.match(answer)
    named = {match.start(1) for match in _OPTION_WORD.finditer(answer)}
    return named | {leading.start(1)} if leading else named


def _mentioned_letters(answer: str, option_count: int, options_known: bool) -> set[str]:
    """The option letters the answer names; with the options known, a capital past the last option
    ("T cells", "X-ray" among A-D) is no option letter."""
    named = _named_letter_positions(answer)
    letters = set()
    for match in _STANDALONE_CAPITAL.finditer(answer):
        letter = match.group(1)
        if options_known and ord(letter) - ord("A") >= option_count:
            continue
        if match.start(1) not in named:
            if letter == "A" and _ARTICLE_A.match(answer, match.end()):
                continue  # "A dog ..." is an article, not option A
            if letter == "I" and option_count < 9:
                continue  # the pronoun, unless there are that many options
        letters.add(letter)
    return letters


def option_text_letters(answer: str, options: Sequence[str]) -> set[str]:
    """The letters of the options whose text the answer is (normalised): "blue" is B of [red, blue]. A
    bare letter ("A", "(A)", "A.") names an option by its letter, even where an option's text is a letter."""
    said = normalize_text(answer)
    if not said or _BARE_CAPITAL.fullmatch(answer.strip()):
        return set()
    return {chr(ord("A") + index) for index, option in enumerate(options) if _normalized_option(option) == said}


@lru_cache(maxsize=1 << 16)
def _normalized_option(option: str) -> str:
    # Every response of a group (and of later steps) is compared with the same options.
    return normalize_text(option)


def _option_words(option: str) -> list[str]:
    return option.split()


def _several_words(option: str) -> bool:
    """Whether an option's text is of several words; Chinese, Japanese or Korean text, written without spaces,
    of several characters."""
    return len(_option_words(option)) >= 2 or len(_CJK.findall(option)) >= 2


def _option_text_pattern(option: str) -> str | None:
    """An option's text, its words apart by any whitespace, in any case; None for a text of no words."""
    words = _option_words(option)
    return r"(?i:" + r"\s+".join(re.escape(word) for word in words) + ")" if words else None


@lru_cache(maxsize=1 << 12)
def _labelled_option(letter: str, option: str) -> re.Pattern | None:
    """An option's letter with its own text: before it, as the prompt lists it ("B. Vitamin D", "(B) Vitamin D",
    "B - Vitamin D"), or after it in parentheses ("Vitamin D (B)")."""
    text = _option_text_pattern(option)
    if text is None:
        return None
    letter_first = rf"\(?{letter}(?:\s*[.:)\-–—]\s*|\s+){text}"
    text_first = rf"{text}\s*\({letter}\)"
    return re.compile(rf"(?<![A-Za-z0-9])(?:{letter_first}|{text_first})(?![A-Za-z0-9])")


@lru_cache(maxsize=1 << 12)
def _unlabelled_option(option: str) -> re.Pattern | None:
    """An option's text of several words, as a whole ("Vitamin D" but not "Vitamin D3")."""
    if not _several_words(option):
        return None
    text = _option_text_pattern(option)
    return re.compile(rf"(?<![A-Za-z0-9]){text}(?![A-Za-z0-9])")


def without_own_option_texts(answer: str, options: Sequence[str]) -> str:
    """The answer with each option text written with its own letter left out ("B. Vitamin D" -> "B"), so that
    the letters inside an option's text ("D") are not read as options."""
    for index, option in enumerate(options):
        letter = chr(ord("A") + index)
        pattern = _labelled_option(letter, option)
        if pattern is not None:
            answer = pattern.sub(letter, answer)
    return answer


def options_named_by_text(answer: str, options: Sequence[str]) -> tuple[str, set[str]]:
    """The letters of the options of several words whose text the answer holds ("The answer is Vitamin D"
    names B of [Vitamin C, Vitamin D]), and the answer without those texts, whose letters ("D") are no options."""
    letters = set()
    # Longest first: "New York City" is not also "New York".
    for index, option in sorted(enumerate(options), key=lambda indexed: -len(indexed[1])):
        pattern = _unlabelled_option(option)
        if pattern is not None:
            answer, count = pattern.subn(" ", answer)
            if count:
                letters.add(chr(ord("A") + index))
    return answer, letters


def option_letter_accuracy(answer: str, letter: str, options: Sequence[str] | None = None) -> float:
    """1.0 iff the answer names exactly one option and it is `letter`: by the option's text (with
    `options`), else by its letter."""
    letters = set()
    if options:
        answer = without_own_option_texts(answer, options)
        letters = option_text_letters(answer, options)
    if not letters:
        if options:
            answer, letters = options_named_by_text(answer, options)
        option_count = max(len(options or ()), ord(letter) - ord("A") + 1)
        letters |= _mentioned_letters(answer, option_count, options_known=bool(options))
    return 1.0 if letters == {letter} else 0.0


def yes_no_accuracy(answer: str, expected: str) -> float:
    """1.0 iff exactly one of yes/no appears as a word (or the whole answer says it in Chinese), and it is the
    expected one."""
    whole = normalize_text(answer)
    said = {CHINESE_YES_NO[whole]} if whole in CHINESE_YES_NO else set(_YES_NO.findall(answer.lower()))
    return 1.0 if said == {expected} else 0.0


def short_answer(text: str) -> str:
    """A short answer as compared: normalised (`normalize_text`), number words as digits."""
    return " ".join(NUMBER_WORDS.get(word, word) for word in normalize_text(text).split(" "))


def option_letter(ground_truth: str, options: Sequence[str] | None) -> str | None:
    """The option a ground truth names by its letter ("B", "(B)", "B."), upper-cased; a lower-case letter
    only names one when there are options (as the converter reads it), else it is a short answer ("x")."""
    match = _OPTION_LETTER_GT.fullmatch(ground_truth)
    if match is None or not (options or match.group(1).isupper()):
        return None
    return match.group(1).upper()


def matching_accuracy(answer: str, ground_truth: str, options: Sequence[str] | None = None) -> float:
    """Full-width forms read as ASCII ones on every side (`folded`)."""
    answer, ground_truth = folded(answer), folded(ground_truth).strip()
    options = option_texts(options)
    letter = option_letter(ground_truth, options)
    if letter:
        return option_letter_accuracy(answer, letter, options)
    expected = CHINESE_YES_NO.get(normalize_text(ground_truth), normalize_text(ground_truth))
    if expected in ("yes", "no"):
        return yes_no_accuracy(answer, expected)
    return 1.0 if short_answer(answer) == short_answer(ground_truth) else 0.0

"""Where the answer is in a response, and whether the response has the required shape.

Every function here scans its input a bounded number of times with `str.find`-style searches, so a
tag flood or a huge response costs linear time.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_BOXED = "\\boxed{"
NO_ANSWER = "(no answer)"

_FORMAT = re.compile(r"\s*<think>.*</think>\s*<answer>.*</answer>\s*", re.DOTALL)
# LaTeX commands that only typeset their (brace-free) argument as text: `\boxed{\text{Germany}}` answers Germany.
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


def format_reward(response: str) -> float:
    """1.0 iff the whole response is `<think>…</think>` then `<answer>…</answer>`, each exactly once,
    with only whitespace around them; else 0.0."""
    tags = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
    if any(response.count(tag) != 1 for tag in tags):
        return 0.0
    return 1.0 if _FORMAT.fullmatch(response) else 0.0


def strip_thinking(response: str) -> str:
    """The response without its `<think>…</think>` spans; an unclosed `<think>` hides the rest."""
    kept = []
    position = 0
    while True:
        start = response.find(THINK_OPEN, position)
        if start == -1:
            kept.append(response[position:])
            break
        kept.append(response[position:start])
        end = response.find(THINK_CLOSE, start + len(THINK_OPEN))
        if end == -1:
            break
        position = end + len(THINK_CLOSE)
    return "".join(kept)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` (braces balanced), or None."""
    start = text.rfind(_BOXED)
    if start == -1:
        return None
    depth = 1
    content_start = start + len(_BOXED)
    for index in range(content_start, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[content_start:index].strip()
    return None


def extract_answer(response: str) -> str | None:
    """The answer a response commits to: the content of its last `<answer>…</answer>` block, else its
    last `\\boxed{…}`; None if it has neither. Text inside `<think>` never counts. A `\\boxed{…}`
    inside the answer block is unwrapped, and so are LaTeX text commands (`\\text{…}`)."""
    answer = _committed_answer(strip_thinking(response))
    return None if answer is None else _LATEX_TEXT.sub(r"\1", answer)


def _committed_answer(visible: str) -> str | None:
    last_close = visible.rfind(ANSWER_CLOSE)
    if last_close != -1:
        start = visible.rfind(ANSWER_OPEN, 0, last_close)
        if start != -1:
            # Up to the block's own close: a stray `</answer>` after it is not part of the answer.
            end = visible.find(ANSWER_CLOSE, start + len(ANSWER_OPEN))
            content = visible[start + len(ANSWER_OPEN) : end]
            boxed = last_boxed(content)
            return boxed if boxed is not None else content.strip()
    return last_boxed(visible)


def normalized_answer(answer: str | None) -> str:
    """An answer as compared across responses (answer spread, majority vote): whitespace collapsed;
    `NO_ANSWER` for None. Case is kept: the rewards tell "B" (an option) from "b"."""
    return NO_ANSWER if answer is None else " ".join(answer.split())


def top_answer(answers: Sequence[str]) -> tuple[str, float]:
    """The most common of normalized answers (the first seen among equals) and the share giving it."""
    answer, count = Counter(answers).most_common(1)[0]
    return answer, count / len(answers)

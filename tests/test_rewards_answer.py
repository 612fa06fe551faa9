import pytest

from mixed_r1_verl.rewards.answer import extract_answer, format_reward, last_boxed, strip_thinking


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>x</think><answer>B</answer>", 1.0),
        ("  \n<think>x</think>\n\n<answer> B </answer>\n", 1.0),
        ("<think></think><answer></answer>", 1.0),
        ("<answer>B</answer>", 0.0),
        ("<think>x</think>", 0.0),
        ("Sure! <think>x</think><answer>B</answer>", 0.0),
        ("<think>x</think><answer>B</answer> extra", 0.0),
        ("<think>x</think><answer>A</answer><answer>B</answer>", 0.0),
        ("<think>x</think><think>y</think><answer>B</answer>", 0.0),
        ("<answer>B</answer><think>x</think>", 0.0),
        ("<think>x</think>between<answer>B</answer>", 0.0),
        ("<think>x <answer>A</answer></think><answer>B</answer>", 0.0),
    ],
)
def test_format_reward(response, expected):
    assert format_reward(response) == expected


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>x</think><answer> B </answer>", "B"),
        ("<answer>A</answer> then <answer>C</answer>", "C"),
        ("<think>maybe <answer>A</answer></think><answer>B</answer>", "B"),
        ("<think><answer>A</answer></think>", None),
        ("<think>unclosed <answer>A</answer>", None),
        ("the answer is \\boxed{42} or \\boxed{43}", "43"),
        ("<answer>\\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),
        ("<answer>The answer is \\boxed{7}.</answer>", "7"),
        ("\\boxed{unbalanced", None),
        ("The answer is B.", None),
        ("<answer>B", None),
        ("B</answer>", None),
        ("<think>x</think>\\boxed{5}", "5"),
        ("<think>\\boxed{5}</think>", None),
        ("<answer>\\boxed{\\text{Eiffel Tower}}</answer>", "Eiffel Tower"),
        ("<answer>$\\textbf{red}$</answer>", "$red$"),
        ("<answer>\\boxed{12.5\\text{ million}}</answer>", "12.5 million"),
        ("\\boxed{\\mathrm{B}}", "B"),
        ("<answer>Paris</answer></answer>", "Paris"),
        ("<answer><answer>Paris</answer></answer>", "Paris"),
        ("<answer>A</answer> <answer>B</answer></answer>", "B"),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_strip_thinking_keeps_text_around_closed_spans():
    assert strip_thinking("a<think>b</think>c<think>d</think>e") == "ace"


def test_last_boxed_balances_nested_braces():
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"

import numpy as np
import pandas as pd
import pytest

from mixed_r1_verl.rewards.matching import matching_accuracy

OPTIONS = ["a cat", "a dog", "a bird", "a fish"]


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("B", 1.0),
        ("(B)", 1.0),
        ("B.", 1.0),
        ("B) a dog", 1.0),
        ("The answer is B", 1.0),
        ("b", 0.0),
        ("C", 0.0),
        ("A B C D", 0.0),
        ("B or C", 0.0),
        ("B, but maybe (C)", 0.0),
        ("A dog, so B", 1.0),
        ("I think B", 1.0),
        ("", 0.0),
        ("Both", 0.0),
    ],
)
def test_option_letter(answer, expected):
    assert matching_accuracy(answer, "B") == expected


@pytest.mark.parametrize(
    "answer, expected",
    [("a dog", 1.0), ("Dog.", 1.0), ("the dog", 1.0), ("a cat", 0.0), ("dog or cat", 0.0), ("B", 1.0)],
)
def test_option_text_counts_when_options_are_given(answer, expected):
    assert matching_accuracy(answer, "B", OPTIONS) == expected


def test_option_text_without_options_is_not_enough():
    assert matching_accuracy("a dog", "B") == 0.0


def test_letter_ground_truth_forms():
    assert matching_accuracy("C", "(C)") == 1.0
    assert matching_accuracy("C", "c", OPTIONS) == 1.0
    assert matching_accuracy("C", "C.") == 1.0


@pytest.mark.parametrize(
    "answer, ground_truth, expected",
    [
        ("Yes", "yes", 1.0),
        ("yes.", "Yes", 1.0),
        ("Yes, there is a cat.", "yes", 1.0),
        ("No", "yes", 0.0),
        ("yes and no", "yes", 0.0),
        ("eyes", "yes", 0.0),
        ("nothing", "no", 0.0),
        ("No, no.", "no", 1.0),
        ("", "no", 0.0),
    ],
)
def test_yes_no(answer, ground_truth, expected):
    assert matching_accuracy(answer, ground_truth) == expected


@pytest.mark.parametrize(
    "answer, ground_truth, expected",
    [
        ("The Eiffel Tower.", "eiffel tower", 1.0),
        ("  red  ", "Red", 1.0),
        ("dark red", "red", 0.0),
        ("red", "dark red", 0.0),
        ("\u201cred\u201d", "red", 1.0),
        ("\u2018red\u2019\u2026", "red", 1.0),
        ("red\u3002", "red", 1.0),
        ("\u00abdark\u00bb red", "dark red", 0.0),
    ],
)
def test_normalised_exact_match(answer, ground_truth, expected):
    assert matching_accuracy(answer, ground_truth) == expected


@pytest.mark.parametrize(
    "answer, ground_truth, expected",
    [
        ("B. blue", "B", 1.0),
        ("B) blue", "B", 1.0),
        ("(B) blue", "B", 1.0),
        ("B: blue", "B", 1.0),
        ("A. red", "A", 1.0),
        ("A. red", "B", 0.0),
        ("Option A is correct", "A", 1.0),
        ("option (B)", "B", 1.0),
        ("A is correct.", "A", 1.0),
        ("A was right", "A", 1.0),
        ("A and B", "B", 0.0),
        ("A or B", "A", 0.0),
        ("I. red", "I", 1.0),
    ],
)
def test_letters_named_as_options(answer, ground_truth, expected):
    assert matching_accuracy(answer, ground_truth, ["red", "blue"]) == expected


@pytest.mark.parametrize(
    "answer", ["A dog", "A man is riding a bike", "A red one", "A best friend", "A best guess", "A match is lit",
               "A cat has a tail"]
)
def test_a_capital_a_starting_english_is_the_article(answer):
    assert matching_accuracy(answer, "A") == 0.0
    assert matching_accuracy(f"{answer}, so B", "B") == 1.0
    assert matching_accuracy(f"Answer: {answer}, so B", "B") == 1.0  # after a cue too


@pytest.mark.parametrize("answer", ["The answer I chose is B", "My answer: I think it is B", "Answer: I would say B."])
def test_the_pronoun_i_after_a_cue_is_no_option(answer):
    assert matching_accuracy(answer, "B") == 1.0
    assert matching_accuracy(answer, "B", OPTIONS) == 1.0


@pytest.mark.parametrize(
    "sentence",
    [
        "{} has the highest value",
        "The answer is {} since the bar is tallest",
        "The correct option is {} as shown in the chart",
        "{} best describes the image",
        "{} matches the image",
        "I choose {} based on the legend",
        "{} represents the correct answer",
        "The correct one is {} because of the legend",
        "Answer: {} given the legend",
        "I would select ({}) here",
    ],
)
def test_option_a_in_a_sentence_is_the_option_as_b_is(sentence):
    for letter in "AB":
        assert matching_accuracy(sentence.format(letter), letter) == 1.0, letter
        assert matching_accuracy(sentence.format(letter), letter, OPTIONS) == 1.0, letter
    assert matching_accuracy(sentence.format("A"), "B") == 0.0


def test_an_answer_that_is_an_options_text_names_that_option():
    options = ["Vitamin C", "Vitamin D"]
    assert matching_accuracy("Vitamin C", "A", options) == 1.0
    assert matching_accuracy("vitamin d", "A", options) == 0.0
    assert matching_accuracy("A cat", "B", ["dog", "A cat"]) == 1.0
    assert matching_accuracy("A cat", "A", ["dog", "A cat"]) == 0.0


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("The answer is Vitamin D", "B"),
        ("It must be vitamin d.", "B"),
        ("B, Vitamin D", "B"),
        ("Vitamin C rather than Vitamin D", None),
        ("D, Vitamin D", None),
        ("Vitamin D3", None),
    ],
)
def test_an_option_text_of_several_words_inside_the_answer_names_that_option_and_no_letter(answer, expected):
    """The D of "Vitamin D" is not option D, wherever in the answer the option's text stands."""
    options = ["Vitamin C", "Vitamin D", "Vitamin E", "Iron"]
    named = [letter for letter in "ABCD" if matching_accuracy(answer, letter, options) == 1.0]
    assert named == ([expected] if expected else [])


@pytest.mark.parametrize(
    "answer, ground_truth, expected",
    [
        ("E. coli", "A", 1.0),
        ("B. A. thaliana", "B", 1.0),
        ("(B) A. thaliana", "B", 1.0),
        ("The answer is A. thaliana", "B", 1.0),
        ("S. cerevisiae", "D", 1.0),
        ("C. elegans", "A", 0.0),  # option C's text, not option C
        ("C. elegans", "C", 1.0),
    ],
)
def test_option_texts_beginning_with_an_initial_keep_it(answer, ground_truth, expected):
    """"E. coli" is a text, not option E's letter: only options that all carry their own letters lose them."""
    assert matching_accuracy(answer, ground_truth, ["E. coli", "A. thaliana", "C. elegans", "S. cerevisiae"]) == expected


def test_options_that_all_carry_their_own_letters_are_read_without_them():
    options = ["A. red", "(B) blue", "C) green"]
    assert [matching_accuracy(answer, "B", options) for answer in ("blue", "B. blue", "A. red")] == [1.0, 1.0, 0.0]


def test_an_option_text_within_a_longer_option_text_is_not_named_by_it():
    options = ["New York", "New York City", "Boston"]
    assert [matching_accuracy("I live in New York City", letter, options) for letter in "ABC"] == [0.0, 1.0, 0.0]
    assert [matching_accuracy("New York, clearly", letter, options) for letter in "ABC"] == [1.0, 0.0, 0.0]


def test_capitals_past_the_last_option_are_no_option_letters():
    options = ["Thymus", "Bone marrow", "Spleen", "Liver"]
    for answer in ["B, because T cells mature there", "B. The X-ray shows it", "B (as in the U.S.)"]:
        assert matching_accuracy(answer, "B", options) == 1.0
        assert matching_accuracy(answer, "B") == 0.0, "without the options, T, X and U may be options"
    assert matching_accuracy("B, because C is wrong", "B", options) == 0.0


def test_the_letter_just_past_the_last_option_is_no_option_letter():
    options = ["Bacteria", "Viruses", "Fungi", "Protists"]
    assert matching_accuracy("B, because E. coli is not involved", "B", options) == 1.0
    assert matching_accuracy("B, because D. discoideum is", "B", options) == 0.0, "D is the last option"


def test_i_is_an_option_letter_with_nine_options_or_more_and_the_pronoun_with_eight():
    nine = [f"choice {number}" for number in range(1, 10)]
    assert matching_accuracy("I", "I", nine) == 1.0
    assert matching_accuracy("I think B", "B", nine) == 0.0, "with nine options, I names option I as well"
    assert matching_accuracy("I think B", "B", nine[:8]) == 1.0
    # Without the options, the ground truth's letter says there are at least that many.
    assert matching_accuracy("I", "I") == 1.0
    assert matching_accuracy("I think H", "H") == 1.0, "H is the eighth option: I is the pronoun"
    assert matching_accuracy("I think H", "H", nine) == 0.0


def test_a_bare_letter_names_the_option_of_that_letter_even_where_options_are_letters():
    """Shuffled letter labels: option B's text is "A"; the answer "A" still means option A."""
    options = ["B", "A", "C"]
    assert matching_accuracy("A", "A", options) == matching_accuracy("(B)", "B", options) == 1.0
    assert matching_accuracy("A", "B", options) == 0.0
    assert matching_accuracy("a", "B", ["x", "a"]) == 1.0, "a lower-case text is compared as text"


def test_options_as_a_parquet_row_holds_them(tmp_path):
    path = tmp_path / "rows.parquet"
    pd.DataFrame({"options": [["red", "blue"], ["cat", "dog", "bird"], None]}).to_parquet(path)
    rows = pd.read_parquet(path)["options"]
    assert isinstance(rows[0], np.ndarray)
    assert matching_accuracy("blue", "B", rows[0]) == 1.0
    assert matching_accuracy("B) dog", "B", rows[1]) == 1.0
    assert matching_accuracy("B", "B", rows[2]) == 1.0
    assert matching_accuracy("B", "B", ("red", "blue")) == 1.0
    assert matching_accuracy("blue", "B", np.array([], dtype=object)) == 0.0


def test_options_given_as_one_string_are_an_error():
    with pytest.raises(TypeError, match="options must be a sequence"):
        matching_accuracy("B", "B", "red,blue")


@pytest.mark.parametrize("ground_truth", ["x", "a", "y", "(c)"])
def test_a_lower_case_letter_without_options_is_a_short_answer(ground_truth):
    letter = ground_truth.strip("()")
    assert matching_accuracy(letter, ground_truth) == 1.0
    assert matching_accuracy(letter.upper(), ground_truth) == 1.0
    assert matching_accuracy("", ground_truth) == 0.0
    assert matching_accuracy("the", ground_truth) == 0.0


def test_a_lower_case_letter_names_an_option_when_there_are_options():
    assert matching_accuracy("B", "b", ["x", "y"]) == 1.0
    assert matching_accuracy("y", "b", ["x", "y"]) == 1.0
    assert matching_accuracy("A", "b", ["x", "y"]) == 0.0


def test_a_capital_letter_names_an_option_without_options():
    assert matching_accuracy("X", "X") == 1.0
    assert matching_accuracy("x", "X") == 0.0


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("B. Vitamin D", 1.0),
        ("(B) Vitamin D", 1.0),
        ("B: vitamin d.", 1.0),
        ("**B. Vitamin D**", 1.0),
        ("The answer is B. Vitamin D", 1.0),
        ("Option B: Vitamin D", 1.0),
        ("B - Vitamin D", 1.0),
        ("B – Vitamin D", 1.0),
        ("Vitamin D (B)", 1.0),
        ("The answer is Vitamin D (B).", 1.0),
        ("B. Vitamin E", 0.0),
        ("B - Vitamin E", 0.0),
        ("Vitamin E (B)", 0.0),
        ("Vitamin D (C)", 0.0),
        ("C. Vitamin D", 0.0),
        ("B. Vitamin D or C. Vitamin E", 0.0),
    ],
)
def test_a_letter_followed_by_its_own_option_text_names_only_that_option(answer, expected):
    """The prompt lists options as "B. Vitamin D"; the D of an option's text is not option D, whichever side of
    its letter the text is written."""
    assert matching_accuracy(answer, "B", ["Vitamin C", "Vitamin D", "Vitamin E", "Vitamin K"]) == expected


def test_an_option_text_that_is_a_letter_after_its_own_letter():
    assert matching_accuracy("B. A", "B", ["B", "A", "C"]) == 1.0
    assert matching_accuracy("B. C", "B", ["B", "A", "C"]) == 0.0
    assert matching_accuracy("BA", "B", ["B", "A", "C"]) == 0.0


@pytest.mark.parametrize(
    "answer, ground_truth, options",
    [
        ("\uff22", "B", OPTIONS),  # full-width B
        ("\uff08\uff22\uff09", "B", OPTIONS),
        ("\u7b54\u6848\uff1a\uff22", "B", OPTIONS),  # 答案：Ｂ
        ("Option \uff22", "B", None),
        ("\uff12", "2", None),
        ("\uff43\uff41\uff54", "cat", None),
        ("\uff39\uff25\uff33", "yes", None),
        ("B", "B", ["\uff21\uff0e red", "\uff22\uff0e blue"]),  # options lettered in full width
    ],
)
def test_full_width_forms_read_as_ascii(answer, ground_truth, options):
    assert matching_accuracy(answer, ground_truth, options) == 1.0


@pytest.mark.parametrize(
    "answer, expected",
    [("The answer is 'B'.", 1.0), ("'B'", 1.0), ("\u2018B\u2019", 1.0), ("Option 'B'", 1.0), ("B's", 0.0)],
)
def test_a_letter_in_quotes_is_a_letter_and_one_before_an_apostrophe_s_is_a_word(answer, expected):
    assert matching_accuracy(answer, "B", OPTIONS) == expected


@pytest.mark.parametrize(
    "answer, ground_truth, expected",
    [("Three", "3", 1.0), ("3", "three", 1.0), ("zero", "0", 1.0), ("ten", "10", 1.0), ("three", "4", 0.0),
     ("three apples", "3", 0.0), ("twenty", "20", 0.0)],
)
def test_number_words_to_ten_answer_their_digits(answer, ground_truth, expected):
    assert matching_accuracy(answer, ground_truth) == expected


@pytest.mark.parametrize(
    "answer, ground_truth, expected",
    [("\u662f", "yes", 1.0), ("\u662f\u7684", "yes", 1.0), ("\u5426", "no", 1.0), ("\u4e0d\u662f", "no", 1.0),
     ("\u4e0d\u662f", "yes", 0.0), ("\u6ca1\u6709", "no", 1.0), ("\u662f\u7684", "\u662f", 1.0),
     ("\u6211\u89c9\u5f97\u662f", "yes", 0.0), ("\u662f\u3002", "\u662f", 1.0), ("\u4e0d\u662f\u3002", "no", 1.0),
     ("\u201c\u662f\u201d", "yes", 1.0), ("\u5bf9\uff01", "\u5bf9", 1.0)],
)
def test_a_whole_chinese_yes_or_no(answer, ground_truth, expected):
    assert matching_accuracy(answer, ground_truth) == expected


def test_a_chinese_option_text_within_the_answer_names_that_option():
    options = ["\u7ea2\u8272\u7684\u82f9\u679c", "\u7eff\u8272\u7684\u68a8", "\u9ec4\u8272\u7684\u9999\u8549"]
    assert matching_accuracy("\u7b54\u6848\u662f\u7eff\u8272\u7684\u68a8", "B", options) == 1.0  # 答案是绿色的梨
    assert matching_accuracy("\u7b54\u6848\u662f\u7eff\u8272\u7684\u68a8", "A", options) == 0.0


@pytest.mark.parametrize(
    "answer, ground_truth, expected",
    [("5", "-5", 0.0), ("-5", "-5", 1.0), ('"-5."', "-5", 1.0), ("+5", "5", 1.0), ("18", "<18", 0.0),
     ("<18", "<18", 1.0), ("< 18", "<18", 1.0), ("> 50", ">50", 1.0), ("...5", "5", 1.0)],
)
def test_a_short_answers_minus_sign_and_comparison_are_kept(answer, ground_truth, expected):
    assert matching_accuracy(answer, ground_truth) == expected


@pytest.mark.parametrize("answer, ground_truth", [("2\u00b3", "23"), ("10\u2076", "106"), ("23", "2\u00b3")])
def test_superscripts_are_not_folded_into_digits(answer, ground_truth):
    assert matching_accuracy(answer, ground_truth) == 0.0

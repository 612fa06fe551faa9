import pytest

from mixed_r1_verl.rewards.chart import chart_accuracy, numeric_value, single_number


@pytest.mark.parametrize(
    "answer, ground_truth, expected",
    [
        ("45", "45", 1.0),
        ("45%", "45", 1.0),
        ("45", "45%", 1.0),
        ("$1,234", "1234", 1.0),
        ("1234 million", "1,234", 1.0),
        ("104", "100", 1.0),
        ("105", "100", 1.0),
        ("106", "100", 0.0),
        ("-5", "-5.1", 1.0),
        ("\u22125", "-5", 1.0),
        ("5", "-5", 0.0),
        ("0", "0", 1.0),
        ("0.01", "0", 0.0),
        ("about 45, maybe 46", "45", 0.0),
        ("in 2019 it was 45", "45", 0.0),
        ("forty-five", "45", 0.0),
        ("", "45", 0.0),
        ("1e999999", "5", 0.0),
        ("nan", "5", 0.0),
        ("inf", "5", 0.0),
        ("9" * 5000, "5", 0.0),
        ("Q3", "3", 0.0),
        ("Germany", "germany", 1.0),
        ("The USA.", "USA", 1.0),
        ("France", "Germany", 0.0),
        ("\u201cGermany\u201d", "Germany", 1.0),
        ("Germany\u3002", "Germany", 1.0),
        ("50", "Rs.50", 1.0),
        ("Rs.50", "50", 1.0),
        ("USD45", "45", 1.0),
        ("Rs.60", "Rs. 50", 0.0),
        ("about 12", "12", 1.0),
        ("12 (approx)", "12", 1.0),
        ("not 12", "12", 0.0),
        ("less than 12", "12", 0.0),
        ("under 18", "18", 0.0),
        ("Group B 12", "12", 0.0),
        ("2019 Q4", "2019", 0.0),
        ("before 2019", "2019", 0.0),
    ],
)
def test_relaxed_accuracy(answer, ground_truth, expected):
    assert chart_accuracy(answer, ground_truth) == expected


def test_a_ground_truth_with_several_numbers_needs_an_exact_match():
    assert chart_accuracy("2019-2020", "2019-2020") == 1.0
    assert chart_accuracy("2019", "2019-2020") == 0.0


def test_single_number_reads_only_lone_finite_numbers():
    assert single_number("€3.5 billion") == 3.5
    assert single_number("1,234,567") == 1234567
    assert single_number("1 and 2") is None
    assert single_number("1" * 400) is None


@pytest.mark.parametrize(
    "answer, ground_truth",
    [("Jan 2020", "Mar 2020"), ("2019 Q4", "2019 Q3"), ("Group B 12", "Group A 12"), ("under 18", "over 18")],
)
def test_a_category_holding_a_number_is_a_text_target(answer, ground_truth):
    assert chart_accuracy(answer, ground_truth) == 0.0
    assert chart_accuracy(ground_truth.upper(), ground_truth) == 1.0


@pytest.mark.parametrize(
    "ground_truth, expected",
    [
        ("45", 45.0),
        ("$ 1,234", 1234.0),
        ("45 %", 45.0),
        ("\u221245 million", -45.0),
        ("3.5 billion USD", 3.5),
        ("12 kg", 12.0),
        ("Jan 2020", None),
        ("2019 Q4", None),
        ("Group B 12", None),
        ("under 18", None),
        ("45 (2019)", None),
        ("2019-2020", None),
        ("1e999", None),
        ("USD 12", 12.0),
        ("US$ 12", 12.0),
        ("Rs. 50", 50.0),
        ("12 million.", 12.0),
        ("30°C", 30.0),
        ("50 kg/m2", 50.0),
        ("about 12", 12.0),
        ("12 (approx)", 12.0),
        ("-4.2%", -4.2),
        ("2019", 2019.0),
        ("5 May", None),
        ("over 18", None),
    ],
)
def test_numeric_value_takes_currencies_approximations_and_units_but_not_labels(ground_truth, expected):
    assert numeric_value(ground_truth) == expected


def test_a_ground_truth_that_is_an_article_is_not_matched_by_nothing():
    assert chart_accuracy("A", "a") == 1.0
    assert chart_accuracy("", "A") == 0.0
    assert chart_accuracy("the", "A") == 0.0


@pytest.mark.parametrize("scale", [1e-3, 1, 1e6])
def test_the_tolerance_is_five_percent_of_the_ground_truth_on_both_sides(scale):
    """Within 5 % of 100 (104.99, 95.01, and 105 and 95 exactly) is right; 105.01, 105.001 and 94.99 are not."""
    for answer, expected in [(104.99, 1.0), (105, 1.0), (105.001, 0.0), (105.01, 0.0), (105.5, 0.0),
                             (95.01, 1.0), (95, 1.0), (94.99, 0.0), (94.5, 0.0)]:  # fmt: skip
        assert chart_accuracy(f"{answer * scale:.12g}", f"{100 * scale:.12g}") == expected, answer


@pytest.mark.parametrize("scale", [1e-3, 0.01, 0.1, 1, 10, 100, 1e6])
def test_the_tolerance_gives_one_verdict_at_one_ratio_whatever_the_scale(scale):
    """2.1 against 2 is exactly 5 % off, as 21 against 20 is; binary floating point must not tell them apart."""
    for answer, ground_truth, expected in [(21, 20, 1.0), (19, 20, 1.0), (63, 60, 1.0), (105, 100, 1.0),
                                           (95, 100, 1.0), (106, 100, 0.0), (94, 100, 0.0)]:  # fmt: skip
        assert chart_accuracy(f"{answer * scale:.12g}", f"{ground_truth * scale:.12g}") == expected


@pytest.mark.parametrize(
    "answer, ground_truth, expected",
    [
        ("\uff0d45", "-45", 1.0),  # full-width hyphen-minus
        ("\u201245", "-45", 1.0),  # figure dash
        ("\ufe6345", "-45", 1.0),  # small hyphen-minus
        ("\uff0d45", "45", 0.0),
        ("$-$45", "-45", 1.0),  # a LaTeX minus in math mode
        ("$-$45", "45", 0.0),
        ("- 45", "45", 1.0),  # a list item's dash, apart from the number
        ("<45", "45", 0.0),
        ("> 45", "45", 0.0),
        ("\u2264 45", "45", 0.0),
        ("\u226045", "45", 0.0),
        ("\u224845", "45", 1.0),  # an approximation, as "about 45"
        ("45{,}000", "45000", 1.0),
        ("\\$45\\,000", "45000", 1.0),
        ("4.5 \\times 10^{4}", "45000", 1.0),
        ("4.5\u00d710^4", "45000", 1.0),
        ("45\u00a0000", "45000", 1.0),  # no-break space between digit groups
        ("45\u202f000", "45,000", 1.0),  # narrow no-break space
        ("45 000", "45000", 0.0),  # a plain space may part two numbers
        ("1,00,000", "100000", 1.0),  # Indian lakh groups
        ("\u20b912,34,567", "1234567", 1.0),
        ("Rs.2,50,000", "250000", 1.0),
        ("-1,00,000", "-100000", 1.0),
        ("1,00,00", "10000", 0.0),  # not a grouping: three numbers
        ("100,00,000", "10000000", 0.0),
        ("1,00,0000", "100000", 0.0),  # a group of four digits is no grouping
        ("1,0000", "1000", 0.0),
        ("45\u00a00000", "45000", 0.0),
        ("[25,99,100]", "[25,50,100]", 0.0),  # a list, not a lakh grouping
        ("12,05,2011", "12,05,2019", 0.0),
        ("45 m\u00b2", "45", 1.0),
    ],
)
def test_signs_digit_groups_and_latex_numbers_as_models_write_them(answer, ground_truth, expected):
    assert chart_accuracy(answer, ground_truth) == expected


def test_a_comparison_makes_a_ground_truth_a_label():
    assert numeric_value("<18") is None and numeric_value("\u2265 65") is None
    assert chart_accuracy("<18", "<18") == 1.0 and chart_accuracy("18", "<18") == 0.0
    assert chart_accuracy("< 18", "<18") == 1.0 and chart_accuracy("> 50", ">50") == 1.0


@pytest.mark.parametrize("written", ["US$12", "HK$12", "A$12", "HK$ 12", "NZ$12 billion"])
def test_a_dollar_currency_with_its_letters_against_the_sign_reads_as_its_number(written):
    assert numeric_value(written) == 12.0
    assert chart_accuracy(written, "12") == 1.0
    assert chart_accuracy("12", written) == 1.0
    assert chart_accuracy(written, "US$12") == 1.0


@pytest.mark.parametrize("variable", ["r", "s", "a", "c", "x"])
def test_a_latex_variable_before_a_dollar_sign_is_no_currency(variable):
    """Country letters go with a dollar sign only where a number follows it."""
    assert chart_accuracy(f"${variable}$ = 0.85", "0.85") == 0.0


@pytest.mark.parametrize("dotted", ["12.05.2020", "1.2.3", "1.000.000", "1,000.000.000", ".5.3"])
def test_digits_after_a_second_point_make_no_number(dotted):
    """A dotted date, a version or European thousands is a label, not its first part."""
    assert numeric_value(dotted) is None and single_number(dotted) is None
    assert chart_accuracy(dotted, dotted) == 1.0
    assert chart_accuracy(dotted.split(".")[0], dotted) == 0.0
    assert chart_accuracy(dotted[:-1] + "9", dotted) == 0.0


def test_a_full_stop_after_a_number_keeps_it_a_number():
    assert numeric_value("12.5.") == 12.5 and single_number("It is 12.5. Then") == 12.5


@pytest.mark.parametrize(
    "answer, ground_truth",
    [
        ("\uff14\uff15\uff0e\uff15", "45.5"),
        ("45.5", "\uff14\uff15\uff0e\uff15"),
        ("\uff14\uff15\uff0c\uff10\uff10\uff10", "45000"),
        ("\uff04\uff14\uff15", "45"),
        ("\uff31\uff14", "Q4"),  # a label
    ],
)
def test_full_width_digits_and_punctuation_read_as_ascii(answer, ground_truth):
    assert chart_accuracy(answer, ground_truth) == 1.0


def test_a_full_width_number_has_its_ascii_value():
    assert numeric_value("\uff14\uff15\uff0e\uff15") == 45.5 and single_number("\uff14\uff15\uff0e\uff15") == 45.5

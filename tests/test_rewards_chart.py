import pytest

from mixed_r1_verl.rewards.chart import chart_accuracy, single_number


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

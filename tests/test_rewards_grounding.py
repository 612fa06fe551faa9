import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixed_r1_verl.rewards.grounding import as_box, grounding_accuracy, iou, parse_first_box

GT = "[100, 100, 200, 200]"


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("[100, 100, 200, 200]", (100, 100, 200, 200)),
        ("[100,100,200,200]", (100, 100, 200, 200)),
        ("(100, 100), (200, 200)", (100, 100, 200, 200)),
        ("(100.5,100),(200,200.25)", (100.5, 100, 200, 200.25)),
        ('[{"bbox_2d": [10, 20, 30, 40], "label": "cat"}]', (10, 20, 30, 40)),
        ("first [1, 2, 3, 4] then [5, 6, 7, 8]", (1, 2, 3, 4)),
        ("(1, 2), (3, 4) then [5, 6, 7, 8]", (1, 2, 3, 4)),
        ("[1, 2, 3]", None),
        ("[1, 2, 3, 4, 5]", None),
        ("[1, 2, 3] and then [1, 2, 3, 4]", None),
        ("[200, 200, 100, 100]", None),
        ("[100, 100, 100, 200]", None),
        ("[1e999, 0, 1e999, 5]", None),
        ("no box here", None),
        ("[1, 2, 3, 4" + "\n" * 500 + ", ]", (1, 2, 3, 4)),
        ("[1, 2, 3, 4 ,\n]", (1, 2, 3, 4)),
        ("(1, 2)" + " " * 500 + "to (3, 4)", (1, 2, 3, 4)),
        ("(1, 2) -(3, 4)", (1, 2, 3, 4)),
        ("(1, 2)" + " " * 500 + "to" + " " * 500 + "x (3, 4)", None),
        ('[{"bbox_2d": [135' + " " * 500 + '"label": "x"}]', None),
        ("[\u22125, 100, 200, 200]", (-5, 100, 200, 200)),  # Unicode minus
        ("[100\uff0c100\uff0c200\uff0c200]", (100, 100, 200, 200)),  # full-width commas
        ("\uff3b\uff11\uff10, 20, 30, 40\uff3d", (10, 20, 30, 40)),  # full-width brackets and digits
        ("(100, 100, 200, 200)", (100, 100, 200, 200)),
        ("The box is (1,2,3,4) or [5, 6, 7, 8]", (1, 2, 3, 4)),
        ("[5, 6, 7, 8] or (1, 2, 3, 4)", (5, 6, 7, 8)),
        ("The dog (2 of them, 3) is at (1, 2, 3, 4)", (1, 2, 3, 4)),  # parentheses of other counts are prose
        ("(1, 2, 3, 4" + " " * 500 + ")", (1, 2, 3, 4)),
        ("(1, 2, 3, 4, 5)", None),
    ],
)
def test_parse_first_box(answer, expected):
    assert parse_first_box(answer) == expected


def test_a_parenthesised_box_answers_as_the_same_box_in_brackets():
    assert grounding_accuracy("(100, 100, 200, 200)", GT) == 1.0
    assert grounding_accuracy("(100, 100, 200, 200)", "(100, 100, 200, 200)") == 1.0


def test_iou_is_continuous():
    assert grounding_accuracy("[100, 100, 200, 200]", GT) == 1.0
    assert grounding_accuracy("[100, 100, 200, 150]", GT) == pytest.approx(0.5)
    assert grounding_accuracy("[150, 100, 250, 200]", GT) == pytest.approx(50 * 100 / (2 * 100 * 100 - 50 * 100))
    assert grounding_accuracy("[300, 300, 400, 400]", GT) == 0.0


def test_threshold_mode():
    assert grounding_accuracy("[100, 100, 200, 150]", GT, iou_threshold=0.5) == 1.0
    assert grounding_accuracy("[100, 100, 200, 149]", GT, iou_threshold=0.5) == 0.0


def test_whole_image_box_is_not_rewarded():
    whole = grounding_accuracy("[0, 0, 1000, 1000]", GT, frame_size=(1000, 1000))
    assert whole == pytest.approx(0.01)


def test_boxes_are_clipped_to_the_frame():
    # The overshoot outside a 200x200 frame is cut off before the IoU.
    assert grounding_accuracy("[100, 100, 500, 500]", GT, frame_size=(200, 200)) == 1.0
    assert grounding_accuracy("[100, 100, 500, 500]", GT) < 0.1
    assert grounding_accuracy("[300, 300, 400, 400]", GT, frame_size=(200, 200)) == 0.0


def test_ground_truth_as_list_or_string():
    assert grounding_accuracy("[0, 0, 10, 10]", [0, 0, 10, 10]) == 1.0
    with pytest.raises(ValueError):
        grounding_accuracy("[0, 0, 10, 10]", "[10, 0, 0, 10]")


def test_iou_symmetry_and_range():
    first, second = (0, 0, 4, 4), (2, 2, 6, 6)
    assert iou(first, second) == iou(second, first) == pytest.approx(4 / 28)
    assert math.isclose(iou(first, first), 1.0)


@pytest.mark.parametrize(
    "first, second, expected",
    [
        ((0, 0, 1e308, 1e308), (0, 0, 1.7e308, 1.7e308), (1 / 1.7) ** 2),
        ((-1e308, -1e308, 1.7e308, 1.7e308), (-1e308, -1e308, 1.7e308, 1.7e308), 1.0),
        ((1e-320, 0, 2e-320, 1e-320), (1e-320, 0, 2e-320, 1e-320), 1.0),
        ((0, 0, 1e-300, 1e-300), (0, 0, 1e300, 1e300), 0.0),
    ],
)
def test_iou_of_extreme_boxes_is_finite_and_in_range(first, second, expected):
    assert iou(first, second) == pytest.approx(expected, abs=1e-12)


FINITE = st.floats(allow_nan=False, allow_infinity=False)
BOXES = st.tuples(FINITE, FINITE, FINITE, FINITE).map(
    lambda v: as_box([min(v[0], v[2]), min(v[1], v[3]), max(v[0], v[2]), max(v[1], v[3])])
).filter(lambda box: box is not None)


@given(BOXES, BOXES)
def test_iou_of_any_finite_boxes_is_in_range(first, second):
    assert 0.0 <= iou(first, second) <= 1.0
    assert iou(first, first) == 1.0


@pytest.mark.parametrize("frame_size", [[math.nan, 300], [0, 0], [300, -1], [math.inf, 300], [300], ["a", "b"]])
def test_a_frame_size_that_is_no_frame_is_an_error(frame_size):
    with pytest.raises(ValueError, match="frame_size must be"):
        grounding_accuracy(GT, GT, frame_size=frame_size)

import math

import pytest

from mixed_r1_verl.rewards.grounding import grounding_accuracy, iou, parse_first_box

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
    ],
)
def test_parse_first_box(answer, expected):
    assert parse_first_box(answer) == expected


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

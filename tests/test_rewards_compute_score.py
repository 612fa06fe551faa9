import logging

import pytest

from mixed_r1_verl.rewards import compute_score

KEYS = {"score", "accuracy", "correct", "format", "error", "task", "pred"}
WELL_FORMED = "<think>Looking at the image.</think><answer>{}</answer>"


def score(answer, ground_truth, task, **kwargs):
    extra = {"task": task, **kwargs.pop("extra", {})}
    return compute_score("src", WELL_FORMED.format(answer), ground_truth, extra, **kwargs)


def test_every_task_returns_the_same_keys(tiny_model_dir):
    results = [
        score("B", "B", "matching"),
        score("45", "45", "chart"),
        score("[0, 0, 10, 10]", "[0, 0, 10, 10]", "grounding"),
        score("a cat", "a cat", "open_ended", embedding_model=str(tiny_model_dir)),
        compute_score("src", "x", "y", {"task": "nope"}),
    ]
    for result in results:
        assert set(result) == KEYS
    assert [r["accuracy"] for r in results] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert [r["error"] for r in results] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert [r["pred"] for r in results] == ["B", "45", "[0, 0, 10, 10]", "a cat", "(no answer)"]


def test_score_mixes_accuracy_and_format():
    assert score("B", "B", "matching")["score"] == pytest.approx(1.0)
    assert score("C", "B", "matching")["score"] == pytest.approx(0.1)
    bare = compute_score("src", "<answer>B</answer>", "B", {"task": "matching"})
    assert (bare["accuracy"], bare["format"], bare["score"]) == (1.0, 0.0, pytest.approx(0.9))


def test_a_latex_text_answer_is_read_as_its_text():
    assert score("\\boxed{\\text{Germany}}", "Germany", "chart")["accuracy"] == 1.0
    assert score("\\boxed{\\text{Eiffel Tower}}", "eiffel tower", "matching")["accuracy"] == 1.0


def test_format_weight_per_task():
    weights = {"matching": 0.5, "chart": 0.0}
    assert score("C", "B", "matching", format_weight=weights)["score"] == pytest.approx(0.5)
    assert score("40", "45", "chart", format_weight=weights)["score"] == 0.0
    assert score("[0,0,1,1]", "[0,0,2,2]", "grounding", format_weight=weights)["score"] == pytest.approx(0.9 * 0.25 + 0.1)
    assert score("C", "B", "matching", format_weight=0.3)["score"] == pytest.approx(0.3)


def test_task_from_data_source_map():
    result = compute_score("my_charts", "<answer>3</answer>", "3", None, task_map={"my_charts": "chart"})
    assert (result["task"], result["accuracy"]) == ("chart", 1.0)
    assert compute_score("ChartQA", "<answer>3</answer>", "3")["task"] == "chart"
    assert compute_score("chartqa", "<answer>B</answer>", "B", None, task_map={"chartqa": "matching"})["task"] == "matching"


def test_unknown_task_is_counted_not_raised(caplog):
    with caplog.at_level(logging.WARNING):
        result = compute_score("mystery", "<answer>1</answer>", "1", {})
    assert result == {"score": 0.0, "accuracy": 0.0, "correct": 0.0, "format": 0.0, "error": 1.0, "task": "unknown",
                      "pred": "1"}
    assert "unknown task" in caplog.text


def test_internal_errors_give_zero_and_are_flagged():
    bad_ground_truth = score("[0, 0, 1, 1]", "not a box", "grounding")
    assert (bad_ground_truth["score"], bad_ground_truth["error"]) == (0.0, 1.0)
    missing_model = score("a cat", "a cat", "open_ended")
    assert (missing_model["score"], missing_model["error"]) == (0.0, 1.0)


@pytest.mark.parametrize("extra_info", [["matching"], "matching", 5])
def test_an_extra_info_that_is_no_mapping_is_a_reward_error_not_a_raise(extra_info, caplog):
    with caplog.at_level(logging.WARNING):
        result = compute_score("chartqa", "<answer>1</answer>", "1", extra_info)
    assert (result["score"], result["error"]) == (0.0, 1.0)
    assert "mixed_r1 reward error, sample (data_source='chartqa')" in caplog.text


def test_no_answer_means_no_accuracy():
    result = compute_score("src", "<think>B</think>B", "B", {"task": "matching"})
    assert (result["accuracy"], result["error"]) == (0.0, 0.0)


def test_grounding_reads_frame_and_threshold_from_extra_info():
    norm = score("[0, 0, 2000, 2000]", "[0, 0, 1000, 1000]", "grounding", extra={"box_frame": "norm1000"})
    assert norm["accuracy"] == 1.0
    absolute = score("[0, 0, 2000, 2000]", "[0, 0, 1000, 1000]", "grounding", extra={"box_frame": "abs"})
    assert absolute["accuracy"] == pytest.approx(0.25)
    threshold = score("[0, 0, 10, 5]", "[0, 0, 10, 10]", "grounding", extra={"iou_threshold": 0.5})
    assert threshold["accuracy"] == 1.0


def test_correct_is_accuracy_at_the_tasks_threshold(tiny_model_dir):
    assert [score(a, "B", "matching")["correct"] for a in ("B", "C")] == [1.0, 0.0]
    assert [score(a, "45", "chart")["correct"] for a in ("46", "50")] == [1.0, 0.0]
    # grounding: IoU 0.5 by default, whatever the format
    half = score("[0, 0, 10, 5]", "[0, 0, 10, 10]", "grounding")
    just_under = compute_score("src", "<answer>[0, 0, 10, 4.9]</answer>", "[0, 0, 10, 10]", {"task": "grounding"})
    assert (half["accuracy"], half["correct"]) == (0.5, 1.0)
    assert just_under["correct"] == 0.0 and just_under["accuracy"] == pytest.approx(0.49)
    # a binary IoU reward at 0.75 makes correctness follow it
    assert score("[0, 0, 10, 7]", "[0, 0, 10, 10]", "grounding", iou_threshold=0.75)["correct"] == 0.0
    assert score("[0, 0, 10, 8]", "[0, 0, 10, 10]", "grounding", iou_threshold=0.75)["correct"] == 1.0
    # open_ended: BMAS 0.5 by default; settable per task
    model = str(tiny_model_dir)
    same = score("a red bicycle", "a red bicycle", "open_ended", embedding_model=model)
    other = score("two dogs", "a red bicycle", "open_ended", embedding_model=model)
    assert same["correct"] == 1.0
    assert other["correct"] == (1.0 if other["accuracy"] >= 0.5 else 0.0)
    at = lambda threshold: score("two dogs", "a red bicycle", "open_ended", embedding_model=model,  # noqa: E731
                                 correct_threshold={"open_ended": threshold})
    assert at(other["accuracy"] + 1e-6)["correct"] == 0.0 and at(other["accuracy"])["correct"] == 1.0


def test_matching_reads_options_from_extra_info():
    assert score("a dog", "B", "matching", extra={"options": ["cat", "dog"]})["accuracy"] == 1.0


@pytest.mark.parametrize(
    "response",
    [
        "<answer>B</answer>" * 10_000,
        "<think>" * 10_000 + "<answer>B</answer>",
        "<answer>" + "[" * 10_000 + "</answer>",
        "<answer>" + "(" * 10_000 + "1,2),(3,4)</answer>",
        "<answer>" + "9" * 5_000 + "</answer>",
        "<answer>1e999999</answer>",
        "\\boxed{" * 10_000,
        "<answer>" + "[1, " * 5_000 + "</answer>",
    ],
)
def test_pathological_responses_are_scored(response):
    for task, ground_truth in (("matching", "B"), ("chart", "5"), ("grounding", "[0, 0, 5, 5]")):
        result = compute_score("src", response, ground_truth, {"task": task})
        assert result["error"] == 0.0 and 0.0 <= result["score"] <= 1.0


@pytest.mark.parametrize("ground_truth", [None, "", "  ", float("nan"), []])
@pytest.mark.parametrize("task", ["chart", "matching", "grounding", "open_ended"])
def test_a_sample_without_ground_truth_is_bad_input(task, ground_truth):
    extra = {"task": task, "id": "row-7", "index": 7}
    with pytest.raises(ValueError, match=r"sample \(data_source='src', id='row-7', index=7\).*ground truth is"):
        compute_score("src", WELL_FORMED.format("None"), ground_truth, extra)


def test_the_error_names_the_sample_by_what_it_has():
    named = r"^sample \(data_source='chartqa'\) cannot be scored: its ground truth is None$"
    with pytest.raises(ValueError, match=named):
        compute_score("chartqa", WELL_FORMED.format("None"), None, {"task": "chart"})


def test_grounding_flags_a_frame_size_that_is_no_frame():
    for frame_size in ([float("nan"), 300], [0, 0]):
        result = score("[0, 0, 10, 10]", "[0, 0, 10, 10]", "grounding", extra={"frame_size": frame_size})
        assert (result["accuracy"], result["error"]) == (0.0, 1.0)


def test_an_iou_threshold_of_none_in_extra_info_is_not_set():
    # [0, 0, 10, 4] on [0, 0, 10, 10]: IoU 0.4
    configured = score("[0, 0, 10, 4]", "[0, 0, 10, 10]", "grounding", iou_threshold=0.3, extra={"iou_threshold": None})
    assert configured["accuracy"] == 1.0
    continuous = score("[0, 0, 10, 4]", "[0, 0, 10, 10]", "grounding", extra={"iou_threshold": None})
    assert continuous["accuracy"] == pytest.approx(0.4)
    per_sample = score("[0, 0, 10, 4]", "[0, 0, 10, 10]", "grounding", iou_threshold=0.3, extra={"iou_threshold": 0.5})
    assert per_sample["accuracy"] == 0.0


@pytest.mark.parametrize("threshold", [float("nan"), 0.0, 1.5, "0.5", True])
def test_an_iou_threshold_outside_0_1_is_an_error(threshold):
    result = score("[0, 0, 10, 10]", "[0, 0, 10, 10]", "grounding", extra={"iou_threshold": threshold})
    assert (result["accuracy"], result["error"]) == (0.0, 1.0)


def test_a_frame_size_of_text_is_an_error_that_names_frame_size(caplog):
    with caplog.at_level(logging.WARNING):
        result = score("[0, 0, 10, 10]", "[0, 0, 10, 10]", "grounding", extra={"frame_size": ["a", "b"]})
    assert result["error"] == 1.0 and "frame_size must be [width, height]" in caplog.text

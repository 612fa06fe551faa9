"""Checks of a training step's response lengths in verl's file-logger metrics, shared by the CPU runs and
the GPU suite."""

import pytest


def assert_task_lengths_add_up_to_the_batchs(metrics: dict, per_task: dict, step: int, response_length: int):
    """The tasks' response lengths and clip ratios, weighted by their counts, are the batch's; a response is
    cut only at `response_length` (the smoke prompts leave every response all of it), so the clip ratio is
    above 0 exactly when the longest response has that length."""
    samples = sum(values["count"] for values in per_task.values())
    for key in ("response_length/mean", "response_length/clip_ratio"):
        weighted = sum(values["count"] * values[key] for values in per_task.values() if values["count"]) / samples
        assert weighted == pytest.approx(metrics[key]), f"step {step}: {key}"
    assert metrics["response_length/max"] <= response_length
    reached = metrics["response_length/max"] == response_length
    assert (metrics["response_length/clip_ratio"] > 0) == reached, f"step {step}: {metrics}"

"""Mixed-Reward: one entry point that scores a response with the reward of its task.

    score = (1 - w) * accuracy + w * format
    correct = 1 if accuracy >= the task's correctness threshold else 0

`compute_score` has verl's custom-reward signature and never raises on a response: an internal error
gives score 0 and accuracy 0, is flagged in `error`, and is logged. A sample without a ground truth is
bad input, not a response to score: it raises ValueError naming the sample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sized
from dataclasses import dataclass

from .answer import extract_answer, format_reward, normalized_answer
from .chart import chart_accuracy
from .embeddings import EmbeddingModel, load_embedding_model
from .grounding import NORM1000_FRAME, checked_iou_threshold, grounding_accuracy
from .matching import matching_accuracy
from .open_ended import open_ended_accuracy
from .tasks import BUILTIN_TASKS, default_correct_threshold, plugin_tasks, task_names

logger = logging.getLogger(__name__)

UNKNOWN_TASK = "unknown"
DEFAULT_FORMAT_WEIGHT = 0.1

# Public benchmarks whose task is unambiguous; `task_map` entries take precedence.
DEFAULT_TASK_MAP = {
    "chartqa": "chart",
    "plotqa": "chart",
    "dvqa": "chart",
    "refcoco": "grounding",
    "refcoco+": "grounding",
    "refcocog": "grounding",
    "pope": "matching",
    "scienceqa": "matching",
    "mmbench": "matching",
    "coco_caption": "open_ended",
}


class RewardInputError(ValueError):
    """The sample cannot be scored (unknown task, bad ground truth, no embedding model...)."""


@dataclass
class Verdict:
    """Everything about one response but its accuracy, which BMAS may compute later in a batch."""

    task: str
    answer: str | None
    format: float
    format_weight: float
    correct_threshold: float = 1.0
    accuracy: float | None = None
    error: str | None = None

    def result(self) -> dict:
        """score, accuracy, correct, format, error, task, pred: the same keys for every sample. `pred` is
        the normalized answer (`normalized_answer`), the key verl's validation votes on for maj@N."""
        failed = self.error is not None
        accuracy = 0.0 if failed else float(self.accuracy or 0.0)
        score = 0.0 if failed else (1.0 - self.format_weight) * accuracy + self.format_weight * self.format
        return {
            "score": score,
            "accuracy": accuracy,
            "correct": 1.0 if not failed and accuracy >= self.correct_threshold else 0.0,
            "format": self.format,
            "error": 1.0 if failed else 0.0,
            "task": self.task,
            "pred": normalized_answer(self.answer),
        }


def sample_name(data_source, extra_info: Mapping | None) -> str:
    """How errors name a sample: its data_source and, when extra_info (a mapping) has them, its id and index."""
    extra_info = extra_info if isinstance(extra_info, Mapping) else {}
    named = [f"data_source={data_source!r}"]
    named += [f"{key}={extra_info[key]!r}" for key in ("id", "index") if extra_info.get(key) is not None]
    return f"sample ({', '.join(named)})"


def missing_ground_truth(ground_truth) -> str | None:
    """Why `ground_truth` is no ground truth (None, NaN, blank text, an empty sequence), or None."""
    if ground_truth is None:
        return "its ground truth is None"
    if isinstance(ground_truth, str):
        return None if ground_truth.strip() else f"its ground truth is blank ({ground_truth!r})"
    if isinstance(ground_truth, float) and math.isnan(ground_truth):
        return "its ground truth is NaN"
    if isinstance(ground_truth, Sized) and len(ground_truth) == 0:
        return "its ground truth is empty"
    return None


def check_ground_truth(data_source, ground_truth, extra_info: Mapping | None) -> None:
    """Raises ValueError naming the sample when it has no ground truth: nothing can be scored against it."""
    reason = missing_ground_truth(ground_truth)
    if reason is not None:
        raise ValueError(f"{sample_name(data_source, extra_info)} cannot be scored: {reason}")


def resolve_task(data_source: str, extra_info: Mapping | None, task_map: Mapping | None = None) -> str:
    task = (extra_info or {}).get("task")
    if task is None:
        source = str(data_source).lower()
        task = (task_map or {}).get(source, (task_map or {}).get(data_source, DEFAULT_TASK_MAP.get(source)))
    # A built-in task is scored even where an installed task cannot be loaded (task_names would raise).
    if task not in BUILTIN_TASKS and task not in task_names():
        raise RewardInputError(f"unknown task {task!r} for data_source {data_source!r}")
    return task


def known_task(data_source, extra_info: Mapping | None) -> str | None:
    """The task `resolve_task` gives a sample without a task_map, or None where it knows none."""
    try:
        return resolve_task(data_source, extra_info)
    except RewardInputError:
        return None


def _per_task_setting(setting, task: str, default: float) -> float:
    """A setting given once for every task (a float) or per task (task -> float); `default` if unset."""
    if isinstance(setting, Mapping):
        return float(setting.get(task, default))
    return default if setting is None else float(setting)


PER_TASK_OPTIONS = ("format_weight", "correct_threshold")


def task_correct_threshold(task: str, correct_threshold=None) -> float:
    """The accuracy at which a response of `task` is correct: `correct_threshold` (a float, or task -> float)
    where it sets one for the task, else the task's default."""
    return _per_task_setting(correct_threshold, task, default_correct_threshold(task))


def reward_option_errors(options: Mapping) -> list[str]:
    """What is wrong with the per-task options, `iou_threshold` and `task_map` of `options` (each message starts
    with the option's name): a value that is not a number in [0, 1] (in (0, 1] or null for `iou_threshold`), a
    task name that is no task. A typo there would otherwise score with the defaults, silently, and an
    `iou_threshold` the grounding reward refuses would score every grounding sample 0 with an error."""
    known = task_names()
    errors = []
    for name in PER_TASK_OPTIONS:
        setting = options.get(name)
        by_task = setting.items() if isinstance(setting, Mapping) else [(None, setting)] if setting is not None else []
        for task, value in by_task:
            if task is not None and task not in known:
                errors.append(f"{name}: {task!r} is not a task (tasks: {', '.join(known)})")
            elif isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                where = f"{name}.{task}" if task is not None else name
                errors.append(f"{where}: {value!r} is not a number in [0, 1]")
    try:
        checked_iou_threshold(options.get("iou_threshold"))
    except ValueError:
        errors.append(f"iou_threshold: {options.get('iou_threshold')!r} is not a number in (0, 1]")
    task_map = options.get("task_map") or {}
    if not isinstance(task_map, Mapping):
        errors.append(f"task_map: expected data_source -> task, got {task_map!r}")
    else:
        errors += [
            f"task_map.{source}: {task!r} is not a task (tasks: {', '.join(known)})"
            for source, task in task_map.items() if task not in known
        ]  # fmt: skip
    return errors


def _frame_size(extra_info: Mapping):
    if extra_info.get("frame_size") is not None:
        return extra_info["frame_size"]  # checked by grounding_accuracy
    return NORM1000_FRAME if extra_info.get("box_frame") == "norm1000" else None


def _iou_threshold(extra_info: Mapping, configured: float | None) -> float | None:
    # None in extra_info is "not set": a parquet struct field is present in every row once one row sets it.
    threshold = extra_info.get("iou_threshold")
    return configured if threshold is None else threshold


def rule_accuracy(task: str, answer: str, ground_truth, extra_info: Mapping, iou_threshold=None) -> float:
    """Accuracy of the rule-scored tasks (everything but open_ended, installed tasks included)."""
    if task == "matching":
        return matching_accuracy(answer, str(ground_truth), extra_info.get("options"))
    if task == "chart":
        return chart_accuracy(answer, str(ground_truth))
    if task == "grounding":
        threshold = _iou_threshold(extra_info, iou_threshold)
        return grounding_accuracy(answer, ground_truth, _frame_size(extra_info), threshold)
    installed = plugin_tasks().get(task)
    if installed is not None:
        return installed.score(answer, ground_truth, extra_info)
    raise RewardInputError(f"task {task!r} is not rule-scored")


def judge(
    data_source: str,
    solution_str: str,
    ground_truth,
    extra_info: Mapping | None = None,
    *,
    task_map: Mapping | None = None,
    format_weight=None,
    iou_threshold: float | None = None,
    correct_threshold=None,
) -> Verdict:
    """Task, answer, format and, for the rule tasks, accuracy. open_ended is left with accuracy None.
    Errors are recorded in the verdict, never raised, except a missing ground truth (`check_ground_truth`)."""
    check_ground_truth(data_source, ground_truth, extra_info)
    extra_info = extra_info or {}
    verdict = Verdict(UNKNOWN_TASK, None, 0.0, DEFAULT_FORMAT_WEIGHT)
    try:
        verdict.format = format_reward(solution_str)
        verdict.answer = extract_answer(solution_str)
        verdict.task = resolve_task(data_source, extra_info, task_map)
        verdict.format_weight = _per_task_setting(format_weight, verdict.task, DEFAULT_FORMAT_WEIGHT)
        verdict.correct_threshold = task_correct_threshold(verdict.task, correct_threshold)
        if verdict.answer is None:
            verdict.accuracy = 0.0
        elif verdict.task != "open_ended":
            verdict.accuracy = rule_accuracy(verdict.task, verdict.answer, ground_truth, extra_info, iou_threshold)
    except Exception as error:  # a reward must never take the trainer down
        verdict.error = f"{type(error).__name__}: {error}"
        logger.warning("mixed_r1 reward error, %s: %s", sample_name(data_source, extra_info), verdict.error)
    return verdict


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """Score one response with the reward of its task.

    Keyword options: `task_map` (data_source -> task), `format_weight` (float, or task -> float),
    `iou_threshold` (grounding: 1 when IoU reaches it instead of the continuous IoU),
    `correct_threshold` (float, or task -> float; defaults in `DEFAULT_CORRECT_THRESHOLDS`, and an
    installed task's own),
    `embedding_model` (open_ended: an HF model directory or hub id, or an `EmbeddingModel`).
    Returns `score`, `accuracy`, `correct` (0/1), `format`, `error` (0/1), `task` and `pred` (the answer,
    normalized). Raises ValueError for a sample without a ground truth (None, NaN, blank, empty).
    """
    return scored_verdict(data_source, solution_str, ground_truth, extra_info, **kwargs).result()


def scored_verdict(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> Verdict:
    """`compute_score`'s verdict, accuracy included, whose `error` keeps the reason of a reward error
    (the result says only that there was one)."""
    verdict = judge(
        data_source,
        solution_str,
        ground_truth,
        extra_info,
        task_map=kwargs.get("task_map"),
        format_weight=kwargs.get("format_weight"),
        iou_threshold=kwargs.get("iou_threshold"),
        correct_threshold=kwargs.get("correct_threshold"),
    )
    if verdict.error is None and verdict.accuracy is None:
        try:
            embedding_model = kwargs.get("embedding_model")
            if embedding_model is None:
                raise RewardInputError("open_ended needs an embedding_model (an HF model directory)")
            if not isinstance(embedding_model, EmbeddingModel):
                embedding_model = load_embedding_model(str(embedding_model))
            verdict.accuracy = open_ended_accuracy(verdict.answer, str(ground_truth), embedding_model)
        except Exception as error:
            verdict.error = f"{type(error).__name__}: {error}"
            logger.warning("mixed_r1 reward error, %s: %s", sample_name(data_source, extra_info), verdict.error)
    return verdict


def values_differ(values) -> bool:
    """Whether a prompt group's rewards (or accuracies) are not all equal: GRPO's advantage is zero
    for every response of a group whose values are."""
    return max(values) != min(values)

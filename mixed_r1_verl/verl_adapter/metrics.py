"""Per-task training metrics from the reward manager's extra info."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

from mixed_r1_verl.rewards import values_differ
from mixed_r1_verl.rewards.answer import top_answer

METRIC_PREFIX = "mixed_r1"
AVERAGED_KEYS = ("score", "accuracy", "correct", "format", "error")


def prompt_uid(key: str) -> str:
    """The prompt (GRPO group) of a TransferQueue trajectory key, `<uid>_<session>_<turn>`."""
    return key.split("_")[0]


def rows_by_task(reward_extra_infos: Iterable[Mapping], groups: Iterable | None = None) -> dict[str, list[tuple]]:
    """The (row, prompt group) pairs of each task, the group None without `groups`. Rows without a task
    (another reward manager) are left out."""
    infos = list(reward_extra_infos)
    by_task: dict[str, list[tuple]] = defaultdict(list)
    for info, group in zip(infos, [None] * len(infos) if groups is None else groups, strict=True):
        if info and "task" in info:
            by_task[str(info["task"])].append((info, group))
    return dict(by_task)


def groups_with_signal(rows_and_groups: list[tuple]) -> float | None:
    """The share of prompt groups (two rows or more) whose rewards (`score`) differ: GRPO's advantage is
    zero for every response of the others. None when no group has two rows."""
    scores: dict = defaultdict(list)
    for row, group in rows_and_groups:
        if "score" in row:
            scores[group].append(float(row["score"]))
    judged = [values for values in scores.values() if len(values) > 1]
    return sum(values_differ(values) for values in judged) / len(judged) if judged else None


def per_task_metrics(
    reward_extra_infos: Iterable[Mapping], known_tasks: Iterable[str] = (), groups: Iterable | None = None
) -> dict[str, float]:
    """`mixed_r1/<task>/count`, `mixed_r1/<task>/<key>/mean` (score, accuracy, correct, format, error)
    and `mixed_r1/<task>/top_answer_share` (the share of the task's responses giving its most common
    answer, `pred`) for every task in the batch; given each row's prompt group, also
    `mixed_r1/<task>/groups_with_signal`. A task of `known_tasks` absent from the batch gets count 0 and
    nothing else (a mean of nothing is undefined), so its count curve stays continuous."""
    by_task = rows_by_task(reward_extra_infos, groups)
    metrics: dict[str, float] = {}
    for task in sorted(set(known_tasks) | set(by_task)):
        rows_and_groups = by_task.get(task, [])
        rows = [row for row, _ in rows_and_groups]
        metrics[f"{METRIC_PREFIX}/{task}/count"] = float(len(rows))
        for key in AVERAGED_KEYS:
            values = [float(row[key]) for row in rows if key in row]
            if values:
                metrics[f"{METRIC_PREFIX}/{task}/{key}/mean"] = float(np.mean(values))
        answers = [str(row["pred"]) for row in rows if "pred" in row]
        if answers:
            metrics[f"{METRIC_PREFIX}/{task}/top_answer_share"] = top_answer(answers)[1]
        if groups is not None and (share := groups_with_signal(rows_and_groups)) is not None:
            metrics[f"{METRIC_PREFIX}/{task}/groups_with_signal"] = share
    return metrics


class PerTaskMetricsLog:
    """Per-task metrics step after step; every task seen earlier in the run is logged (count 0 when absent)."""

    def __init__(self):
        self.known_tasks: set[str] = set()

    def step(self, reward_extra_infos: Iterable[Mapping], groups: Iterable | None = None) -> dict[str, float]:
        infos = list(reward_extra_infos)
        self.known_tasks.update(rows_by_task(infos))
        return per_task_metrics(infos, self.known_tasks, groups)

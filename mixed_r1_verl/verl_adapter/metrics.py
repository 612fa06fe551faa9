"""Per-task training metrics from the reward manager's extra info."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

from mixed_r1_verl.rewards.answer import top_answer

METRIC_PREFIX = "mixed_r1"
AVERAGED_KEYS = ("score", "accuracy", "correct", "format", "error")


def rows_by_task(reward_extra_infos: Iterable[Mapping]) -> dict[str, list[Mapping]]:
    """The rows of each task. Rows without a task (another reward manager) are left out."""
    by_task: dict[str, list[Mapping]] = defaultdict(list)
    for info in reward_extra_infos:
        if info and "task" in info:
            by_task[str(info["task"])].append(info)
    return dict(by_task)


def per_task_metrics(reward_extra_infos: Iterable[Mapping], known_tasks: Iterable[str] = ()) -> dict[str, float]:
    """`mixed_r1/<task>/count`, `mixed_r1/<task>/<key>/mean` (score, accuracy, correct, format, error)
    and `mixed_r1/<task>/top_answer_share` (the share of the task's responses giving its most common
    answer, `pred`) for every task in the batch. A task of `known_tasks` absent from the batch gets
    count 0 and nothing else (a mean of nothing is undefined), so its count curve stays continuous."""
    by_task = rows_by_task(reward_extra_infos)
    metrics: dict[str, float] = {}
    for task in sorted(set(known_tasks) | set(by_task)):
        rows = by_task.get(task, [])
        metrics[f"{METRIC_PREFIX}/{task}/count"] = float(len(rows))
        for key in AVERAGED_KEYS:
            values = [float(row[key]) for row in rows if key in row]
            if values:
                metrics[f"{METRIC_PREFIX}/{task}/{key}/mean"] = float(np.mean(values))
        answers = [str(row["pred"]) for row in rows if "pred" in row]
        if answers:
            metrics[f"{METRIC_PREFIX}/{task}/top_answer_share"] = top_answer(answers)[1]
    return metrics


class PerTaskMetricsLog:
    """Per-task metrics step after step; every task seen earlier in the run is logged (count 0 when absent)."""

    def __init__(self):
        self.known_tasks: set[str] = set()

    def step(self, reward_extra_infos: Iterable[Mapping]) -> dict[str, float]:
        infos = list(reward_extra_infos)
        self.known_tasks.update(rows_by_task(infos))
        return per_task_metrics(infos, self.known_tasks)

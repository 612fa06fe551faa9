"""Per-task training metrics from the reward manager's extra info."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

METRIC_PREFIX = "mixed_r1"
AVERAGED_KEYS = ("score", "accuracy", "format", "error")


def per_task_metrics(reward_extra_infos: Iterable[Mapping]) -> dict[str, float]:
    """`mixed_r1/<task>/<key>/mean` for score, accuracy, format and error, and `mixed_r1/<task>/count`,
    for every task present in the batch. Rows without a task (another reward manager) are skipped."""
    by_task: dict[str, list[Mapping]] = defaultdict(list)
    for info in reward_extra_infos:
        if info and "task" in info:
            by_task[str(info["task"])].append(info)
    metrics: dict[str, float] = {}
    for task, rows in sorted(by_task.items()):
        metrics[f"{METRIC_PREFIX}/{task}/count"] = float(len(rows))
        for key in AVERAGED_KEYS:
            values = [float(row[key]) for row in rows if key in row]
            if values:
                metrics[f"{METRIC_PREFIX}/{task}/{key}/mean"] = float(np.mean(values))
    return metrics

"""Scores every response with the training reward and aggregates them per task and per data_source."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from tqdm import tqdm

from mixed_r1_verl.rewards import compute_score

from .records import EvalRecord

METRICS = ("accuracy", "format", "score", "error")
ALL = "all"


def score_records(records: Sequence[EvalRecord], responses: Mapping[str, str], **reward_kwargs) -> list[dict]:
    """One row per record: id, data_source, task and ``compute_score``'s score/accuracy/format/error."""
    rows = []
    for record in tqdm(records, desc="score", unit="response"):
        result = compute_score(
            record.data_source, responses[record.id], record.ground_truth, record.extra_info, **reward_kwargs
        )
        rows.append(
            {
                "id": record.id,
                "data_source": record.data_source,
                "task": str(result["task"]),
                **{metric: float(result[metric]) for metric in METRICS},
            }
        )
    return rows


def _aggregate(rows: Sequence[dict]) -> dict:
    count = len(rows)
    stats: dict = {"n": count}
    stats.update({metric: sum(row[metric] for row in rows) / count for metric in ("accuracy", "format", "score")})
    stats["errors"] = sum(row["error"] > 0 for row in rows)
    return stats


def summarize(rows: Sequence[dict]) -> dict:
    """``{"tasks": {task: stats, ..., "all": stats}, "data_sources": {source: {"task": .., **stats}}}``."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    by_source: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
        by_source[row["data_source"]].append(row)
    tasks = {task: _aggregate(by_task[task]) for task in sorted(by_task)}
    if rows:
        tasks[ALL] = _aggregate(rows)
    sources = {
        source: {"task": "/".join(sorted({row["task"] for row in group})), **_aggregate(group)}
        for source, group in sorted(by_source.items())
    }
    return {"tasks": tasks, "data_sources": sources}

"""Scores every response with the training reward and aggregates them per task and per data_source."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from tqdm import tqdm

from mixed_r1_verl.rewards.answer import normalized_answer, top_answer
from mixed_r1_verl.rewards.scoring import scored_verdict, task_correct_threshold
from mixed_r1_verl.rewards.tasks import task_names

from .cache import Completion
from .records import EvalRecord

METRICS = ("accuracy", "correct", "format", "score", "error")
# Averaged per group: `accuracy` the reward's (for grounding the IoU, for open_ended the BMAS), `correct` the
# share of responses whose accuracy reaches their task's correct_threshold (what training logs as rollout_correct).
MEANS = ("accuracy", "correct", "format", "score")
ALL = "all"


def score_records(records: Sequence[EvalRecord], responses: Mapping[str, Completion], **reward_kwargs) -> list[dict]:
    """One row per record: id, data_source, task, ``compute_score``'s score/accuracy/correct/format/error and
    the reason of a reward error (`error_reason`, "" without one), the response's answer (its `pred`) and
    the reference, both normalized, and whether the response was cut off at the token limit (`truncated`:
    None when unknown)."""
    rows = []
    for record in tqdm(records, desc="score", unit="response"):
        response = responses[record.id]
        verdict = scored_verdict(
            record.data_source, response.text, record.ground_truth, record.extra_info, **reward_kwargs
        )
        result = verdict.result()
        rows.append(
            {
                "id": record.id,
                "data_source": record.data_source,
                "task": str(result["task"]),
                **{metric: float(result[metric]) for metric in METRICS},
                "error_reason": verdict.error or "",
                "answer": result["pred"],
                "reference": normalized_answer(str(record.ground_truth)),
                "truncated": response.truncated,
            }
        )
    return rows


def correct_thresholds(rows: Sequence[dict], correct_threshold=None) -> dict[str, float]:
    """The accuracy at which each scored task's responses count as `correct` (`correct_threshold` as the
    rewards take it: a float, or task -> float; else each task's default)."""
    tasks = sorted({row["task"] for row in rows} & set(task_names()))
    return {task: task_correct_threshold(task, correct_threshold) for task in tasks}


def _aggregate(rows: Sequence[dict]) -> dict:
    """n, mean accuracy, correct, format and score, reward errors, and the responses cut off at the token limit:
    `truncated`, `truncated_zero_score` (those of them scoring 0), `truncation_unknown` (a row without it)."""
    count = len(rows)
    stats: dict = {"n": count}
    stats.update({metric: sum(row[metric] for row in rows) / count for metric in MEANS})
    stats["errors"] = sum(row["error"] > 0 for row in rows)
    truncated = [row.get("truncated") for row in rows]
    stats["truncated"] = sum(value is True for value in truncated)
    stats["truncated_zero_score"] = sum(value is True and row["score"] == 0 for value, row in zip(truncated, rows))
    stats["truncation_unknown"] = sum(value is None for value in truncated)
    return stats


def answer_spread(rows: Sequence[dict]) -> dict:
    """How concentrated a group's answers are: `top_answer` and `top_share`, the share of responses
    giving it; `distinct` answers; `reference_top_share`, the same share among the references. A share
    far above the reference's means the model gives one answer whatever the input (collapse onto the
    answer prior)."""
    answer, share = top_answer([row["answer"] for row in rows])
    return {
        "top_answer": answer,
        "top_share": share,
        "distinct": len({row["answer"] for row in rows}),
        "reference_top_share": top_answer([row["reference"] for row in rows])[1],
    }


def summarize(rows: Sequence[dict]) -> dict:
    """``{"tasks": {task: stats, ..., "all": stats}, "data_sources": {source: {"task": .., **stats}},
    "answers": {task: answer_spread}}``."""
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
    answers = {task: answer_spread(by_task[task]) for task in sorted(by_task)}
    return {"tasks": tasks, "data_sources": sources, "answers": answers}

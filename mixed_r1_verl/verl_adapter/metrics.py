"""Per-task training metrics from the reward manager's extra info and the responses' lengths, and the
length clip ratios measured against the limits the rollout applies."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from mixed_r1_verl.rewards import values_differ
from mixed_r1_verl.rewards.answer import top_answer
from mixed_r1_verl.rewards.length import OVERLONG, OVERLONG_REWARD

METRIC_PREFIX = "mixed_r1"
AVERAGED_KEYS = ("score", "accuracy", "correct", "format", "error")
# Averaged too where the reward reports them (the overlong penalty's log).
OPTIONAL_AVERAGED_KEYS = (OVERLONG_REWARD, OVERLONG)


def prompt_uid(key: str) -> str:
    """The prompt (GRPO group) of a TransferQueue trajectory key, `<uid>_<session>_<turn>`."""
    return key.split("_")[0]


def rows_by_task(
    reward_extra_infos: Iterable[Mapping], groups: Iterable | None = None, responses: Iterable | None = None
) -> dict[str, list[tuple]]:
    """The (row, prompt group, response) triples of each task, the group and response None where not
    given. Rows without a task (another reward manager) are left out."""
    infos = list(reward_extra_infos)
    groups = [None] * len(infos) if groups is None else groups
    responses = [None] * len(infos) if responses is None else responses
    by_task: dict[str, list[tuple]] = defaultdict(list)
    for info, group, response in zip(infos, groups, responses, strict=True):
        if info and "task" in info:
            by_task[str(info["task"])].append((info, group, response))
    return dict(by_task)


def response_caps(prompt_lengths: Sequence[int], rollout_config: Mapping) -> list[int]:
    """The most tokens verl's vLLM server lets each response have: `response_length`, less what its prompt
    takes beyond `prompt_length`, and within `max_model_len` where that is set (at least 1)."""
    prompt_limit, response_limit = int(rollout_config["prompt_length"]), int(rollout_config["response_length"])
    max_model_len = rollout_config.get("max_model_len")
    caps = []
    for prompt in prompt_lengths:
        cap = min(response_limit, prompt_limit + response_limit - prompt)
        if max_model_len is not None:
            cap = min(cap, int(max_model_len) - prompt)
        caps.append(max(1, cap))
    return caps


def clip_ratio(lengths: Sequence[int], caps: Sequence[int]) -> float:
    """The share of `lengths` that reached their cap."""
    return float(np.mean([length >= cap for length, cap in zip(lengths, caps, strict=True)]))


def length_clip_ratios(
    prompt_lengths: Sequence[int], response_lengths: Sequence[int], caps: Sequence[int], prompt_limit: int
) -> dict[str, float]:
    """verl's `response_length/clip_ratio`, `response_length_non_aborted/clip_ratio` (responses of one token
    or more) and `prompt_length/clip_ratio`, against the limits the rollout applies. verl 0.9.1's V1
    trainer compares each length with the batch's longest instead, so its ratios are never 0."""
    if not response_lengths:
        return {}
    metrics = {
        "response_length/clip_ratio": clip_ratio(response_lengths, caps),
        "prompt_length/clip_ratio": clip_ratio(prompt_lengths, [prompt_limit] * len(prompt_lengths)),
    }
    answered = [(length, cap) for length, cap in zip(response_lengths, caps, strict=True) if length > 0]
    if answered:
        metrics["response_length_non_aborted/clip_ratio"] = clip_ratio(*zip(*answered))
    return metrics


def groups_with_signal(task_rows: list[tuple]) -> float | None:
    """The share of prompt groups (two rows or more) whose rewards (`score`) differ: GRPO's advantage is
    zero for every response of the others. None when no group has two rows."""
    scores: dict = defaultdict(list)
    for row, group, *_ in task_rows:
        if "score" in row:
            scores[group].append(float(row["score"]))
    judged = [values for values in scores.values() if len(values) > 1]
    return sum(values_differ(values) for values in judged) / len(judged) if judged else None


def per_task_metrics(
    reward_extra_infos: Iterable[Mapping],
    known_tasks: Iterable[str] = (),
    groups: Iterable | None = None,
    responses: Iterable[tuple[int, int]] | None = None,
) -> dict[str, float]:
    """`mixed_r1/<task>/count`, `mixed_r1/<task>/<key>/mean` (score, accuracy, correct, format, error;
    overlong_reward and overlong where reported) and `mixed_r1/<task>/top_answer_share` (the share of the
    task's responses giving its most common answer, `pred`) for every task in the batch; given each row's
    prompt group, also `mixed_r1/<task>/groups_with_signal`; given each row's response length and cap
    (`response_caps`), `mixed_r1/<task>/response_length/{mean,clip_ratio}`. A task of `known_tasks` absent
    from the batch gets count 0 and nothing else (a mean of nothing is undefined), so its count curve stays
    continuous."""
    by_task = rows_by_task(reward_extra_infos, groups, responses)
    metrics: dict[str, float] = {}
    for task in sorted(set(known_tasks) | set(by_task)):
        task_rows = by_task.get(task, [])
        rows = [row for row, *_ in task_rows]
        metrics[f"{METRIC_PREFIX}/{task}/count"] = float(len(rows))
        for key in (*AVERAGED_KEYS, *OPTIONAL_AVERAGED_KEYS):
            values = [float(row[key]) for row in rows if key in row]
            if values:
                metrics[f"{METRIC_PREFIX}/{task}/{key}/mean"] = float(np.mean(values))
        answers = [str(row["pred"]) for row in rows if "pred" in row]
        if answers:
            metrics[f"{METRIC_PREFIX}/{task}/top_answer_share"] = top_answer(answers)[1]
        if groups is not None and (share := groups_with_signal(task_rows)) is not None:
            metrics[f"{METRIC_PREFIX}/{task}/groups_with_signal"] = share
        lengths_and_caps = [response for *_, response in task_rows if response is not None]
        if lengths_and_caps:
            lengths, caps = zip(*lengths_and_caps)
            metrics[f"{METRIC_PREFIX}/{task}/response_length/mean"] = float(np.mean(lengths))
            metrics[f"{METRIC_PREFIX}/{task}/response_length/clip_ratio"] = clip_ratio(lengths, caps)
    return metrics


class PerTaskMetricsLog:
    """Per-task metrics step after step; every task seen earlier in the run is logged (count 0 when absent)."""

    def __init__(self):
        self.known_tasks: set[str] = set()

    def step(
        self, reward_extra_infos: Iterable[Mapping], groups: Iterable | None = None, responses: Iterable | None = None
    ) -> dict[str, float]:
        infos = list(reward_extra_infos)
        self.known_tasks.update(rows_by_task(infos))
        return per_task_metrics(infos, self.known_tasks, groups, responses)

"""Per-task online filtering (DAPO-style dynamic sampling) as a verl V1 replay buffer.

GRPO's advantage of a group whose rewards are all equal is zero, so such a group costs a training
step's compute and teaches nothing. This sampler drops those groups, refills the batch with fresh
prompts within a per-step budget, and reports per task how many groups were kept and dropped, and
the mean of its metric over every group it judged (the policy's rollouts, not only the trained ones).

Enable it through verl's own extension point (``conf/filtering/on.yaml`` does this)::

    trainer.v1.sampler.custom_sampler.path=pkg://mixed_r1_verl.verl_adapter.dynamic_sampling
    trainer.v1.sampler.custom_sampler.name=PerTaskDynamicSampler

Options live under ``trainer.v1.sampler.sampler_kwargs`` (see :class:`FilteringSettings`).
The returned metrics travel the same path as verl's own sampler metrics (second value of
``sample``), so they are logged every step as ``filtering/<task>/kept``, ``filtering/<task>/dropped``...
A task none of whose groups varied for several steps in a row is named in a warning
(``filtering/<task>/steps_without_signal`` counts those steps).
"""

import logging
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.utils.skip import SkipManager

from mixed_r1_verl.rewards import values_differ
from mixed_r1_verl.verl_adapter.metrics import prompt_uid

logger = logging.getLogger(__name__)

METRIC_PREFIX = "filtering"
TASK_KEY = "task"
# The reward_extra_info field that says whether a response is right (1) or wrong (0).
CORRECT_KEY = "correct"
ALL_CORRECT, ALL_WRONG = "all_correct", "all_wrong"
# These trainers call sampling methods that only verl's async buffer has.
ASYNC_TRAINER_MODES = frozenset({"colocate_async", "separate_async"})
PARAMETER_SYNC_STEP_SETTING = "trainer.v1.sync.parameter_sync_step"
SETTINGS_PATH = "trainer.v1.sampler.sampler_kwargs"
# Steps in a row in which a task's every judged group has equal rewards before the sampler says so.
NO_SIGNAL_WARNING_STEPS = 3


def parameter_sync_step_error(parameter_sync_step) -> str | None:
    """Why the sampler cannot run with verl's sync `parameter_sync_step` sub-steps; None when it can.

    verl submits a step's whole batch once and then samples it in `parameter_sync_step` parts, sleeping
    the rollout replicas in between. This sampler completes its batch from everything that finished and
    clears the rest, so a second part would find its prompts gone and refill on sleeping replicas.
    """
    if parameter_sync_step in (None, 1):
        return None
    return (
        f"filtering=on (PerTaskDynamicSampler) samples each step's batch at once and cannot run with "
        f"{PARAMETER_SYNC_STEP_SETTING}={parameter_sync_step}; use {PARAMETER_SYNC_STEP_SETTING}=1 with filtering"
    )


@dataclass(frozen=True)
class FilteringSettings:
    """Options read from ``trainer.v1.sampler.sampler_kwargs``.

    metric: ``reward_extra_info`` field whose equality across a group marks it uninformative;
        ``correct`` (default) judges correctness only, ``score`` also counts format differences and
        continuous IoU/BMAS differences as signal.
    max_refill_rounds: extra prompts a step may generate, in units of the step's batch size;
        0 disables refilling (dropped groups are then replaced by nothing but the top-up below).
    max_inflight_batches: cap on prompts pending or running at once, in units of the batch size.
    poll_interval_s: seconds between looks at the rollout state.

    When the budget is spent before the batch is full, the batch is completed with zero-variance
    groups (they contribute no policy gradient under GRPO) so the step still runs at full size.
    """

    metric: str = "correct"
    max_refill_rounds: int = 3
    max_inflight_batches: int = 1
    poll_interval_s: float = 1.0

    @classmethod
    def from_kwargs(cls, sampler_kwargs: Mapping | None) -> "FilteringSettings":
        given = dict(sampler_kwargs or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"{SETTINGS_PATH}: unknown option(s) {unknown}; known: {sorted(known)}")
        settings = cls(**given)
        if not isinstance(settings.metric, str) or not settings.metric:
            raise ValueError(f"{SETTINGS_PATH}.metric must name a reward_extra_info field, got {settings.metric!r}")
        if not is_whole_number(settings.max_refill_rounds) or settings.max_refill_rounds < 0:
            raise ValueError(
                f"{SETTINGS_PATH}.max_refill_rounds must be an integer >= 0, got {settings.max_refill_rounds!r}"
            )
        if not is_whole_number(settings.max_inflight_batches) or settings.max_inflight_batches < 1:
            raise ValueError(
                f"{SETTINGS_PATH}.max_inflight_batches must be an integer >= 1, got {settings.max_inflight_batches!r}"
            )
        if not is_positive_finite(settings.poll_interval_s):
            raise ValueError(
                f"{SETTINGS_PATH}.poll_interval_s must be a finite number of seconds > 0, "
                f"got {settings.poll_interval_s!r}"
            )
        return settings


def is_whole_number(value) -> bool:
    # YAML's true/false are Python bools, which are ints.
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive_finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class GroupVerdict:
    task: str
    informative: bool
    # The filtering metric of each of the group's responses.
    metric_values: tuple[float, ...]
    # ALL_CORRECT / ALL_WRONG when every response reports `correct` 1 / 0; None otherwise.
    outcome: str | None = None


def group_outcome(reward_infos: list[Mapping]) -> str | None:
    """ALL_CORRECT or ALL_WRONG when every response of a group is right or every one is wrong, else None."""
    corrects = [float(info[CORRECT_KEY]) for info in reward_infos if CORRECT_KEY in info]
    if len(corrects) < len(reward_infos):
        return None
    return {frozenset({1.0}): ALL_CORRECT, frozenset({0.0}): ALL_WRONG}.get(frozenset(corrects))


def judge_group(uid: str, reward_infos: list[Mapping], metric: str) -> GroupVerdict:
    """Classify one finished prompt group from its trajectories' ``reward_extra_info``.

    A single-trajectory group cannot be judged and is kept, as in verl's own filter.
    """
    if not reward_infos:
        raise RuntimeError(f"group {uid}: finished but has no trajectories to judge")
    for position, info in enumerate(reward_infos):
        missing = [key for key in (metric, TASK_KEY) if key not in info]
        if missing:
            raise RuntimeError(
                f"group {uid}, trajectory {position}: reward_extra_info lacks {missing} "
                f"(has {sorted(info)}); use the mixed_r1 reward manager or set sampler_kwargs.metric"
            )
    tasks = {str(info[TASK_KEY]) for info in reward_infos}
    if len(tasks) != 1:
        raise RuntimeError(f"group {uid}: trajectories disagree on the task: {sorted(tasks)}")
    values = tuple(float(info[metric]) for info in reward_infos)
    informative = len(values) < 2 or values_differ(values)
    return GroupVerdict(tasks.pop(), informative, values, group_outcome(reward_infos))


def refill_count(needed: int, inflight: int, kept: int, judged: int) -> int:
    """Prompts to dispatch so that, at the keep rate seen so far, in-flight groups cover ``needed``.

    The rate (kept + 1) / (judged + 1) starts at 1, so nothing is dispatched before a drop is seen.
    """
    if needed <= 0:
        return 0
    keep_rate = (kept + 1) / (judged + 1)
    deficit = needed - inflight * keep_rate
    return max(0, math.ceil(deficit / keep_rate - 1e-9))


def filtering_metrics(
    kept: Iterable[GroupVerdict],
    dropped: Iterable[GroupVerdict],
    judged: Iterable[GroupVerdict],
    known_tasks: Iterable[str],
    metric: str,
    **step_counts: int,
) -> dict[str, int | float]:
    """Per-task and overall counts, and per task the mean of ``metric`` over the responses of every
    ``judged`` group; tasks in ``known_tasks`` without groups this step read 0 (and have no mean)."""
    kept, dropped = list(kept), list(dropped)
    kept_by_task = Counter(verdict.task for verdict in kept)
    no_signal_by_task = Counter(verdict.task for verdict in kept if not verdict.informative)
    dropped_by_task = Counter(verdict.task for verdict in dropped)
    dropped_by_outcome = Counter((verdict.task, verdict.outcome) for verdict in dropped)
    values_by_task: dict[str, list[float]] = {}
    for verdict in judged:
        values_by_task.setdefault(verdict.task, []).extend(verdict.metric_values)
    metrics: dict[str, int | float] = {}
    for task in sorted(set(known_tasks) | set(kept_by_task) | set(dropped_by_task) | set(values_by_task)):
        metrics[f"{METRIC_PREFIX}/{task}/kept"] = kept_by_task[task]
        metrics[f"{METRIC_PREFIX}/{task}/dropped"] = dropped_by_task[task]
        metrics[f"{METRIC_PREFIX}/{task}/dropped_{ALL_CORRECT}"] = dropped_by_outcome[task, ALL_CORRECT]
        metrics[f"{METRIC_PREFIX}/{task}/dropped_{ALL_WRONG}"] = dropped_by_outcome[task, ALL_WRONG]
        metrics[f"{METRIC_PREFIX}/{task}/no_signal_kept"] = no_signal_by_task[task]
        if values_by_task.get(task):
            metrics[f"{METRIC_PREFIX}/{task}/rollout_{metric}/mean"] = statistics.fmean(values_by_task[task])
    metrics[f"{METRIC_PREFIX}/kept"] = len(kept)
    metrics[f"{METRIC_PREFIX}/dropped"] = len(dropped)
    metrics.update({f"{METRIC_PREFIX}/{name}": value for name, value in step_counts.items()})
    return metrics


class NoSignalStreaks:
    """Per task, the steps in a row in which every judged group of the task had equal rewards, so GRPO
    learned nothing from it; a step without a group of the task leaves its count as it was."""

    def __init__(self, metric: str, warn_after: int = NO_SIGNAL_WARNING_STEPS):
        self.metric = metric
        self.warn_after = warn_after
        self.steps: Counter[str] = Counter()

    def step(self, judged: Iterable[GroupVerdict]) -> list[str]:
        """Counts one step's judged groups; returns a warning for each task whose count reaches `warn_after`."""
        by_task: dict[str, list[GroupVerdict]] = {}
        for verdict in judged:
            by_task.setdefault(verdict.task, []).append(verdict)
        warnings = []
        for task, verdicts in sorted(by_task.items()):
            if any(verdict.informative for verdict in verdicts):
                self.steps[task] = 0
                continue
            self.steps[task] += 1
            if self.steps[task] == self.warn_after:
                outcomes = Counter(verdict.outcome for verdict in verdicts)
                warnings.append(
                    f"filtering: no {task} group has varied in {self.metric!r} for {self.warn_after} steps in a "
                    f"row, so GRPO learns nothing from {task} (groups judged in the last step: {len(verdicts)}, "
                    f"{outcomes[ALL_CORRECT]} all right, {outcomes[ALL_WRONG]} all wrong). All right: the prompts are "
                    f"too easy for the policy (the data engine's difficulty stage keeps a pass-rate band); all "
                    f"wrong: check the task's ground truths and answer format"
                )
        return warnings


class PerTaskDynamicSampler(ReplayBuffer):
    """verl sync ``ReplayBuffer`` that filters zero-variance groups and logs per-task counts.

    Built by ``PPOTrainer._build_replay_buffer`` with the custom-sampler constructor contract.
    The validation partition is sampled unfiltered, exactly as verl does.
    """

    def __init__(
        self,
        trainer_mode: str,
        trainer_config,
        max_off_policy_threshold: int | None,
        max_off_policy_strategy: str,
        sampler_kwargs,
        refill_fn=None,
    ):
        if trainer_mode in ASYNC_TRAINER_MODES:
            raise ValueError(
                f"PerTaskDynamicSampler implements synchronous (on-policy) sampling; trainer mode "
                f"{trainer_mode!r} needs verl's async buffer (use algorithm.filter_groups there)"
            )
        if refill_fn is None:
            raise ValueError("PerTaskDynamicSampler needs refill_fn to replace dropped groups")
        sync_step_error = parameter_sync_step_error((trainer_config or {}).get("parameter_sync_step"))
        if sync_step_error:
            raise ValueError(sync_step_error)
        self.settings = FilteringSettings.from_kwargs(sampler_kwargs)
        super().__init__(
            trainer_mode=trainer_mode,
            trainer_config=trainer_config,
            max_off_policy_threshold=max_off_policy_threshold,
            max_off_policy_strategy=max_off_policy_strategy,
            sampler_kwargs=sampler_kwargs,
            poll_interval=self.settings.poll_interval_s,
            refill_fn=refill_fn,
        )
        self._verdicts: dict[str, GroupVerdict] = {}
        self._arrival: dict[str, int] = {}
        self._known_tasks: set[str] = set()
        self._no_signal = NoSignalStreaks(self.settings.metric)

    @SkipManager.annotate_tq(role="rollout_tq", phase="sample")
    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[KVBatchMeta, dict]:
        if partition_id == "val":
            # The parent's undecorated body: this method's decorator already handles rollout skipping.
            return ReplayBuffer.sample.__wrapped__(self, global_steps, partition_id, batch_size)
        return self._sample_filtered(partition_id, batch_size)

    def _sample_filtered(self, partition_id: str, batch_size: int) -> tuple[KVBatchMeta, dict]:
        budget = self.settings.max_refill_rounds * batch_size
        max_inflight = self.settings.max_inflight_batches * batch_size
        refilled = 0
        last_debug_time = 0.0
        while True:
            self._sync_metadata_from_transfer_queue()
            self._note_arrivals(partition_id)
            self._judge_new_groups(partition_id)
            finished = self.finished_keys[partition_id]
            informative = {uid for uid in finished if self._verdicts[uid].informative}
            sampleable = informative | self.failure_keys[partition_id]
            inflight = len(self.pending_keys[partition_id]) + len(self.running_keys[partition_id])
            needed = batch_size - len(sampleable)

            dispatch = min(
                refill_count(needed, inflight, kept=len(informative), judged=len(finished)),
                budget - refilled,
                max(0, max_inflight - inflight),
            )
            if dispatch > 0:
                self.refill_fn(dispatch)
                refilled += dispatch
                continue
            # Sync training is on-policy and keeps nothing between steps, so in-flight groups finish first.
            if inflight == 0 and (needed <= 0 or refilled >= budget):
                break
            last_debug_time = self._wait_for_next_poll(partition_id, last_debug_time)

        return self._select_and_report(partition_id, batch_size, informative, refilled)

    def _note_arrivals(self, partition_id: str) -> None:
        """Each prompt's place in the order verl registered them (the data loader's)."""
        for uid in self.prompt_global_steps[partition_id]:
            if uid not in self._arrival:
                self._arrival[uid] = len(self._arrival)

    def _oldest_first(self, partition_id: str, uids: set[str], count: int) -> list[str]:
        """Groups of the step's own batch before refills, so the dataloader's task mix is kept."""
        global_steps = self.prompt_global_steps[partition_id]
        return sorted(uids, key=lambda uid: (global_steps.get(uid, 0), self._arrival.get(uid, 0), uid))[:count]

    def _judge_new_groups(self, partition_id: str) -> None:
        new_uids = self.finished_keys[partition_id] - self._verdicts.keys()
        if not new_uids:
            return
        trajectory_keys = [key for key in self.partitions[partition_id] if prompt_uid(key) in new_uids]
        infos_by_uid: dict[str, list[Mapping]] = {uid: [] for uid in new_uids}
        if trajectory_keys:
            data = tq.kv_batch_get(keys=trajectory_keys, partition_id=partition_id, select_fields=["extra_fields"])
            for key, extra_fields in zip(trajectory_keys, data["extra_fields"], strict=True):
                extra_fields = getattr(extra_fields, "data", extra_fields)
                infos_by_uid[prompt_uid(key)].append(extra_fields.get("reward_extra_info", {}))
        for uid, infos in infos_by_uid.items():
            self._verdicts[uid] = judge_group(uid, infos, self.settings.metric)

    def _select_and_report(
        self, partition_id: str, batch_size: int, informative: set[str], refilled: int
    ) -> tuple[KVBatchMeta, dict]:
        """The batch: kept groups, then failed groups (passed through as verl does; some or all of their
        trajectories are missing), then zero-variance ones, each oldest first."""
        partition_snapshot = dict(self.partitions[partition_id])
        chosen = self._oldest_first(partition_id, informative, batch_size)
        chosen += self._oldest_first(partition_id, self.failure_keys[partition_id], batch_size - len(chosen))
        zero_variance = self.finished_keys[partition_id] - informative
        top_up = self._oldest_first(partition_id, zero_variance, batch_size - len(chosen))
        chosen = chosen + top_up
        chosen_set = set(chosen)
        if not any(prompt_uid(key) in chosen_set for key in partition_snapshot):
            raise RuntimeError("Filtered sampling selected only groups without trajectories (all rollouts failed)")

        discarded = (self.finished_keys[partition_id] | self.failure_keys[partition_id]) - chosen_set
        kept_verdicts = [self._verdicts[uid] for uid in chosen if uid in self._verdicts]
        dropped_verdicts = [self._verdicts[uid] for uid in zero_variance - chosen_set]
        self._known_tasks.update(verdict.task for verdict in self._verdicts.values())
        metrics = filtering_metrics(
            kept_verdicts,
            dropped_verdicts,
            self._verdicts.values(),
            self._known_tasks,
            self.settings.metric,
            failed_kept=len(chosen_set & self.failure_keys[partition_id]),
            discarded_surplus=len(discarded - zero_variance),
            refilled_prompts=refilled,
            refill_rounds=refilled / batch_size,
            topped_up=len(top_up),
        )
        for warning in self._no_signal.step(self._verdicts.values()):
            logger.warning(warning)
        metrics.update(
            {f"{METRIC_PREFIX}/{task}/steps_without_signal": self._no_signal.steps[task] for task in self._known_tasks}
        )
        self._clear_groups(partition_id, discarded)
        self._verdicts.clear()
        self._arrival.clear()
        return self._materialize_batch(partition_id, chosen, partition_snapshot), metrics

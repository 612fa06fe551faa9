"""Per-task online filtering and per-task step metrics on a real TransferQueue (local Ray), with
verl's replay-buffer machinery."""

import atexit
import functools
import itertools
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import ray
import torch
import transfer_queue as tq
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.trainer.ppo.v1.utils import MetricsAggregator
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl
from mixed_r1_verl.rewards import compute_score
from mixed_r1_verl.verl_adapter import dynamic_sampling
from mixed_r1_verl.verl_adapter.dynamic_sampling import (
    ALL_CORRECT,
    ALL_WRONG,
    NO_SIGNAL_WARNING_STEPS,
    FilteringSettings,
    GroupVerdict,
    NoSignalStreaks,
    PerTaskDynamicSampler,
    judge_group,
    refill_count,
)
from mixed_r1_verl.verl_adapter.metrics import PerTaskMetricsLog
from mixed_r1_verl.verl_adapter.trainer import MixedR1SyncTrainer, batch_trajectories

REPO_ROOT = Path(__file__).resolve().parents[1]
GROUP_SIZE = 4


# Each task's prompt and a right / wrong answer to it; groups are scored by the real reward library.
PROMPTS = {
    "chart": ("chartqa", "42", {}),
    "matching": ("mmbench", "B", {"options": ["cat", "dog"]}),
    "grounding": ("refcoco", "[0, 0, 40, 40]", {"box_frame": "abs", "frame_size": [64, 64]}),
    "open_ended": ("coco_caption", "A man rides a red bicycle.", {}),
}
FAILED = None
WRONG_ANSWER = {"chart": "7", "matching": "A", "grounding": "[50, 50, 60, 60]", "open_ended": "Two dogs sleep."}


@functools.lru_cache(maxsize=1)
def embedding_model_dir():
    directory = tempfile.mkdtemp(prefix="bmas-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return str(build_tiny_qwen25vl(directory))


def scored_group(task, answers):
    data_source, ground_truth, extra_info = PROMPTS[task]
    return [
        compute_score(
            data_source,
            f"<think>Looking.</think><answer>{answer}</answer>",
            ground_truth,
            {"task": task, **extra_info},
            embedding_model=embedding_model_dir(),
        )
        for answer in answers
    ]


def informative(task):
    right, wrong = PROMPTS[task][1], WRONG_ANSWER[task]
    return scored_group(task, [right, wrong, right, wrong])


def zero_variance(task, solved=False):
    return scored_group(task, [PROMPTS[task][1] if solved else WRONG_ANSWER[task]] * GROUP_SIZE)


@pytest.fixture(scope="module")
def transfer_queue():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield
    tq.close()
    ray.shutdown()


class ScriptedRollout:
    """Rollout side of the trainer: registers prompts in TransferQueue and writes their finished groups.

    ``groups`` are the reward_extra_info lists the successive prompts will produce (FAILED: a prompt whose
    sessions all failed, as verl's agent loop marks it); ``delay_s`` keeps a submitted group running for
    that long before it finishes, as a generation would.
    """

    _uids = itertools.count()

    def __init__(self, groups, delay_s=0.0, partition="train"):
        self.groups = list(groups)
        self.partition = partition
        self.delay_s = delay_s
        self.submitted = 0
        self.uid_task = {}

    def submit(self, num_prompts):
        if num_prompts > len(self.groups):
            raise AssertionError(f"sampler asked for {num_prompts} prompts, script has {len(self.groups)} left")
        for _ in range(num_prompts):
            uid = f"p{next(self._uids)}"
            infos = self.groups.pop(0)
            self.uid_task[uid] = FAILED if infos is FAILED else infos[0]["task"]
            tag = {"is_prompt": True, "status": "running", "global_steps": 1}
            tq.kv_put(key=uid, partition_id=self.partition, tag=tag)
            if self.delay_s:
                threading.Timer(self.delay_s, self._finish, args=(uid, infos)).start()
            else:
                self._finish(uid, infos)
        self.submitted += num_prompts
        return num_prompts

    def _finish(self, uid, infos):
        if infos is FAILED:
            tq.kv_put(key=uid, partition_id=self.partition, tag={"status": "failure"})
            return
        trajectories = [
            {
                "prompts": torch.tensor([1, 2, 3]),
                "responses": torch.tensor([7, session]),
                "extra_fields": {"reward_extra_info": info},
            }
            for session, info in enumerate(infos)
        ]
        tq.kv_batch_put(
            keys=[f"{uid}_{session}_0" for session in range(len(infos))],
            partition_id=self.partition,
            fields=list_of_dict_to_tensordict(trajectories),
            tags=[{"status": "success", "global_steps": 1}] * len(infos),
        )
        tq.kv_put(key=uid, partition_id=self.partition, tag={"status": "finished"})


def make_sampler(rollout, **options):
    sampler_kwargs = {"poll_interval_s": 0.01, **options}
    return PerTaskDynamicSampler(
        trainer_mode="sync",
        trainer_config={},
        max_off_policy_threshold=None,
        max_off_policy_strategy="drop",
        sampler_kwargs=sampler_kwargs,
        refill_fn=rollout.submit,
    )


def run_step(sampler, rollout, batch_size):
    rollout.submit(batch_size)
    batch, metrics = sampler.sample(global_steps=1, partition_id="train", batch_size=batch_size)
    chosen_uids = {key.split("_")[0] for key in batch.keys}
    left_in_queue = tq.kv_list("train").get("train", {})
    tq.kv_clear(keys=batch.keys, partition_id="train")
    return batch, metrics, chosen_uids, left_in_queue


def test_drops_zero_variance_groups_refills_and_counts_per_task(transfer_queue):
    first_batch = [
        informative("chart"),
        zero_variance("grounding"),
        informative("matching"),
        zero_variance("open_ended", solved=True),
    ]
    refills = [
        zero_variance("chart", solved=True),
        informative("grounding"),
        informative("open_ended"),
        zero_variance("chart"),
    ]
    rollout = ScriptedRollout(first_batch + refills)
    sampler = make_sampler(rollout, max_refill_rounds=2)

    batch, metrics, chosen, left = run_step(sampler, rollout, batch_size=4)

    # 2 of 4 groups kept, keep rate (2+1)/(4+1): 4 refill prompts are dispatched for the 2 missing groups.
    assert rollout.submitted == 8 and metrics["filtering/refilled_prompts"] == 4
    assert len(chosen) == 4 and len(batch.keys) == 4 * GROUP_SIZE
    assert sorted(rollout.uid_task[uid] for uid in chosen) == ["chart", "grounding", "matching", "open_ended"]
    assert metrics["filtering/chart/kept"] == 1 and metrics["filtering/chart/dropped"] == 2
    assert metrics["filtering/grounding/kept"] == 1 and metrics["filtering/grounding/dropped"] == 1
    assert metrics["filtering/open_ended/kept"] == 1 and metrics["filtering/open_ended/dropped"] == 1
    assert metrics["filtering/matching/kept"] == 1 and metrics["filtering/matching/dropped"] == 0
    assert metrics["filtering/kept"] == 4 and metrics["filtering/dropped"] == 4
    assert metrics["filtering/topped_up"] == 0 and metrics["filtering/discarded_surplus"] == 0
    # Only the chosen groups' trajectories stay in the queue: dropped groups are cleared.
    assert set(left) == set(batch.keys)


def test_a_surplus_keeps_the_first_groups_the_data_loader_gave(transfer_queue):
    rollout = ScriptedRollout([informative("chart") for _ in range(12)])
    sampler = make_sampler(rollout)
    rollout.submit(8)  # more prompts of the step than the batch takes, as over-provisioned refills leave

    batch, metrics, chosen, _ = run_step(sampler, rollout, batch_size=4)

    assert metrics["filtering/discarded_surplus"] == 8
    assert chosen == set(list(rollout.uid_task)[:4])  # uid_task holds the prompts in the order submitted


def test_a_task_without_signal_step_after_step_is_counted_and_named_once(transfer_queue, caplog):
    steps = [[informative("chart"), zero_variance("matching", solved=True)]] * NO_SIGNAL_WARNING_STEPS
    steps += [[informative("chart"), zero_variance("matching", solved=True)], [informative("matching")] * 2]
    rollout = ScriptedRollout([group for step in steps for group in step])
    sampler = make_sampler(rollout, max_refill_rounds=0)

    counts, warnings = [], []
    for _ in steps:
        caplog.clear()
        _, metrics, _, _ = run_step(sampler, rollout, batch_size=2)
        counts.append(tuple(metrics[f"filtering/{task}/steps_without_signal"] for task in ("matching", "chart")))
        warnings.append([record.getMessage() for record in caplog.records if record.name == dynamic_sampling.__name__])

    assert counts == [(1, 0), (2, 0), (3, 0), (4, 0), (0, 0)]
    assert warnings[:2] == [[], []] and warnings[3:] == [[], []], "named once, when the count reaches 3"
    assert warnings[2] == [
        "filtering: no matching group has varied in 'correct' for 3 steps in a row, so GRPO learns nothing from "
        "matching (groups judged in the last step: 1, 1 all right, 0 all wrong). All right: the prompts are too "
        "easy for the policy (the data engine's difficulty stage keeps a pass-rate band); all wrong: check the "
        "task's ground truths and answer format"
    ]


def test_no_signal_streaks_count_steps_that_judged_the_task_only():
    streaks = NoSignalStreaks("correct", warn_after=2)
    wrong = judge_group("a", zero_variance("chart"), "correct")
    mixed = judge_group("b", informative("chart"), "correct")
    other = judge_group("c", informative("grounding"), "correct")
    assert streaks.step([wrong, wrong]) == [] and streaks.steps["chart"] == 1
    assert streaks.step([other]) == [] and streaks.steps["chart"] == 1, "a step without chart groups leaves it"
    (warning,) = streaks.step([wrong])
    assert "no chart group has varied in 'correct' for 2 steps" in warning and "0 all right, 1 all wrong" in warning
    assert streaks.step([wrong, mixed]) == [] and streaks.steps["chart"] == 0, "one group with signal ends it"


def test_rollout_metric_and_dropped_outcomes_cover_every_judged_group_per_task(transfer_queue):
    # A policy that solves most chart prompts: the trained groups are the mixed ones only.
    first_batch = [informative("chart"), zero_variance("chart", solved=True)]
    refills = [zero_variance("chart", solved=True), informative("chart"), zero_variance("grounding")]
    rollout = ScriptedRollout(first_batch + refills)
    sampler = make_sampler(rollout, max_refill_rounds=2)

    rollout.submit(2)
    batch, metrics = sampler.sample(global_steps=1, partition_id="train", batch_size=2)
    infos, groups, *lengths = batch_trajectories(batch)
    trained = PerTaskMetricsLog().step(infos, groups)
    tq.kv_clear(keys=batch.keys, partition_id="train")

    trajectories = int(trained["mixed_r1/chart/count"])
    assert lengths == [[3] * trajectories, [2] * trajectories], "rows of one length, as TransferQueue gives them"

    assert rollout.submitted == 4, "keep rate (1+1)/(2+1): 2 refills for the missing group"
    assert trained["mixed_r1/chart/correct/mean"] == 0.5, "the kept groups are half right by construction"
    assert trained["mixed_r1/chart/groups_with_signal"] == 1.0, "only groups with signal are trained"
    assert metrics["filtering/chart/rollout_correct/mean"] == (0.5 + 1 + 1 + 0.5) / 4
    assert metrics["filtering/chart/dropped_all_correct"] == 2 and metrics["filtering/chart/dropped_all_wrong"] == 0
    assert metrics["filtering/chart/dropped"] == 2
    assert "filtering/grounding/rollout_correct/mean" not in metrics, "a group never generated is not judged"


def test_exhausted_budget_tops_up_with_zero_variance_groups(transfer_queue):
    first_batch = [informative("chart"), zero_variance("grounding"), zero_variance("grounding"), informative("chart")]
    refills = [zero_variance("matching")] * 4
    rollout = ScriptedRollout(first_batch + refills)
    sampler = make_sampler(rollout, max_refill_rounds=1)

    batch, metrics, chosen, left = run_step(sampler, rollout, batch_size=4)

    assert rollout.submitted == 8, "the whole budget (1 round = 4 prompts) is spent before topping up"
    assert len(chosen) == 4 and set(left) == set(batch.keys)
    assert metrics["filtering/refilled_prompts"] == 4 and metrics["filtering/refill_rounds"] == 1.0
    assert metrics["filtering/topped_up"] == 2
    assert metrics["filtering/chart/kept"] == 2 and metrics["filtering/chart/no_signal_kept"] == 0
    topped_up_tasks = [rollout.uid_task[uid] for uid in chosen if rollout.uid_task[uid] != "chart"]
    assert len(topped_up_tasks) == 2
    dropped = metrics["filtering/grounding/dropped"] + metrics["filtering/matching/dropped"]
    no_signal_kept = metrics["filtering/grounding/no_signal_kept"] + metrics["filtering/matching/no_signal_kept"]
    assert dropped == 4 and no_signal_kept == 2
    assert metrics["filtering/kept"] == 4 and metrics["filtering/dropped"] == 4


def test_zero_refill_rounds_never_generates_more(transfer_queue):
    rollout = ScriptedRollout([zero_variance("chart"), informative("grounding"), informative("chart")])
    sampler = make_sampler(rollout, max_refill_rounds=0)

    _, metrics, chosen, _ = run_step(sampler, rollout, batch_size=3)

    assert rollout.submitted == 3 and len(chosen) == 3
    assert metrics["filtering/topped_up"] == 1 and metrics["filtering/chart/no_signal_kept"] == 1
    assert metrics["filtering/dropped"] == 0


def test_a_failed_group_fills_the_batch_only_behind_kept_groups(transfer_queue):
    # The zero-variance chart group makes the sampler refill; both refills keep, one more than the batch needs.
    rollout = ScriptedRollout([FAILED, zero_variance("chart"), informative("grounding"), informative("matching")])
    sampler = make_sampler(rollout, max_refill_rounds=1)

    batch, metrics, chosen, left = run_step(sampler, rollout, batch_size=2)

    assert rollout.submitted == 4
    assert sorted(rollout.uid_task[uid] for uid in chosen) == ["grounding", "matching"]
    assert len(batch.keys) == 2 * GROUP_SIZE, "no kept group is discarded for a group without trajectories"
    assert metrics["filtering/failed_kept"] == 0 and metrics["filtering/discarded_surplus"] == 1
    assert metrics["filtering/kept"] == 2 and metrics["filtering/dropped"] == 1
    assert set(left) == set(batch.keys), "the failed group is cleared with the other discarded ones"


def test_a_failed_group_is_passed_through_when_too_few_groups_are_kept(transfer_queue):
    rollout = ScriptedRollout([FAILED, informative("chart")])
    sampler = make_sampler(rollout, max_refill_rounds=0)

    batch, metrics, chosen, left = run_step(sampler, rollout, batch_size=2)

    assert [rollout.uid_task[uid] for uid in chosen] == ["chart"] and len(batch.keys) == GROUP_SIZE
    assert metrics["filtering/failed_kept"] == 1 and metrics["filtering/kept"] == 1
    assert set(left) == set(batch.keys)


def test_waits_for_running_groups_and_logs_known_tasks_every_step(transfer_queue):
    rollout = ScriptedRollout(
        [informative("chart"), zero_variance("grounding"), informative("grounding")] + [informative("chart")] * 6,
        delay_s=0.2,
    )
    sampler = make_sampler(rollout, max_refill_rounds=1)

    _, first, first_chosen, left = run_step(sampler, rollout, batch_size=2)
    assert len(first_chosen) == 2 and first["filtering/grounding/dropped"] == 1
    # Every submitted group finished and was either chosen or cleared before the batch was returned.
    accounted = first["filtering/kept"] + first["filtering/dropped"] + first["filtering/discarded_surplus"]
    assert accounted == rollout.submitted
    assert {key.split("_")[0] for key in left} == first_chosen

    _, second, _, _ = run_step(sampler, rollout, batch_size=2)
    assert second["filtering/chart/kept"] == 2
    assert second["filtering/grounding/kept"] == 0 and second["filtering/grounding/dropped"] == 0


def test_metrics_reach_the_step_metrics_through_verls_aggregator(transfer_queue):
    rollout = ScriptedRollout([informative("chart"), zero_variance("matching")] + [informative("matching")] * 2)
    sampler = make_sampler(rollout, max_refill_rounds=1)
    _, metrics, _, _ = run_step(sampler, rollout, batch_size=2)
    assert metrics["filtering/discarded_surplus"] == 1

    aggregator = MetricsAggregator()
    aggregator.add_step_metrics(metrics, sample_count=2 * GROUP_SIZE)
    logged = aggregator.get_aggregated_metrics()

    assert logged["filtering/matching/dropped"] == 1
    assert logged["filtering/matching/kept"] == 1 and logged["filtering/chart/kept"] == 1


def test_validation_partition_is_sampled_unfiltered(transfer_queue):
    rollout = ScriptedRollout([zero_variance("chart"), informative("matching")], partition="val")
    sampler = make_sampler(rollout, max_refill_rounds=2)
    rollout.submit(2)

    batch, metrics = sampler.sample(global_steps=1, partition_id="val", batch_size=2)

    assert {key.split("_")[0] for key in batch.keys} == set(rollout.uid_task)
    assert rollout.submitted == 2 and not any(key.startswith("filtering/") for key in metrics)
    tq.kv_clear(keys=batch.keys, partition_id="val")


def test_missing_task_names_the_group(transfer_queue):
    infos = [{"score": 1.0}, {"score": 0.0}]
    with pytest.raises(RuntimeError, match=r"group u9, trajectory 0: reward_extra_info lacks \['task'\]"):
        judge_group("u9", infos, "score")


def test_step_metrics_read_every_real_trajectory_of_the_batch(transfer_queue):
    # Trajectories as verl's TransferQueue agent loop writes them; the last one is a padding row.
    infos = [informative("chart")[0], zero_variance("grounding")[0], informative("chart")[1], informative("matching")[0]]
    # Both chart trajectories are sessions of one prompt (one group), as verl keys them: <uid>_<session>_<turn>.
    keys = ["metricsA_0_0", "metricsB_0_0", "metricsA_1_0", "metricsC_0_0"]
    tq.kv_batch_put(
        keys=keys,
        partition_id="train",
        fields=list_of_dict_to_tensordict(
            [
                {
                    "prompts": torch.ones(5 + index, dtype=torch.long),
                    "responses": torch.ones(3 * index, dtype=torch.long),
                    "extra_fields": {"min_global_steps": 1, "max_global_steps": 1, "reward_extra_info": info},
                }
                for index, info in enumerate(infos)
            ]
        ),
        tags=[{"status": "success"}] * 3 + [{"status": "success", "is_padding": True}],
    )
    tags = tq.kv_list("train")["train"]
    batch = tq.KVBatchMeta(keys=keys, tags=[tags[key] for key in keys], partition_id="train")

    infos, groups, *lengths = batch_trajectories(batch)
    metrics = PerTaskMetricsLog().step(infos, groups)
    tq.kv_clear(keys=keys, partition_id="train")

    assert lengths == [[5, 6, 7], [0, 3, 6]], "the padding row's lengths are left out"

    assert metrics["mixed_r1/chart/count"] == 2 and metrics["mixed_r1/grounding/count"] == 1
    assert "mixed_r1/matching/count" not in metrics, "the padding row is not counted"
    assert metrics["mixed_r1/chart/accuracy/mean"] == 0.5 and metrics["mixed_r1/grounding/accuracy/mean"] == 0.0
    assert metrics["mixed_r1/chart/groups_with_signal"] == 1.0, "one right and one wrong session of one prompt"
    assert "mixed_r1/grounding/groups_with_signal" not in metrics, "a one-row group is not judged"


def test_judge_group_rules():
    grounding = judge_group("a", informative("grounding"), "correct")
    assert grounding == GroupVerdict("grounding", informative=True, metric_values=(1.0, 0.0, 1.0, 0.0))
    assert judge_group("a", zero_variance("chart", solved=True), "correct").outcome == ALL_CORRECT
    assert judge_group("a", zero_variance("chart"), "score").outcome == ALL_WRONG
    assert judge_group("a", informative("chart"), "correct").outcome is None
    assert judge_group("a", informative("open_ended"), "score").informative
    assert not judge_group("a", zero_variance("open_ended"), "score").informative
    assert not judge_group("a", zero_variance("matching", solved=True), "score").informative
    assert judge_group("a", zero_variance("chart")[:1], "score").informative
    # Same accuracy, different format: the score still differs, so the group carries signal.
    mixed_format = informative("chart")[:1] + [compute_score("chartqa", "<answer>42</answer>", "42", {"task": "chart"})]
    assert judge_group("a", mixed_format, "score").informative
    assert not judge_group("a", mixed_format, "accuracy").informative
    # All wrong (IoU 0.25 and 0.06, under the 0.5 correctness threshold) with different formats: `score`
    # sees signal where there is none; `correct`, the default, does not.
    _, box, frame = PROMPTS["grounding"]
    near_misses = [
        compute_score("refcoco", "<think>.</think><answer>[0, 0, 20, 20]</answer>", box, {"task": "grounding", **frame}),
        compute_score("refcoco", "<answer>[0, 0, 10, 10]</answer>", box, {"task": "grounding", **frame}),
    ]
    assert judge_group("a", near_misses, "score").informative
    assert not judge_group("a", near_misses, FilteringSettings().metric).informative
    assert FilteringSettings().metric == "correct"
    with pytest.raises(RuntimeError, match="disagree on the task"):
        judge_group("a", informative("chart")[:1] + informative("matching")[:1], "score")


def test_refill_count_waits_for_evidence_then_scales_with_keep_rate():
    assert refill_count(needed=4, inflight=4, kept=0, judged=0) == 0
    assert refill_count(needed=4, inflight=0, kept=0, judged=0) == 4
    assert refill_count(needed=2, inflight=0, kept=1, judged=3) == 4
    assert refill_count(needed=0, inflight=0, kept=5, judged=5) == 0


def test_settings_reject_unknown_and_invalid_options():
    with pytest.raises(ValueError, match="unknown option"):
        FilteringSettings.from_kwargs({"max_refill_round": 2})
    with pytest.raises(ValueError, match="max_refill_rounds"):
        FilteringSettings.from_kwargs({"max_refill_rounds": -1})
    with pytest.raises(ValueError, match=r"sampler_kwargs.metric must name a reward_extra_info field, got 5"):
        FilteringSettings.from_kwargs({"metric": 5})
    with pytest.raises(ValueError, match=r"sampler_kwargs.poll_interval_s must be a finite number .*, got nan"):
        FilteringSettings.from_kwargs({"poll_interval_s": float("nan")})


PRIMARY_CONFIG = """
hydra:
  searchpath:
    - pkg://verl.trainer.config
defaults:
  - ppo_trainer
  - _self_
  - filtering: "off"
"""


def compose_verl_config(tmp_path, overrides):
    """verl's full ppo_trainer config with this package's filtering group, as the training entry composes it."""
    (tmp_path / "primary.yaml").write_text(PRIMARY_CONFIG)
    shutil.copytree(REPO_ROOT / "conf" / "filtering", tmp_path / "filtering")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        config = compose(config_name="primary", overrides=overrides)
    OmegaConf.resolve(config)
    return config


def build_trainer(tmp_path, overrides):
    """The project's trainer through verl's own constructor, which builds the replay buffer (no workers start)."""
    model_dir = build_tiny_qwen25vl(tmp_path / "model")
    config = compose_verl_config(tmp_path, [f"actor_rollout_ref.model.path={model_dir}", *overrides])
    return MixedR1SyncTrainer(config), config


def test_filtering_on_plugs_the_sampler_into_verls_trainer_extension_point(tmp_path):
    overrides = [
        "filtering=on",
        "trainer.v1.sampler.sampler_kwargs.max_refill_rounds=5",
        "trainer.v1.trainer_mode=mixed_r1_sync",
    ]
    trainer, config = build_trainer(tmp_path, overrides)
    sampler = trainer.replay_buffer

    assert isinstance(sampler, PerTaskDynamicSampler)
    assert sampler.settings == FilteringSettings(metric="correct", max_refill_rounds=5)
    assert sampler.trainer_mode == "sync"
    # verl switches to single-prompt dataloader fetches (exact refills) when filter_groups is enabled.
    assert config.algorithm.filter_groups.enable is True


def test_filtering_refuses_verls_sync_sub_steps_when_the_trainer_is_built(tmp_path):
    overrides = ["filtering=on", "trainer.v1.trainer_mode=mixed_r1_sync", "+trainer.v1.sync.parameter_sync_step=2"]
    with pytest.raises(ValueError, match=r"trainer.v1.sync.parameter_sync_step=2; use .*=1 with filtering"):
        build_trainer(tmp_path, overrides)


def test_filtering_off_is_verls_default_sampler(tmp_path):
    trainer, config = build_trainer(tmp_path, ["trainer.v1.trainer_mode=mixed_r1_sync"])
    sampler = trainer.replay_buffer

    assert type(sampler) is ReplayBuffer and sampler.filter_groups_metric is None
    assert config.algorithm.filter_groups.enable is False

"""The adapter's parts: per-task metrics, the BMAS batcher, the shared table, where BMAS runs, the trainer."""

import asyncio
import json
import os
import re
import time
import types

import numpy as np
import pytest
import ray
import torch
from reward_loop_helpers import reward_config

from mixed_r1_verl.rewards import bmas_batch, compute_score
from mixed_r1_verl.rewards.embeddings import load_input_embeddings
from mixed_r1_verl.verl_adapter import embedding_service as embedding_service_module
from mixed_r1_verl.verl_adapter.metrics import PerTaskMetricsLog, length_clip_ratios, per_task_metrics, response_caps
from mixed_r1_verl.verl_adapter.reward_manager import BmasBatcher, custom_score
from mixed_r1_verl.verl_adapter.stop_by import EARLY_END_FILE
from mixed_r1_verl.verl_adapter.trainer import reward_extra_infos


def test_per_task_metrics_from_real_reward_outputs():
    rows = [
        compute_score("a", "<think>x</think><answer>B</answer>", "B", {"task": "matching"}),
        compute_score("a", "<answer>C</answer>", "B", {"task": "matching"}),
        compute_score("a", "<answer> C </answer>", "A", {"task": "matching"}),
        compute_score("b", "<think>x</think><answer>45</answer>", "45", {"task": "chart"}),
        compute_score("c", "<answer>1</answer>", "1", {}),
    ]
    metrics = per_task_metrics(rows)
    assert metrics["mixed_r1/matching/top_answer_share"] == pytest.approx(2 / 3)  # "C" and " C " of B, C, C
    assert metrics["mixed_r1/chart/top_answer_share"] == 1.0
    assert metrics["mixed_r1/matching/count"] == 3
    assert metrics["mixed_r1/matching/accuracy/mean"] == pytest.approx(1 / 3)
    assert metrics["mixed_r1/matching/score/mean"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert metrics["mixed_r1/matching/format/mean"] == pytest.approx(1 / 3)
    assert metrics["mixed_r1/matching/correct/mean"] == pytest.approx(1 / 3)
    assert metrics["mixed_r1/chart/score/mean"] == 1.0
    assert metrics["mixed_r1/unknown/error/mean"] == 1.0
    assert not any(key.startswith("mixed_r1/grounding") for key in metrics)


def test_verl_validation_votes_on_pred_for_maj_at_n():
    """verl's validation metrics take majority votes over the `pred` every sample reports."""
    from verl.trainer.ppo.metric_utils import process_validation_metrics

    responses = ["<answer>B</answer>", "<answer> B</answer>", "<answer>C</answer>"]  # 2 of 3 right
    rows = [compute_score("mmbench", text, "B", {"task": "matching"}) for text in responses]
    infos = {key: [row[key] for row in rows] for key in rows[0]}

    metrics = process_validation_metrics(["mmbench"] * 3, ["p1"] * 3, infos)["mmbench"]["accuracy"]

    assert metrics["mean@3"] == pytest.approx(2 / 3)
    # Bootstrap draws of 3 of the 3 answers: the majority is right with probability (2/3)^3 + 3 (2/3)^2 (1/3).
    assert metrics["maj@3/mean"] == pytest.approx(20 / 27, abs=0.04)
    without_pred = {key: values for key, values in infos.items() if key != "pred"}
    assert "maj@3/mean" not in process_validation_metrics(["mmbench"] * 3, ["p1"] * 3, without_pred)["mmbench"]["accuracy"]


def test_tasks_absent_from_a_step_are_logged_with_count_zero():
    chart = compute_score("b", "<answer>45</answer>", "45", {"task": "chart"})
    matching = compute_score("a", "<answer>B</answer>", "B", {"task": "matching"})
    log = PerTaskMetricsLog()

    first = log.step([chart, matching])
    second = log.step([chart])
    third = log.step([])

    assert first["mixed_r1/matching/count"] == 1.0 and first["mixed_r1/matching/accuracy/mean"] == 1.0
    assert second["mixed_r1/matching/count"] == 0.0 and second["mixed_r1/chart/count"] == 1.0
    assert not any(key.startswith("mixed_r1/matching/") and key.endswith("/mean") for key in second)
    assert third == {"mixed_r1/chart/count": 0.0, "mixed_r1/matching/count": 0.0}


def test_padding_rows_and_foreign_rows_are_left_out():
    extra_fields = [
        {"reward_extra_info": {"task": "chart", "score": 1.0}},
        {"reward_extra_info": {"task": "chart", "score": 0.0}},
        {"reward_extra_info": {"acc": 1.0}},
        None,
    ]
    tags = [{}, {"is_padding": True}, {}, {}]
    infos, groups = reward_extra_infos(extra_fields, tags, ["u1_0_0", "u1_1_0", "u2_0_0", "u3_0_0"])
    assert groups == ["u1", "u2", "u3"], "one row per real trajectory, in line with their lengths"
    assert infos[1:] == [{"acc": 1.0}, {}]
    assert per_task_metrics(infos) == {"mixed_r1/chart/count": 1.0, "mixed_r1/chart/score/mean": 1.0}


def test_groups_with_signal_is_the_share_of_a_tasks_prompt_groups_whose_rewards_differ():
    right = compute_score("b", "<think>x</think><answer>45</answer>", "45", {"task": "chart"})
    wrong = compute_score("b", "<answer>7</answer>", "45", {"task": "chart"})
    matching = compute_score("a", "<answer>B</answer>", "B", {"task": "matching"})
    rows = [right, wrong, wrong, wrong, right, right, matching]
    groups = ["p1", "p1", "p2", "p2", "p3", "p3", "p4"]
    metrics = PerTaskMetricsLog().step(rows, groups)
    assert metrics["mixed_r1/chart/groups_with_signal"] == pytest.approx(1 / 3), "p1 differs; p2, p3 do not"
    assert "mixed_r1/matching/groups_with_signal" not in metrics, "one response of p4: nothing to compare"
    assert "mixed_r1/chart/groups_with_signal" not in per_task_metrics(rows), "no groups given"


def test_response_caps_are_the_limits_verls_vllm_server_applies():
    rollout = compose_verl_config(["data.max_prompt_length=100", "data.max_response_length=50"]).actor_rollout_ref.rollout
    assert rollout.max_model_len is None
    assert response_caps([10, 100, 120, 300], rollout) == [50, 50, 30, 1], "a long prompt takes from the response"
    rollout.max_model_len = 130
    assert response_caps([10, 100, 120], rollout) == [50, 30, 10], "within max_model_len where it is set"


def test_per_task_response_lengths_are_measured_against_each_responses_cap():
    chart = compute_score("b", "<answer>45</answer>", "45", {"task": "chart"})
    matching = compute_score("a", "<answer>B</answer>", "B", {"task": "matching"})
    log = PerTaskMetricsLog()

    metrics = log.step([chart, chart, matching, {}], None, [(50, 50), (30, 50), (12, 12), (7, 50)])

    assert metrics["mixed_r1/chart/response_length/mean"] == 40.0
    assert metrics["mixed_r1/chart/response_length/clip_ratio"] == 0.5
    assert metrics["mixed_r1/matching/response_length/clip_ratio"] == 1.0, "cut at its own cap, 12"
    assert "mixed_r1/chart/response_length/mean" not in log.step([chart]), "no lengths given"


def test_clip_ratios_are_zero_when_no_length_reaches_its_limit_where_verls_v1_batch_says_otherwise():
    from verl.protocol import DataProto
    from verl.trainer.ppo.metric_utils import compute_data_metrics
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    prompts, responses = [30, 64, 40], [0, 20, 12]  # limits 64 and 50: one prompt at its limit, no response
    caps = response_caps(prompts, {"prompt_length": 64, "response_length": 50})
    rows = [
        {"prompts": torch.ones(prompt, dtype=torch.long), "responses": torch.ones(response, dtype=torch.long)}
        for prompt, response in zip(prompts, responses)
    ]
    # The batch verl 0.9.1's V1 trainer builds for its metrics: jagged rows padded to the longest.
    data = list_of_dict_to_tensordict(rows).to_padded_tensor()
    for key in ("token_level_scores", "token_level_rewards", "advantages", "returns"):
        data[key] = torch.zeros(3, max(responses))
    data["response_mask"] = torch.tensor([[1] * n + [0] * (max(responses) - n) for n in responses])
    data["prompt_length"], data["response_length"] = torch.tensor(prompts).float(), torch.tensor(responses).float()
    verls = compute_data_metrics(DataProto(batch=data), use_critic=False)

    ours = length_clip_ratios(prompts, responses, caps, prompt_limit=64)

    assert verls["response_length/clip_ratio"] == pytest.approx(1 / 3), "the longest response counts as cut"
    assert verls["response_length_non_aborted/clip_ratio"] == 0.5
    assert ours == {
        "response_length/clip_ratio": 0.0,
        "response_length_non_aborted/clip_ratio": 0.0,
        "prompt_length/clip_ratio": pytest.approx(1 / 3),
    }
    assert length_clip_ratios(prompts, [0, 50, 49], caps, 64)["response_length_non_aborted/clip_ratio"] == 0.5
    assert length_clip_ratios([], [], [], 64) == {}


def test_batcher_scores_concurrent_requests_in_one_batch():
    table = torch.randn(50, 8)
    batches = []

    async def score_batch(pairs):
        batches.append(len(pairs))
        return bmas_batch(table, pairs)

    async def main():
        batcher = BmasBatcher(score_batch, linger_s=0.001)
        pairs = [([i, i + 1], [i + 2]) for i in range(20)]
        scores = await asyncio.gather(*(batcher.score(a, r) for a, r in pairs))
        later = await batcher.score([1], [1])
        return pairs, scores, later

    pairs, scores, later = asyncio.run(main())
    assert batches == [20, 1]
    assert scores == pytest.approx(bmas_batch(table, pairs))
    assert later == 1.0


def test_batcher_passes_errors_to_every_waiter():
    async def failing(pairs):
        raise RuntimeError("boom")

    async def main():
        batcher = BmasBatcher(failing, linger_s=0)
        return await asyncio.gather(batcher.score([1], [2]), batcher.score([3], [4]), return_exceptions=True)

    results = asyncio.run(main())
    assert [str(result) for result in results] == ["boom", "boom"]


def test_batcher_caller_cancelled_mid_batch_leaves_the_others_served():
    async def main():
        computing, release = asyncio.Event(), asyncio.Event()

        async def slow(pairs):
            computing.set()
            await release.wait()
            return [float(len(answer)) for answer, _ in pairs]

        batcher = BmasBatcher(slow, linger_s=0)
        callers = [asyncio.ensure_future(batcher.score("x" * n, "ref")) for n in (1, 2, 3)]
        await computing.wait()
        callers[0].cancel()
        release.set()
        # A guard against hanging forever, not a speed check.
        return await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), timeout=30)

    first, second, third = asyncio.run(main())
    assert isinstance(first, asyncio.CancelledError)
    assert (second, third) == (2.0, 3.0)


def test_batcher_scorer_returning_too_few_scores_fails_every_caller():
    async def short(pairs):
        return [1.0] * (len(pairs) - 1)

    async def main():
        batcher = BmasBatcher(short, linger_s=0)
        callers = [batcher.score("a", "b"), batcher.score("c", "d"), batcher.score("e", "f")]
        return await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), timeout=30)

    results = asyncio.run(main())
    assert [str(result) for result in results] == ["BMAS scorer returned 2 scores for 3 requests"] * 3


@ray.remote(num_cpus=0)
class DeviceProbe:
    def bmas_device(self):
        from mixed_r1_verl.verl_adapter.reward_manager import resolve_bmas_device

        return os.environ.get("CUDA_VISIBLE_DEVICES"), resolve_bmas_device("auto")


def test_auto_bmas_device_is_cuda_only_where_ray_assigned_a_gpu():
    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        # As verl's reward workers: no GPU asked for, yet the node's GPUs stay visible to CUDA.
        cpu_worker = DeviceProbe.options(runtime_env={"env_vars": {"CUDA_VISIBLE_DEVICES": "0"}}).remote()
        gpu_worker = DeviceProbe.options(num_gpus=1).remote()
        on_cpu_worker, on_gpu_worker = ray.get([cpu_worker.bmas_device.remote(), gpu_worker.bmas_device.remote()])
    finally:
        ray.shutdown()
    assert on_cpu_worker == ("0", "cpu")
    assert on_gpu_worker == ("0", "cuda")


def test_bmas_gpu_actor_without_a_free_gpu_stops_the_manager_at_start_up(tiny_model_dir):
    from ray.util.placement_group import placement_group
    from transformers import AutoTokenizer

    from mixed_r1_verl.verl_adapter.embedding_service import SERVICE_NAME_PREFIX, BmasGpuUnavailable
    from mixed_r1_verl.verl_adapter.reward_manager import MixedR1RewardManager

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        too_many = reward_config(tiny_model_dir, bmas_num_gpus=2)
        with pytest.raises(BmasGpuUnavailable, match=r"bmas_num_gpus=2.0.*the node has 1 GPU.*bmas_num_gpus=0"):
            MixedR1RewardManager(too_many, tokenizer, None)

        # verl's colocated resource pool: one bundle per GPU reserves the node's only GPU.
        pool = placement_group([{"GPU": 1}])
        ray.get(pool.ready())
        reserved = reward_config(tiny_model_dir, bmas_num_gpus=0.1, bmas_gpu_wait_s=1)
        with pytest.raises(BmasGpuUnavailable, match=r"none became free within 1 s.*resource pool"):
            MixedR1RewardManager(reserved, tokenizer, None)
        # The unplaceable actor is removed, not left pending to take a GPU later (bounded wait: removal is async).
        deadline = time.monotonic() + 30
        while any(name.startswith(SERVICE_NAME_PREFIX) for name in ray.util.list_named_actors()):
            assert time.monotonic() < deadline, "the BMAS GPU actor is still pending"
            time.sleep(0.1)
    finally:
        ray.shutdown()


def test_a_bmas_gpu_actor_placed_at_once_waits_for_its_table_however_long_it_loads(tiny_model_dir, monkeypatch):
    """bmas_gpu_wait_s is the wait for Ray to place the actor: a table that loads for longer is no GPU missing."""
    from slow_embedding_table import TABLE_LOAD_S, SlowTableService

    monkeypatch.setattr(embedding_service_module, "EmbeddingService", SlowTableService)
    python_path = os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": python_path}})  # fmt: skip
    try:
        wait_s = TABLE_LOAD_S - 5
        service = embedding_service_module.gpu_embedding_service(str(tiny_model_dir), 1, wait_s)
        rows = ray.get(service.rows.remote())
    finally:
        ray.shutdown()
    assert rows == load_input_embeddings(tiny_model_dir).shape[0]


def test_a_table_that_failed_to_load_is_not_loaded_again_by_each_caller(tiny_model_dir, monkeypatch):
    from slow_embedding_table import FailingTableService

    monkeypatch.setattr(embedding_service_module, "EmbeddingService", FailingTableService)
    python_path = os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": python_path}})  # fmt: skip
    try:
        service = embedding_service_module.embedding_service(str(tiny_model_dir))
        errors = []
        for call in (service.table, service.rows, service.table, service.table):
            with pytest.raises(MemoryError, match="cannot allocate the table of") as raised:
                ray.get(call.remote())
            errors.append(str(raised.value))
        loads = ray.get(service.loads.remote())
    finally:
        ray.shutdown()
    assert loads == 1
    assert len(errors[2]) == len(errors[3]), "a remembered error is raised as it was, its traceback not grown"


def test_the_manager_refuses_the_bmas_options_and_embedding_model_the_training_entry_refuses(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from mixed_r1_verl.verl_adapter.reward_manager import MixedR1RewardManager
    from test_train_config import BMAS_REFUSALS

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for setting, refusal in BMAS_REFUSALS:
        name, _, value = setting.partition("=")
        with pytest.raises(ValueError, match=re.escape(f"reward.reward_kwargs.{refusal}")):
            MixedR1RewardManager(reward_config(tiny_model_dir, **{name: value}), tokenizer, None)
    missing = tmp_path / "no_model"
    refusal = f"reward.reward_kwargs.embedding_model={missing}: {missing} does not exist"
    with pytest.raises(ValueError, match=re.escape(refusal)):
        MixedR1RewardManager(reward_config(tiny_model_dir, embedding_model=missing), tokenizer, None)


def test_a_tokenizer_with_ids_beyond_the_shared_table_stops_the_manager_at_start_up(tokens_beyond_table_dir):
    from transformers import AutoTokenizer

    from mixed_r1_verl.rewards.embeddings import EmbeddingModelError
    from mixed_r1_verl.verl_adapter.reward_manager import MixedR1RewardManager

    tokenizer = AutoTokenizer.from_pretrained(tokens_beyond_table_dir)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(EmbeddingModelError, match=r"token ids up to 513 but its input-embedding table has 512"):
            MixedR1RewardManager(reward_config(tokens_beyond_table_dir), tokenizer, None)
    finally:
        ray.shutdown()


@ray.remote(num_cpus=0)
class TableReader:
    def read(self, model_dir):
        from mixed_r1_verl.verl_adapter.embedding_service import embedding_service, shared_table

        self.service = service = embedding_service(model_dir)  # a holder keeps the node's table alive
        table, _ = shared_table(service)
        _, (reference, _) = ray.get(service.table.remote())
        mapped_from_object_store = not ray.get(reference).flags.writeable  # Ray maps numpy zero-copy, read-only
        return table.float().sum().item(), table.dtype == torch.bfloat16, mapped_from_object_store, service._actor_id.hex()


def test_one_table_per_node_shared_zero_copy(tiny_model_dir):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        readers = [TableReader.remote() for _ in range(3)]
        results = ray.get([reader.read.remote(str(tiny_model_dir)) for reader in readers])
    finally:
        ray.shutdown()
    expected = load_input_embeddings(tiny_model_dir).float().sum().item()
    assert [total for total, _, _, _ in results] == pytest.approx([expected] * 3)
    assert all(is_bf16 and zero_copy for _, is_bf16, zero_copy, _ in results)
    assert len({service for _, _, _, service in results}) == 1


def compose_verl_config(overrides):
    from hydra import compose, initialize_config_module

    with initialize_config_module("verl.trainer.config", version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def test_mixed_r1_sync_is_verls_sync_mode_from_construction_on(tiny_model_dir):
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    config = compose_verl_config([
        f"actor_rollout_ref.model.path={tiny_model_dir}", "trainer.v1.trainer_mode=mixed_r1_sync",
        "+trainer.v1.sync.parameter_sync_step=2", "algorithm.adv_estimator=grpo", "data.train_batch_size=4",
    ])
    trainer = get_trainer_cls(config.trainer.v1.trainer_mode)(config)  # as verl's task runner builds it

    assert type(trainer).__name__ == "MixedR1SyncTrainer"
    assert trainer.parameter_sync_step == 2, "verl's trainer.v1.sync settings apply"
    assert trainer.trainer_mode == "sync" and config.trainer.v1.trainer_mode == "sync"
    assert type(trainer.replay_buffer) is ReplayBuffer and trainer.replay_buffer.trainer_mode == "sync"
    assert trainer.replay_buffer.trainer_config.parameter_sync_step == 2


def test_a_custom_reward_score_may_be_any_finite_scalar():
    for returned in (np.float32(0.5), torch.tensor(0.5), {"score": np.array(0.5), "acc": 1.0}, 0.5):
        assert custom_score(returned, "f.py:score", "sample (x)")[0] == 0.5
    assert custom_score(True, "f.py:score", "sample (x)") == (1.0, {})
    with pytest.raises(TypeError, match=r"f.py:score for sample \(x\) returned 'high'"):
        custom_score("high", "f.py:score", "sample (x)")
    with pytest.raises(ValueError, match="non-finite score nan"):
        custom_score({"score": np.float64("nan")}, "f.py:score", "sample (x)")


def test_stop_by_knows_what_a_validation_takes_from_the_one_before_training(tiny_model_dir):
    from verl.trainer.ppo.v1 import get_trainer_cls

    config = compose_verl_config([
        f"actor_rollout_ref.model.path={tiny_model_dir}", "trainer.v1.trainer_mode=mixed_r1_sync",
        "algorithm.adv_estimator=grpo", "data.train_batch_size=4",
        f"+mixed_r1.stop_by={time.time() + 3600}", "+mixed_r1.stop_save_estimate_s=60",
    ])
    trainer = get_trainer_cls(config.trainer.v1.trainer_mode)(config)
    validation_s = 0.3

    # verl's fit() calls these hooks around every validation, trainer.val_before_train's included.
    trainer.on_validate_begin()
    time.sleep(validation_s)
    trainer.on_validate_end()

    assert trainer._stop_by.validation_s >= validation_s
    assert trainer._stop_by.reserve_s(validates_last_step=True) >= 60 + validation_s


def test_stop_by_leaves_the_step_verl_runs_as_its_last_the_last_one(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """100 s before stop_by, 10 s steps and a save assumed to take 60 s: stop_by ends the run at step 4.
    verl's fit decides before step 4 that it is the last; the 2 s save it times there loosens the estimate,
    which must not announce or record a later last step that never runs."""
    from verl.trainer.ppo.v1 import get_trainer_cls

    import mixed_r1_verl.verl_adapter.trainer as trainer_module

    clock = {"now": 1_800_000_000.0}
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(time=lambda: clock["now"]))
    config = compose_verl_config([
        f"actor_rollout_ref.model.path={tiny_model_dir}", "trainer.v1.trainer_mode=mixed_r1_sync",
        "algorithm.adv_estimator=grpo", "data.train_batch_size=4", "trainer.test_freq=0",
        "trainer.save_freq=100", f"trainer.default_local_dir={tmp_path}",
        f"+mixed_r1.stop_by={clock['now'] + 100}", "+mixed_r1.stop_save_estimate_s=60",
    ])  # fmt: skip
    trainer = get_trainer_cls(config.trainer.v1.trainer_mode)(config)
    trainer.total_training_steps = 40  # verl sets it with the data loaders, which need a data set
    trainer.global_steps = 1
    trainer.on_train_begin()

    steps_run = []
    while trainer.global_steps <= trainer.total_training_steps:  # verl's fit loop, reduced to its last step
        is_last_step = trainer.global_steps >= trainer.total_training_steps
        trainer.timing_raw = {}
        clock["now"] += 10.0
        if is_last_step:  # verl's save at its last step
            clock["now"] += 2.0
            trainer.timing_raw["save_checkpoint"] = 2.0
        trainer._end_before_stop_by()
        steps_run.append(trainer.global_steps)
        trainer.global_steps += 1
        if is_last_step:
            break

    assert steps_run == [1, 2, 3, 4]
    assert capsys.readouterr().out.count("mixed_r1.stop_by: the last step is now") == 1
    assert json.loads((tmp_path / EARLY_END_FILE).read_text())["last_step"] == 4
    assert trainer.total_training_steps == 4

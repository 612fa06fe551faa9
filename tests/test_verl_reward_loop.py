"""The `mixed_r1` reward manager through verl's real reward loop on a local Ray cluster.

The cluster's workers see a Hugging Face cache holding the tiny model under a hub id, offline, as a
node with a pre-filled HF_HOME does."""

import asyncio
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import ray
from hf_cache import write_hf_cache
from reward_loop_helpers import SAMPLES, THINK, reward_config, rollout_batch
from task_plugins import write_counting_plugin, write_distribution
from transformers import AutoTokenizer

from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput, AgentLoopWorker
from verl.experimental.reward_loop.reward_loop import RewardLoopManager, RewardLoopWorker
from mixed_r1_verl.rewards import compute_score
from mixed_r1_verl.rewards.tasks import DRIVER_TASKS_ENV_VAR, TaskPluginError
from mixed_r1_verl.verl_adapter.metrics import per_task_metrics, response_caps
from mixed_r1_verl.verl_adapter.trainer import wait_for_reward_workers

HUB_ID = "acme/tiny-qwen25vl"
EXTRA_KEYS = ["score", "accuracy", "correct", "format", "error", "task", "pred"]
TEXT_KEYS = ("task", "pred")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory, tiny_model_dir):
    hf_home = tmp_path_factory.mktemp("hf_home")
    write_hf_cache(hf_home, HUB_ID, tiny_model_dir, sharded=True)
    # The workers' environment has a package installed that adds the task `counting`.
    site = write_counting_plugin(tmp_path_factory.mktemp("site"))
    python_path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env_vars = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": python_path}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env_vars})
    yield
    ray.shutdown()


@pytest.fixture
def reward_loop(local_ray):
    """Starts verl's reward loop for a config; its workers are stopped after the test, whatever happened
    (they hold cluster-wide names)."""
    managers = []

    def start(config) -> RewardLoopManager:
        managers.append(RewardLoopManager(config))
        return managers[-1]

    yield start
    for manager in managers:
        for worker in manager.reward_loop_workers:
            ray.kill(worker)


def expected_result(sample, model_dir, **options):
    data_source, response, ground_truth, extra_info = sample
    return compute_score(data_source, response, ground_truth, extra_info, embedding_model=str(model_dir), **options)


def assert_same_result(actual, expected, where):
    for key in EXTRA_KEYS:
        value = actual[key]
        assert value == (expected[key] if key in TEXT_KEYS else pytest.approx(expected[key], abs=1e-5)), (where, key)


def test_plugin_registers_in_a_fresh_process():
    code = (
        "import verl\n"
        "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "print(get_reward_manager_cls('mixed_r1').__name__, get_trainer_cls('mixed_r1_sync').__name__)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["MixedR1RewardManager", "MixedR1SyncTrainer"]


def test_all_four_tasks_in_one_batch(reward_loop, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = rollout_batch(tokenizer, SAMPLES)
    manager = reward_loop(reward_config(tiny_model_dir))
    output = manager.compute_rm_score(data)

    assert output.meta_info["reward_extra_keys"] == EXTRA_KEYS
    rm_scores = output.batch["rm_scores"]
    last = data.batch["attention_mask"][:, 8:].sum(dim=1) - 1
    for row, sample in enumerate(SAMPLES):
        expected = expected_result(sample, tiny_model_dir)
        assert_same_result({key: output.non_tensor_batch[key][row] for key in EXTRA_KEYS}, expected, row)
        assert rm_scores[row, last[row]].item() == pytest.approx(expected["score"], abs=1e-5)
        assert rm_scores[row].abs().sum().item() == pytest.approx(abs(expected["score"]), abs=1e-5)

    assert list(output.non_tensor_batch["pred"][:4]) == ["yes", "B or C", "45%", "12"]
    tasks = list(output.non_tensor_batch["task"])
    assert tasks == ["matching", "matching", "chart", "chart", "grounding", "grounding", "open_ended", "open_ended", "unknown"]
    accuracy = output.non_tensor_batch["accuracy"]
    assert list(accuracy[[0, 1, 2, 3]]) == [1.0, 0.0, 1.0, 0.0]
    assert accuracy[4] == pytest.approx(0.8) and accuracy[5] == pytest.approx(0.01)
    assert accuracy[6] == pytest.approx(1.0) and 0.0 < accuracy[7] < 1.0
    assert list(output.non_tensor_batch["error"]) == [0.0] * 8 + [1.0]
    # correct: matching/chart at accuracy 1, grounding at IoU 0.5, open_ended at BMAS 0.5.
    assert list(output.non_tensor_batch["correct"][:7]) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert output.non_tensor_batch["correct"][7] == (1.0 if accuracy[7] >= 0.5 else 0.0)


def test_reward_kwargs_reach_the_manager(reward_loop, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = [SAMPLES[0], SAMPLES[4], SAMPLES[-1]]
    config = reward_config(tiny_model_dir, format_weight=0.5, iou_threshold=0.75, **{"task_map.somewhere": "chart"})
    output = reward_loop(config).compute_rm_score(rollout_batch(tokenizer, samples))
    assert list(output.non_tensor_batch["task"]) == ["matching", "grounding", "chart"]
    assert list(output.non_tensor_batch["score"]) == [1.0, 1.0, 1.0]


def test_policy_named_by_hub_id_is_read_from_the_hf_cache(reward_loop, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = [sample for sample in SAMPLES if sample[3].get("task") == "open_ended"]
    output = reward_loop(reward_config(HUB_ID, num_workers=1)).compute_rm_score(rollout_batch(tokenizer, samples))
    assert list(output.non_tensor_batch["error"]) == [0.0, 0.0]
    for row, sample in enumerate(samples):
        expected = expected_result(sample, tiny_model_dir)
        assert_same_result({key: output.non_tensor_batch[key][row] for key in EXTRA_KEYS}, expected, row)


def test_unloadable_embedding_model_stops_the_reward_worker_at_start_up(reward_loop, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = reward_config(tiny_model_dir, num_workers=1, embedding_model="acme/not-in-cache")
    manager = reward_loop(config)
    # Not a per-sample error=1: the worker itself could not start, and says why; the trainer checks this
    # right after building the reward loop.
    with pytest.raises(RuntimeError, match=r"(?s)failed to start.*EmbeddingModelError.*'acme/not-in-cache'"):
        wait_for_reward_workers(manager.reward_loop_workers)
    with pytest.raises(ray.exceptions.RayActorError, match=r"(?s)__init__.*EmbeddingModelError.*'acme/not-in-cache'"):
        manager.compute_rm_score(rollout_batch(tokenizer, SAMPLES[:1]))


def test_a_task_an_installed_package_adds_is_scored_in_the_reward_workers(reward_loop, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = [
        ("shapes", THINK + "<answer>3</answer>", "3", {"task": "counting"}),
        ("shapes", THINK + "<answer>4</answer>", "3", {"task": "counting"}),  # one off: 0.5, correct at 0.5
        ("shapes", THINK + "<answer>many</answer>", "3", {"task": "counting"}),  # no whole number: an error
        SAMPLES[0],
    ]
    output = reward_loop(reward_config(tiny_model_dir, num_workers=1)).compute_rm_score(rollout_batch(tokenizer, samples))
    assert output.meta_info["reward_extra_keys"] == EXTRA_KEYS
    batch = output.non_tensor_batch
    assert list(batch["task"]) == ["counting", "counting", "counting", "matching"]
    assert list(batch["accuracy"]) == [1.0, 0.5, 0.0, 1.0]
    assert list(batch["correct"]) == [1.0, 1.0, 0.0, 1.0]
    assert list(batch["error"]) == [0.0, 0.0, 1.0, 0.0]
    assert list(batch["score"]) == [pytest.approx(1.0), pytest.approx(0.55), 0.0, pytest.approx(1.0)]


def test_custom_reward_function_may_return_a_number(reward_loop, tiny_model_dir, tmp_path):
    module = tmp_path / "length_reward.py"
    module.write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    return len(solution_str) / 1000\n"
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = SAMPLES[:2]
    config = reward_config(
        tiny_model_dir,
        f"reward.custom_reward_function.path={module}",
        "reward.custom_reward_function.name=compute_score",
        num_workers=1,
    )
    output = reward_loop(config).compute_rm_score(rollout_batch(tokenizer, samples))
    assert output.meta_info["reward_extra_keys"] == ["score"]
    assert list(output.non_tensor_batch["score"]) == [pytest.approx(len(response) / 1000) for _, response, _, _ in samples]


def trajectory(tokenizer, sample, session_id):
    """One finished rollout as an agent loop hands it to verl's reward step: unpadded ids, EOS included."""
    data_source, response, ground_truth, extra_info = sample
    messages = [{"role": "user", "content": "What is shown?"}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    prompt_ids = list(getattr(prompt_ids, "input_ids", prompt_ids))
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    output = AgentLoopOutput(
        prompt_ids=prompt_ids,
        response_ids=response_ids,
        response_mask=[1] * len(response_ids),
        num_turns=2,
        metrics=AgentLoopMetrics(),
    )
    fields = {
        "data_source": data_source,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": extra_info,
        "raw_prompt": messages,
        "uid": f"prompt-{session_id}",
        "session_id": session_id,
        "index": 0,
    }
    return output, fields


def test_training_path_scores_each_trajectory_as_it_finishes(reward_loop, tiny_model_dir):
    """Training scores trajectories one by one, concurrently, as agent loops finish: verl's agent-loop
    worker sends each to a reward worker (its `_compute_score`). Driven here through verl's own code."""
    config = reward_config(tiny_model_dir, "actor_rollout_ref.rollout.name=vllm")
    reward_workers = reward_loop(config).reward_loop_worker_handles
    agent_loop_worker = AgentLoopWorker(config, llm_client=None, reward_loop_worker_handles=reward_workers)
    tokenizer = agent_loop_worker.tokenizer
    trajectories = [trajectory(tokenizer, sample, session) for session, sample in enumerate(SAMPLES)]

    async def finish_all():
        await asyncio.gather(
            *(agent_loop_worker._compute_score([output], kwargs=fields) for output, fields in trajectories)
        )

    asyncio.run(finish_all())

    for row, (sample, (output, _)) in enumerate(zip(SAMPLES, trajectories)):
        expected = expected_result(sample, tiny_model_dir)
        info = output.extra_fields["reward_extra_info"]
        assert list(info) == EXTRA_KEYS
        assert_same_result(info, expected, row)
        assert output.reward_score == pytest.approx(expected["score"], abs=1e-5)
    errors = [output.extra_fields["reward_extra_info"]["error"] for output, _ in trajectories]
    assert errors == [0.0] * 8 + [1.0]



def reward_worker(model_dir, *overrides, **reward_kwargs) -> RewardLoopWorker:
    """verl's reward worker built in this process: it scores each sample through `run_single`, as in training."""
    return RewardLoopWorker(reward_config(model_dir, *overrides, num_workers=1, **reward_kwargs))


def score_batch(worker: RewardLoopWorker, data) -> list[dict]:
    return asyncio.run(worker.compute_score_batch(data))


def test_a_broken_installed_task_stops_the_reward_worker_at_start_up(tiny_model_dir, install_tasks, tmp_path):
    install_tasks(write_distribution(tmp_path / "site", "broken_task", "", {"counting": "broken_task:COUNTING"}))
    with pytest.raises(TaskPluginError, match="entry point counting = broken_task:COUNTING .* cannot be loaded"):
        reward_worker(tiny_model_dir)


def test_a_reward_worker_on_a_node_without_a_task_the_driver_has_stops_at_start_up(
    tiny_model_dir, install_tasks, tmp_path, monkeypatch
):
    monkeypatch.setenv(DRIVER_TASKS_ENV_VAR, json.dumps({"counting": "counting_task"}))
    install_tasks(tmp_path / "node_without_it")
    with pytest.raises(TaskPluginError) as stopped:
        reward_worker(tiny_model_dir)
    assert str(stopped.value).startswith(
        f"node {socket.gethostname()} lacks the installed task(s) 'counting' (package counting_task) that the "
        "training driver has"
    )
    install_tasks(write_counting_plugin(tmp_path / "node_with_it"))
    samples = [("shapes", THINK + "<answer>3</answer>", "3", {"task": "counting"})]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    results = score_batch(reward_worker(tiny_model_dir), rollout_batch(tokenizer, samples))
    assert [result["reward_extra_info"]["task"] for result in results] == ["counting"]


def test_a_sample_without_ground_truth_stops_the_reward_with_its_name(tiny_model_dir):
    worker = reward_worker(tiny_model_dir)
    sample = ("chartqa", THINK + "<answer>None</answer>", None, {"task": "chart", "id": "chart-3", "index": 3})
    named = r"sample \(data_source='chartqa', id='chart-3', index=3\) cannot be scored: its ground truth is None"
    with pytest.raises(ValueError, match=named):
        score_batch(worker, rollout_batch(worker.input_tokenizer, [sample]))


@pytest.mark.parametrize("reward_model", [None, {"style": "rule"}])
def test_a_sample_without_reward_model_ground_truth_stops_the_reward_with_its_name(tiny_model_dir, reward_model):
    worker = reward_worker(tiny_model_dir)
    data = rollout_batch(worker.input_tokenizer, [SAMPLES[0]])
    if reward_model is None:
        del data.non_tensor_batch["reward_model"]
    else:
        data.non_tensor_batch["reward_model"] = np.array([reward_model], dtype=object)
    named = r"sample \(data_source='pope'\) cannot be scored: it has no reward_model.ground_truth"
    with pytest.raises(ValueError, match=named):
        score_batch(worker, data)


CUSTOM_REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return extra_info["returns"]
"""


def custom_reward_worker(model_dir, tmp_path, *overrides) -> RewardLoopWorker:
    """A reward worker whose custom reward function returns each sample's `extra_info["returns"]`."""
    module = tmp_path / "given_reward.py"
    module.write_text(CUSTOM_REWARD)
    path, name = f"reward.custom_reward_function.path={module}", "reward.custom_reward_function.name=compute_score"
    return reward_worker(model_dir, path, name, *overrides)


def custom_samples(*returns) -> list[tuple]:
    return [("src", THINK + "<answer>B</answer>", "B", {"id": f"row-{i}", "returns": r}) for i, r in enumerate(returns)]


def test_custom_reward_results_report_score_and_the_keys_it_returns(tiny_model_dir, tmp_path):
    """Nothing is made up for keys the function does not return: per-task metrics and filtering see only
    what it reports (a made-up correct=0 would mark every group uninformative)."""
    worker = custom_reward_worker(tiny_model_dir, tmp_path)
    returns = [{"score": 1.0, "accuracy": 1.0, "task": "matching"}, {"score": 0.25, "accuracy": 0.0, "task": "chart"}]
    outputs = score_batch(worker, rollout_batch(worker.input_tokenizer, custom_samples(*returns)))
    infos = [output["reward_extra_info"] for output in outputs]
    assert infos == returns
    assert [output["reward_score"] for output in outputs] == [1.0, 0.25]


def test_custom_reward_keys_of_its_own_must_come_with_every_sample(tiny_model_dir, tmp_path):
    worker = custom_reward_worker(tiny_model_dir, tmp_path)
    same = custom_samples({"score": 1.0, "acc": 1.0}, {"score": 0.0, "acc": 0.0})
    infos = [output["reward_extra_info"] for output in score_batch(worker, rollout_batch(worker.input_tokenizer, same))]
    assert [sorted(info) for info in infos] == [["acc", "score"]] * 2

    differing = custom_samples({"score": 1.0, "acc": 1.0}, {"score": 0.0})
    worker = custom_reward_worker(tiny_model_dir, tmp_path)
    data = rollout_batch(worker.input_tokenizer, differing)
    score_batch(worker, data[:1])
    with pytest.raises(ValueError, match=r"did not return key 'acc' for sample \(data_source='src', id='row-1'\)"):
        score_batch(worker, data[1:])


GENERATIVE_REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info, reward_router_address, reward_model_tokenizer):
    return {"score": 0.75, "router": reward_router_address, "judge_eos": reward_model_tokenizer.eos_token}
"""


def scored_beside_a_reward_model(tiny_model_dir, module) -> tuple[dict, RewardLoopWorker]:
    """One sample scored by the custom reward function of `module` in a reward worker of a run with a
    reward model (reward.reward_model.enable), which verl gives its router address."""
    config = reward_config(
        tiny_model_dir, "reward.reward_model.enable=True", f"reward.reward_model.model_path={tiny_model_dir}",
        f"reward.custom_reward_function.path={module}", "reward.custom_reward_function.name=compute_score",
        num_workers=1,
    )  # fmt: skip
    worker = RewardLoopWorker(config, reward_router_address="10.0.0.5:8000")
    [output] = score_batch(worker, rollout_batch(worker.input_tokenizer, custom_samples(None)))
    return output, worker


def test_a_custom_reward_reaches_the_reward_model_as_with_verls_own_managers(tiny_model_dir, tmp_path):
    """With reward.reward_model.enable, verl gives the reward managers the reward model's router address
    and tokenizer; a generative reward model's function needs both."""
    module = tmp_path / "judged_reward.py"
    module.write_text(GENERATIVE_REWARD)
    output, worker = scored_beside_a_reward_model(tiny_model_dir, module)
    assert output["reward_score"] == 0.75
    eos = worker.reward_model_tokenizer.eos_token
    assert output["reward_extra_info"] == {"score": 0.75, "router": "10.0.0.5:8000", "judge_eos": eos}


def test_a_custom_reward_without_the_reward_models_arguments_is_scored_beside_a_reward_model(tiny_model_dir, tmp_path):
    """A function written for rewards alone (a discriminative reward model scores beside it) takes neither."""
    module = tmp_path / "plain_reward.py"
    module.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info):\n    return 0.5\n")
    output, _ = scored_beside_a_reward_model(tiny_model_dir, module)
    assert output["reward_score"] == 0.5


@pytest.mark.parametrize("returned", [float("nan"), float("inf"), {"score": float("-inf")}])
def test_a_non_finite_custom_reward_names_the_sample_and_the_function(tiny_model_dir, tmp_path, returned):
    worker = custom_reward_worker(tiny_model_dir, tmp_path)
    data = rollout_batch(worker.input_tokenizer, custom_samples(returned))
    named = r"given_reward.py:compute_score for sample \(data_source='src', id='row-0'\) returned the non-finite"
    with pytest.raises(ValueError, match=named):
        score_batch(worker, data)


def test_an_iou_threshold_of_none_in_extra_info_keeps_the_configured_one(tiny_model_dir):
    """A parquet struct field is present in every row once one row sets it: None there means not set."""
    worker = reward_worker(tiny_model_dir, iou_threshold=0.5)
    box = SAMPLES[4]  # IoU 0.8
    samples = [box, (*box[:3], {**box[3], "iou_threshold": None}), (*box[:3], {**box[3], "iou_threshold": 0.9})]
    outputs = score_batch(worker, rollout_batch(worker.input_tokenizer, samples))
    assert [output["reward_extra_info"]["accuracy"] for output in outputs] == [1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("correct_threshold", "correct"),
    [({"correct_threshold": 0.9}, 0.0), ({"correct_threshold": 0.7}, 1.0),
     ({"correct_threshold.grounding": 0.9}, 0.0), ({"correct_threshold.grounding": 0.7}, 1.0)],
    ids=["0.9", "0.7", "grounding 0.9", "grounding 0.7"],
)
def test_the_correct_threshold_set_for_the_manager_decides_correct(tiny_model_dir, correct_threshold, correct):
    """A number or a per-task mapping: a box of IoU 0.8 is correct at threshold 0.7 and not at 0.9."""
    worker = reward_worker(tiny_model_dir, **correct_threshold)
    (output,) = score_batch(worker, rollout_batch(worker.input_tokenizer, [SAMPLES[4]]))
    info = output["reward_extra_info"]
    assert info["accuracy"] == pytest.approx(0.8) and info["correct"] == correct


def test_the_overlong_penalty_takes_from_the_score_of_responses_near_their_cap(tiny_model_dir, tmp_path):
    """verl's DAPO `overlong_buffer_cfg` on Mixed-Reward and on a custom function's score: with responses
    capped at 64 tokens and a buffer of 30, a response loses 1/30 of `penalty_factor` per token beyond 34."""
    cap, buffer = 64, 30
    overlong = [f"+reward.reward_kwargs.overlong_buffer_cfg.{key}={value}" for key, value in
                {"enable": True, "len": buffer, "penalty_factor": 0.5, "log": True}.items()]  # fmt: skip
    long_answer = THINK + " Counting the bars one by one, left to right." + "<answer>yes</answer>"
    samples = [SAMPLES[0], ("pope", long_answer, "yes", {"task": "matching"}), SAMPLES[2]]
    worker = reward_worker(tiny_model_dir, f"data.max_response_length={cap}", *overlong)
    data = rollout_batch(worker.input_tokenizer, samples, response_length=cap - 1)
    lengths = data.batch["attention_mask"][:, 8:].sum(dim=1).tolist()
    assert lengths[0] <= cap - buffer < lengths[1] <= cap, "one response in the buffer, one before it"

    outputs = score_batch(worker, data)

    for output, sample, length in zip(outputs, samples, lengths):
        penalty = -0.5 * max(length - (cap - buffer), 0) / buffer
        info = output["reward_extra_info"]
        assert output["reward_score"] == pytest.approx(expected_result(sample, tiny_model_dir)["score"] + penalty)
        assert info["score"] == output["reward_score"] and info["overlong_reward"] == pytest.approx(penalty)
        assert info["overlong"] == float(penalty < 0)
    assert outputs[1]["reward_extra_info"]["accuracy"] == 1.0, "the answer is still right; only the score pays"
    metrics = per_task_metrics([output["reward_extra_info"] for output in outputs])
    assert metrics["mixed_r1/matching/overlong/mean"] == 0.5 and metrics["mixed_r1/chart/overlong/mean"] == 0.0
    penalized = outputs[1]["reward_extra_info"]["overlong_reward"]
    assert metrics["mixed_r1/matching/overlong_reward/mean"] == pytest.approx(penalized / 2)

    custom = custom_reward_worker(tiny_model_dir, tmp_path, f"data.max_response_length={cap}", *overlong)
    data = rollout_batch(custom.input_tokenizer, [(*samples[1][:3], {"returns": 1.0})], response_length=cap - 1)
    (output,) = score_batch(custom, data)
    assert output["reward_score"] == pytest.approx(1.0 - 0.5 * (lengths[1] - (cap - buffer)) / buffer)


def test_the_overlong_penalty_counts_from_the_cap_max_model_len_leaves_after_the_prompt(tiny_model_dir):
    """With max_model_len 48, an 8-token prompt leaves its response 40 of the 64 tokens of response_length:
    a response cut there loses the whole penalty_factor, and one in the buffer before it a share."""
    buffer = 30
    overlong = [f"+reward.reward_kwargs.overlong_buffer_cfg.{key}={value}" for key, value in
                {"enable": True, "len": buffer, "penalty_factor": 0.5, "log": True}.items()]  # fmt: skip
    limits = ["data.max_response_length=64", "actor_rollout_ref.rollout.max_model_len=48"]
    worker = reward_worker(tiny_model_dir, *limits, *overlong)
    rollout = worker.config.actor_rollout_ref.rollout
    long_answer = THINK + " Counting the bars one by one, left to right, and again." * 3 + "<answer>yes</answer>"
    samples = [("pope", long_answer, "yes", {"task": "matching"}), SAMPLES[0]]
    data = rollout_batch(worker.input_tokenizer, samples, response_length=39)
    mask = data.batch["attention_mask"]
    prompts, lengths = mask[:, :8].sum(dim=1).tolist(), mask[:, 8:].sum(dim=1).tolist()
    caps = response_caps(prompts, {key: rollout[key] for key in ("prompt_length", "response_length", "max_model_len")})
    assert caps == [40, 40] and lengths[0] == 40 and 40 - buffer < lengths[1] < 40, "one cut at its cap, one near it"

    outputs = score_batch(worker, data)

    penalties = [output["reward_extra_info"]["overlong_reward"] for output in outputs]
    assert penalties == [pytest.approx(-0.5 * max(n - (cap - buffer), 0) / buffer) for n, cap in zip(lengths, caps)]
    assert penalties[0] == pytest.approx(-0.5)


def test_a_reward_option_the_manager_does_not_know_stops_the_worker_naming_it(tiny_model_dir):
    with pytest.raises(ValueError, match=r"reward.reward_kwargs.max_resp_len is not an option of the mixed_r1 reward"):
        reward_worker(tiny_model_dir, max_resp_len=512)
    with pytest.raises(ValueError, match=r"reward.reward_kwargs.correct_threshold: 'grouding' is not a task"):
        reward_worker(tiny_model_dir, **{"correct_threshold.grouding": 0.5})
    with pytest.raises(ValueError, match=r"overlong_buffer_cfg.len must be a whole number of tokens from 1 to the "):
        reward_worker(tiny_model_dir, "data.max_response_length=64", **{"overlong_buffer_cfg.enable": True,
                                                                          "overlong_buffer_cfg.len": 128})

"""The `mixed_r1` reward manager through verl's real reward loop on a local Ray cluster."""

import subprocess
import sys

import numpy as np
import pytest
import ray
import torch
from hydra import compose, initialize_config_module
from tensordict import TensorDict
from transformers import AutoTokenizer

from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopManager
from mixed_r1_verl.rewards import compute_score

THINK = "<think>Looking at the image.</think>"
SAMPLES = [
    # data_source, response, ground truth, extra_info
    ("pope", THINK + "<answer>yes</answer>", "yes", {"task": "matching"}),
    ("mmbench", THINK + "<answer>B or C</answer>", "B", {"task": "matching", "options": ["cat", "dog", "bird"]}),
    ("chartqa", "<answer>45%</answer>", "46", {"task": "chart"}),
    ("chartqa", THINK + "<answer>12</answer>", "45", {"task": "chart"}),
    ("refcoco", THINK + "<answer>[10, 10, 50, 50]</answer>", "[10, 10, 60, 50]",
     {"task": "grounding", "box_frame": "abs", "frame_size": [100, 100]}),
    ("refcoco", THINK + "<answer>[0, 0, 1000, 1000]</answer>", "[100, 100, 200, 200]",
     {"task": "grounding", "box_frame": "norm1000"}),
    ("caption", THINK + "<answer>A man is riding a red bicycle.</answer>", "A man is riding a red bicycle.",
     {"task": "open_ended"}),
    ("caption", THINK + "<answer>a dog</answer>", "A person rides a bike on the street.", {"task": "open_ended"}),
    ("somewhere", THINK + "<answer>1</answer>", "1", {}),
]


def reward_config(model_dir, **reward_kwargs):
    overrides = [
        f"actor_rollout_ref.model.path={model_dir}",
        "reward.reward_manager.name=mixed_r1",
        "reward.num_workers=2",
    ] + [f"+reward.reward_kwargs.{key}={value}" for key, value in reward_kwargs.items()]
    with initialize_config_module("verl.trainer.config", version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def rollout_batch(tokenizer, samples, prompt_length=8, response_length=48) -> DataProto:
    """Left-padded prompts and right-padded responses, laid out as verl's rollout returns them."""
    pad = tokenizer.pad_token_id
    prompts, responses, masks = [], [], []
    for _, response, _, _ in samples:
        prompt_ids = tokenizer("<|im_start|>user\nWhat is shown?<|im_end|>", add_special_tokens=False)["input_ids"][-prompt_length:]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"][:response_length]
        response_ids.append(tokenizer.eos_token_id)
        prompt_pad = prompt_length - len(prompt_ids)
        response_pad = response_length + 1 - len(response_ids)
        prompts.append([pad] * prompt_pad + prompt_ids)
        responses.append(response_ids + [pad] * response_pad)
        masks.append([0] * prompt_pad + [1] * len(prompt_ids) + [1] * len(response_ids) + [0] * response_pad)
    batch = TensorDict(
        {
            "prompts": torch.tensor(prompts),
            "responses": torch.tensor(responses),
            "attention_mask": torch.tensor(masks),
        },
        batch_size=len(samples),
    )
    non_tensor = {
        "data_source": np.array([s[0] for s in samples], dtype=object),
        "reward_model": np.array([{"style": "rule", "ground_truth": s[2]} for s in samples], dtype=object),
        "extra_info": np.array([s[3] for s in samples], dtype=object),
    }
    return DataProto(batch=batch, non_tensor_batch=non_tensor)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_plugin_registers_in_a_fresh_process():
    code = (
        "import verl\n"
        "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "print(get_reward_manager_cls('mixed_r1').__name__, get_trainer_cls('mixed_r1_sync').__name__)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["MixedR1RewardManager", "MixedR1SyncTrainer"]


def test_all_four_tasks_in_one_batch(local_ray, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = rollout_batch(tokenizer, SAMPLES)
    manager = RewardLoopManager(reward_config(tiny_model_dir))
    output = manager.compute_rm_score(data)

    assert output.meta_info["reward_extra_keys"] == ["score", "accuracy", "format", "error", "task"]
    rm_scores = output.batch["rm_scores"]
    last = data.batch["attention_mask"][:, 8:].sum(dim=1) - 1
    for row, (data_source, response, ground_truth, extra_info) in enumerate(SAMPLES):
        expected = compute_score(data_source, response, ground_truth, extra_info, embedding_model=str(tiny_model_dir))
        for key in ("score", "accuracy", "format", "error", "task"):
            value = output.non_tensor_batch[key][row]
            assert value == (pytest.approx(expected[key], abs=1e-5) if key != "task" else expected[key]), (row, key)
        assert rm_scores[row, last[row]].item() == pytest.approx(expected["score"], abs=1e-5)
        assert rm_scores[row].abs().sum().item() == pytest.approx(abs(expected["score"]), abs=1e-5)

    tasks = list(output.non_tensor_batch["task"])
    assert tasks == ["matching", "matching", "chart", "chart", "grounding", "grounding", "open_ended", "open_ended", "unknown"]
    accuracy = output.non_tensor_batch["accuracy"]
    assert list(accuracy[[0, 1, 2, 3]]) == [1.0, 0.0, 1.0, 0.0]
    assert accuracy[4] == pytest.approx(0.8) and accuracy[5] == pytest.approx(0.01)
    assert accuracy[6] == pytest.approx(1.0) and 0.0 < accuracy[7] < 1.0
    assert list(output.non_tensor_batch["error"]) == [0.0] * 8 + [1.0]


def test_reward_kwargs_reach_the_manager(local_ray, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = [SAMPLES[0], SAMPLES[4], SAMPLES[-1]]
    config = reward_config(tiny_model_dir, format_weight=0.5, iou_threshold=0.75, **{"task_map.somewhere": "chart"})
    output = RewardLoopManager(config).compute_rm_score(rollout_batch(tokenizer, samples))
    assert list(output.non_tensor_batch["task"]) == ["matching", "grounding", "chart"]
    assert list(output.non_tensor_batch["score"]) == [1.0, 1.0, 1.0]

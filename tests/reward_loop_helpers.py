"""Reward-loop inputs shared by the tests that drive the `mixed_r1` reward manager through verl."""

import numpy as np
import torch
from hydra import compose, initialize_config_module
from tensordict import TensorDict

from verl import DataProto

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


def reward_config(model, *overrides, num_workers=2, **reward_kwargs):
    """verl's ppo_trainer config with the `mixed_r1` reward manager; `model` is a directory or a hub id."""
    overrides = [
        f"actor_rollout_ref.model.path={model}",
        "reward.reward_manager.name=mixed_r1",
        f"reward.num_workers={num_workers}",
        *overrides,
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

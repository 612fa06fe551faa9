"""The model inputs of the CPU rollout server (verl_on_cpu): what transformers' Qwen2.5-VL needs to
generate from the prompt token ids and images verl's agent loop hands a rollout server."""

import torch


def rollout_model_inputs(processor, prompt_ids: list[int], images=None) -> dict:
    """Token ids, their multimodal token types and the image features. transformers computes the
    M-RoPE positions from the token types; without them every image pad gets a text position and a
    trained model generates from positions it never saw."""
    inputs = {
        "input_ids": torch.tensor([prompt_ids]),
        "attention_mask": torch.ones(1, len(prompt_ids), dtype=torch.long),
        "mm_token_type_ids": torch.tensor(processor.create_mm_token_type_ids([prompt_ids])),
    }
    if images:
        inputs.update(processor.image_processor(images=images, return_tensors="pt"))
    return inputs

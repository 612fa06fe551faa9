"""The model inputs of the CPU rollout server (verl_on_cpu): what transformers' Qwen2.5-VL or InternVL
needs to generate from the prompt token ids and images verl's agent loop hands a rollout server."""

import torch

from mixed_r1_verl.data.processor import Qwen25VLImageTextProcessor


def rollout_model_inputs(processor, prompt_ids: list[int], images=None) -> dict:
    """Token ids, Qwen2.5-VL's multimodal token types and the image features. transformers computes
    Qwen2.5-VL's M-RoPE positions from the token types; without them every image pad gets a text
    position and a trained model generates from positions it never saw. InternVL's positions are 1-D."""
    inputs = {
        "input_ids": torch.tensor([prompt_ids]),
        "attention_mask": torch.ones(1, len(prompt_ids), dtype=torch.long),
    }
    if isinstance(processor, Qwen25VLImageTextProcessor):
        inputs["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids([prompt_ids]))
    if images:
        features = processor.image_processor(images=images, return_tensors="pt")
        features.pop("num_patches", None)  # InternVL's tiles per image, which its processor spent on the prompt
        inputs.update(features)
    return inputs

"""The model inputs of the CPU rollout server (verl_on_cpu): what transformers' Qwen2.5-VL, Qwen3-VL or
InternVL needs to generate from the prompt token ids and images verl's agent loop hands a rollout server."""

import torch

from mixed_r1_verl.data.processor import processor_model_family


def rollout_model_inputs(processor, prompt_ids: list[int], images=None) -> dict:
    """Token ids, the Qwen-VL models' multimodal token types and the image features. transformers computes
    their M-RoPE positions from the token types; without them every image pad gets a text position and a
    trained model generates from positions it never saw. InternVL's positions are 1-D."""
    inputs = {
        "input_ids": torch.tensor([prompt_ids]),
        "attention_mask": torch.ones(1, len(prompt_ids), dtype=torch.long),
    }
    if processor_model_family(processor) in ("qwen2_5_vl", "qwen3_vl"):
        inputs["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids([prompt_ids]))
    if images:
        features = processor.image_processor(images=images, return_tensors="pt")
        features.pop("num_patches", None)  # InternVL's tiles per image, which its processor spent on the prompt
        inputs.update(features)
    return inputs

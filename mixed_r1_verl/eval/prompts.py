"""Chat prompts of verl's layout (``<image>`` placeholders in text) rendered for a VLM's chat template."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .records import IMAGE_PLACEHOLDER, EvalRecord

IMAGE_PAD = "<|image_pad|>"


def structured_message(message: Mapping) -> dict:
    """``"<image>\\nWhat is..."`` -> ``[{"type": "image"}, {"type": "text", "text": "\\nWhat is..."}]``."""
    content = message.get("content", "")
    if not isinstance(content, str) or IMAGE_PLACEHOLDER not in content:
        return dict(message)
    parts: list[dict] = []
    for position, text in enumerate(content.split(IMAGE_PLACEHOLDER)):
        if position > 0:
            parts.append({"type": "image"})
        if text:
            parts.append({"type": "text", "text": text})
    return {**message, "content": parts}


def render_prompt(tokenizer, record: EvalRecord) -> str:
    """The model's chat-template text for the record, one vision block per image, ready to generate."""
    messages = [structured_message(message) for message in record.prompt]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def expand_image_pads(text: str, image_grid_thw: torch.Tensor, merge_size: int) -> str:
    """Qwen2-VL family: each image's single pad token becomes one pad per merged vision patch."""
    pieces = text.split(IMAGE_PAD)
    if len(pieces) - 1 != len(image_grid_thw):
        raise ValueError(f"prompt has {len(pieces) - 1} image pad(s) for {len(image_grid_thw)} image(s)")
    expanded = [pieces[0]]
    for grid, piece in zip(image_grid_thw, pieces[1:], strict=True):
        expanded.append(IMAGE_PAD * (int(grid.prod()) // merge_size**2) + piece)
    return "".join(expanded)

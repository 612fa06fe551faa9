"""Prompt rendering of verl-layout chat prompts for the Qwen2.5-VL chat template and its image pads."""

import torch
from transformers import AutoTokenizer

from mixed_r1_verl.eval.prompts import IMAGE_PAD, expand_image_pads, render_prompt, structured_message
from mixed_r1_verl.eval.records import EvalRecord


def test_placeholders_become_image_parts_in_order():
    message = {"role": "user", "content": "<image>left<image> right?"}
    assert structured_message(message)["content"] == [
        {"type": "image"},
        {"type": "text", "text": "left"},
        {"type": "image"},
        {"type": "text", "text": " right?"},
    ]
    assert structured_message({"role": "system", "content": "plain"}) == {"role": "system", "content": "plain"}


def test_rendered_prompt_has_one_vision_block_per_image_and_pads_expand_per_merged_patch(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    record = EvalRecord("r1", "chartqa", "chart", [{"role": "user", "content": "<image><image>Compare."}], "1", {})

    text = render_prompt(tokenizer, record)

    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert text.endswith("<|im_start|>assistant\n")
    grid = torch.tensor([[1, 4, 6], [1, 2, 2]])
    expanded = expand_image_pads(text, grid, merge_size=2)
    assert expanded.count(IMAGE_PAD) == 6 + 1
    assert expanded.index("Compare.") > expanded.rindex(IMAGE_PAD)

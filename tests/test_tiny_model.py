import json

import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

from mixed_r1_verl.data.processor import load_image_text_processor

from mixed_r1_verl.models.tiny_qwen25vl import SIZES, build_tiny_qwen25vl, resolve_size


def head_widths(model_dir) -> tuple[float, float]:
    config = json.loads((model_dir / "config.json").read_text())
    text, vision = config.get("text_config", config), config["vision_config"]
    return text["hidden_size"] / text["num_attention_heads"], vision["hidden_size"] / vision["num_heads"]


def test_default_heads_are_at_least_32_wide_in_text_and_vision(tiny_model_dir):
    text, vision = head_widths(tiny_model_dir)
    assert text >= 32 and vision >= 32
    for size in SIZES.values():
        assert size.hidden_size / size.num_attention_heads >= 32
        assert size.vision_hidden_size / size.vision_num_heads >= 32


def test_size_overrides_reach_the_built_model_and_it_runs_on_an_image(tmp_path):
    model_dir = build_tiny_qwen25vl(tmp_path, size=resolve_size("test", num_hidden_layers=3, vision_depth=5))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir)
    assert model.config.text_config.num_hidden_layers == 3
    assert model.config.vision_config.depth == 5 and model.config.vision_config.fullatt_block_indexes == [3, 4]
    processor = load_image_text_processor(model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.new("RGB", (112, 84), "red")], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()


def test_bad_sizes_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="text head width .* multiple of 16"):
        resolve_size("test", hidden_size=72)
    with pytest.raises(ValueError, match="unknown size fields"):
        resolve_size("test", layers=3)

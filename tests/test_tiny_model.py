import json

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    InternVLForConditionalGeneration,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)

from mixed_r1_verl.data.processor import InternVLImageTextProcessor, Qwen3VLImageTextProcessor, load_image_text_processor
from mixed_r1_verl.models import tiny_qwen25vl
from mixed_r1_verl.models.tiny_internvl import IMAGE_SEQ_LENGTH
from mixed_r1_verl.models.tiny_qwen25vl import SIZES, build_tiny_qwen25vl, kv_cache_bytes_per_token, resolve_size

IMAGE_QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]


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
    text = processor.apply_chat_template(IMAGE_QUESTION, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.new("RGB", (112, 84), "red")], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()


def test_bad_sizes_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="text head width .* multiple of 16"):
        resolve_size("test", hidden_size=72)
    with pytest.raises(ValueError, match="unknown size fields"):
        resolve_size("test", layers=3)


def test_the_tiny_internvl_loads_and_sees_each_image_as_tiles_of_its_tokens(tiny_internvl_dir):
    processor = load_image_text_processor(tiny_internvl_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_internvl_dir, dtype=torch.float32).eval()
    assert isinstance(model, InternVLForConditionalGeneration) and isinstance(processor, InternVLImageTextProcessor)
    text = processor.apply_chat_template(IMAGE_QUESTION, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.new("RGB", (140, 84), "red")], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    tiles = inputs["pixel_values"].shape[0]
    assert tiles > 1, "a wide image is cut into tiles plus a thumbnail"
    assert ids.count(processor.image_token_id) == tiles * IMAGE_SEQ_LENGTH
    assert ids.count(processor.start_image_token_id) == ids.count(processor.end_image_token_id) == 1
    with torch.no_grad():
        logits = model(**inputs).logits
        other = model(**processor(text=[text], images=[Image.new("RGB", (140, 84), "blue")], return_tensors="pt")).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    assert not torch.equal(logits, other), "the image reaches the model"


def test_the_tiny_qwen3vl_loads_and_sees_each_32_pixel_square_as_one_token(tiny_qwen3vl_dir):
    processor = load_image_text_processor(tiny_qwen3vl_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3vl_dir, dtype=torch.float32).eval()
    assert isinstance(model, Qwen3VLForConditionalGeneration) and isinstance(processor, Qwen3VLImageTextProcessor)
    text = processor.apply_chat_template(IMAGE_QUESTION, add_generation_prompt=True, tokenize=False)
    # The released Instruct models' layout: no default system turn.
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")
    inputs = processor(text=[text], images=[Image.new("RGB", (192, 96), "red")], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 96 // 16, 192 // 16]]
    assert inputs["input_ids"][0].tolist().count(processor.image_token_id) == (192 // 32) * (96 // 32)
    with torch.no_grad():
        logits = model(**inputs).logits
        other = model(**processor(text=[text], images=[Image.new("RGB", (192, 96), "blue")], return_tensors="pt")).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    assert not torch.equal(logits, other), "the image reaches the model"


@pytest.mark.parametrize("model", ["qwen25vl", "qwen3vl", "internvl"])
def test_kv_cache_bytes_per_token_is_what_the_model_caches_per_token(
    model, tiny_model_dir, tiny_qwen3vl_dir, tiny_internvl_dir
):
    model_dir = {"qwen25vl": tiny_model_dir, "qwen3vl": tiny_qwen3vl_dir, "internvl": tiny_internvl_dir}[model]
    loaded = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.bfloat16)
    tokens = 5
    with torch.no_grad():
        cache = loaded(input_ids=torch.arange(1, tokens + 1)[None], use_cache=True).past_key_values
    cached_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert kv_cache_bytes_per_token(model_dir) == cached_bytes / tokens


def test_an_interrupted_build_leaves_no_config_json_and_the_next_build_completes(tmp_path, monkeypatch):
    """config.json marks a built model (the learning proof and the smoke recipe skip the build where it
    exists), so it comes only once every other file is written."""
    model_dir = tmp_path / "model"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_qwen25vl, "write_processor_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_qwen25vl(model_dir)
    assert not (model_dir / "config.json").exists()
    monkeypatch.undo()
    assert build_tiny_qwen25vl(model_dir) == model_dir
    assert [path.name for path in tmp_path.iterdir()] == ["model"]
    processor = load_image_text_processor(model_dir)
    assert processor.apply_chat_template(IMAGE_QUESTION, add_generation_prompt=True, tokenize=False)
    assert Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).config.text_config.num_hidden_layers >= 1

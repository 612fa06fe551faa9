"""InternVL in verl: the adapter's fixes for verl's InternVL gaps (mixed_r1_verl/verl_adapter/internvl.py),
on the tiny InternVL. The whole path through verl's trainer is
tests/test_train_on_cpu.py's InternVL run."""

import numpy as np
import pytest
import torch
from PIL import Image

from mixed_r1_verl.data.processor import load_image_text_processor
from mixed_r1_verl.verl_adapter.internvl import collapse_image_spans, multimodal_processor_inputs, vllm_prompt_ids

QUESTION = "How many bars are there?"


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


def prompt_text(processor, images: int) -> str:
    content = [{"type": "image"}] * images + [{"type": "text", "text": QUESTION}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)


@pytest.fixture(scope="module")
def processor(tiny_internvl_dir):
    return load_image_text_processor(tiny_internvl_dir)


def test_vllm_gets_one_placeholder_per_image_which_its_expansion_turns_back_into_the_trained_prompt(processor):
    images = [noise_image(140, 84, 0), noise_image(56, 112, 2)]
    text = prompt_text(processor, 2)
    inputs = processor(text=[text], images=images, return_tensors="np")
    expanded = inputs["input_ids"][0].tolist()
    collapsed = vllm_prompt_ids(expanded, processor)
    assert collapsed == processor.tokenizer(text)["input_ids"], "the chat template's prompt, one <IMG_CONTEXT> per image"
    # vLLM's InternVL prompt update: each <IMG_CONTEXT> becomes <img>, tiles x image_seq_length of it, </img>.
    tiles = iter(processor.image_processor(images=images)["num_patches"])
    reexpanded = []
    for token in collapsed:
        if token == processor.image_token_id:
            span = [processor.image_token_id] * (next(tiles) * processor.image_seq_length)
            reexpanded += [processor.start_image_token_id, *span, processor.end_image_token_id]
        else:
            reexpanded.append(token)
    assert reexpanded == expanded


def test_spans_without_their_end_or_tiles_are_kept_as_they_are(processor):
    start, end, context = processor.start_image_token_id, processor.end_image_token_id, processor.image_token_id
    assert collapse_image_spans([7, start, context, context], processor) == [7, start, context, context]
    assert collapse_image_spans([start, end, 7], processor) == [start, end, 7]
    assert collapse_image_spans([start, context, end, start, context, context, end], processor) == [context, context]


def test_qwen_prompts_reach_vllm_as_verl_sends_them(tiny_model_dir):
    from verl.workers.rollout.utils import qwen2_5_vl_dedup_image_tokens

    qwen = load_image_text_processor(tiny_model_dir)
    inputs = qwen(text=[prompt_text(qwen, 1)], images=[noise_image(112, 84, 0)], return_tensors="np")
    ids = inputs["input_ids"][0].tolist()
    assert vllm_prompt_ids(ids, qwen) == qwen2_5_vl_dedup_image_tokens(ids, qwen)
    assert vllm_prompt_ids(ids, qwen).count(qwen.image_token_id) == 1


def test_image_features_for_a_prompt_decoded_without_its_placeholders_equal_the_prompts_own(processor):
    """verl computes a rollout's image features from the prompt decoded with special tokens skipped."""
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    assert build_multimodal_processor_inputs is multimodal_processor_inputs, "the adapter replaced verl's"
    images = [noise_image(140, 84, 0), noise_image(56, 112, 2)]
    full = processor(text=[prompt_text(processor, 2)], images=images, return_tensors="pt")
    decoded = processor.tokenizer.decode(full["input_ids"][0], skip_special_tokens=True)
    assert processor.image_token not in decoded
    with pytest.raises(ValueError, match="does not match the number of images"):
        processor(text=[decoded], images=images, return_tensors="pt")
    features = build_multimodal_processor_inputs(processor, text=[decoded], images=images)
    assert torch.equal(features["pixel_values"], full["pixel_values"])
    with pytest.raises(ValueError, match="does not match the number of images"):
        build_multimodal_processor_inputs(processor, text=[prompt_text(processor, 1)], images=images)

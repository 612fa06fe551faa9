"""InternVL (Hugging Face format, `InternVLForConditionalGeneration`) in verl 0.9.1, registered through
the `verl.plugins` entry point so that it holds in every process verl starts.

1. verl builds a model's processor with `verl.utils.hf_processor`, which accepts only the processor
   classes it binds M-RoPE for (Qwen2/2.5/3-VL, GLM-4V, Mllama, Gemma 4). For any other class it warns
   and returns None, and verl then trains on the prompts' text alone. InternVL's positions are 1-D,
   so its processor needs nothing bound: it is accepted as it is.
2. verl's agent loop builds prompt ids with each image expanded to `<img>`, its tile tokens
   (`<IMG_CONTEXT>` x tiles x image_seq_length) and `</img>`, and hands them to vLLM with the images.
   vLLM replaces every `<IMG_CONTEXT>` of a token prompt by such a span itself, so it would expand the
   image twice (verl collapses the spans for Qwen2.5-VL only). The ids vLLM receives have each span
   collapsed back to one `<IMG_CONTEXT>`; the trainer keeps the expanded ids.
3. verl computes a rollout's image features from its prompt decoded with special tokens skipped,
   which removes InternVL's image placeholders, and InternVL's processor then refuses the prompt: the
   placeholders are put back for that call (`multimodal_processor_inputs`).
"""

from __future__ import annotations

import os
import sys

import verl.utils.tokenizer.tokenizer
import verl.workers.rollout.utils
from transformers import AutoConfig, AutoProcessor, InternVLProcessor

INTERNVL_MODEL_TYPE = "internvl"


def is_internvl(name_or_path: str | os.PathLike, trust_remote_code: bool = False) -> bool:
    """Whether a checkpoint (directory or hub id) is an InternVL; False when its config cannot be read,
    which verl's `hf_processor` then reports."""
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception:
        return False
    return config.model_type == INTERNVL_MODEL_TYPE


def collapse_image_spans(prompt_ids: list[int], processor: InternVLProcessor) -> list[int]:
    """`prompt_ids` with every `<img> <IMG_CONTEXT>... </img>` span replaced by one `<IMG_CONTEXT>`."""
    start, end, context = processor.start_image_token_id, processor.end_image_token_id, processor.image_token_id
    collapsed, i = [], 0
    while i < len(prompt_ids):
        if prompt_ids[i] == start:
            j = i + 1
            while j < len(prompt_ids) and prompt_ids[j] == context:
                j += 1
            if j > i + 1 and j < len(prompt_ids) and prompt_ids[j] == end:
                collapsed.append(context)
                i = j + 1
                continue
        collapsed.append(prompt_ids[i])
        i += 1
    return collapsed


_verl_hf_processor = verl.utils.tokenizer.tokenizer.hf_processor
_verl_multimodal_processor_inputs = verl.utils.tokenizer.tokenizer.build_multimodal_processor_inputs
_verl_vllm_prompt_ids = verl.workers.rollout.utils.qwen2_5_vl_dedup_image_tokens


def multimodal_processor_inputs(processor, *, text, images=None, **kwargs):
    """verl's `build_multimodal_processor_inputs`; for InternVL, one text without image placeholders
    gets one placeholder per image in front. verl asks for a rollout's image features with its prompt
    decoded with special tokens skipped, InternVL's placeholders among them, and keeps only the
    features, which the text does not change; InternVL's processor would refuse the text."""
    if isinstance(processor, InternVLProcessor) and images and isinstance(text, list) and len(text) == 1:
        if processor.image_token not in text[0]:
            count = len(images) if isinstance(images, (list, tuple)) else 1
            text = [processor.image_token * count + text[0]]
    return _verl_multimodal_processor_inputs(processor, text=text, images=images, **kwargs)


def hf_processor(name_or_path, **kwargs):
    """verl's `hf_processor`; for an InternVL checkpoint, its processor (which verl would refuse)."""
    if not is_internvl(name_or_path, kwargs.get("trust_remote_code", False)):
        return _verl_hf_processor(name_or_path, **kwargs)
    processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)
    processor.config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    return processor


def vllm_prompt_ids(prompt_ids: list[int], processor) -> list[int]:
    """The prompt ids verl hands vLLM: InternVL's image spans collapsed, Qwen2.5-VL's as verl does."""
    if isinstance(processor, InternVLProcessor):
        return collapse_image_spans(list(prompt_ids), processor)
    return _verl_vllm_prompt_ids(prompt_ids, processor)


def replace_in_verl(original, replacement) -> None:
    """`replacement` wherever a verl module imported so far holds `original`; modules imported later
    import it from the patched ones."""
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "verl" and module is not None:
            for attribute, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attribute, replacement)


replace_in_verl(_verl_hf_processor, hf_processor)
replace_in_verl(_verl_multimodal_processor_inputs, multimodal_processor_inputs)
replace_in_verl(_verl_vllm_prompt_ids, vllm_prompt_ids)

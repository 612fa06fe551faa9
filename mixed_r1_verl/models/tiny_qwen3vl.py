"""A tiny Qwen3-VL built offline: random weights, the tiny Qwen2.5-VL's trained BPE tokenizer (Qwen3-VL
keeps Qwen2.5-VL's special tokens), the real Qwen3-VL processor (16-pixel patches, so images resize to
multiples of 32) and a chat template in the released Instruct models' layout, which adds no default
system turn. Its text model is Qwen3's (query/key norms, interleaved M-RoPE), its vision encoder feeds
DeepStack features into the first text layer, as the released models do into the first three.

The smoke recipe trains it on CPU-sized prompts (`recipe=smoke_qwen3vl`).

    python -m mixed_r1_verl.models.tiny_qwen3vl OUTPUT_DIR
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mixed_r1_verl.data.frames import MODEL_FAMILIES, SPATIAL_MERGE_SIZE
from mixed_r1_verl.models.tiny_qwen25vl import (
    SIZES,
    chatml_template,
    move_built_files,
    qwen2_text_config,
    qwen_vision_config,
    qwen_vision_token_ids,
    save_random_model,
    seeded_build_main,
    write_processor_files,
    write_tokenizer,
)

PATCH_SIZE = MODEL_FAMILIES["qwen3_vl"].patch_size
TOKEN_SIDE = MODEL_FAMILIES["qwen3_vl"].resize_factor
# A few to 256 image tokens of 32x32 pixels each: CPU-sized prompts.
MIN_PIXELS = 4 * TOKEN_SIDE**2
MAX_PIXELS = 256 * TOKEN_SIDE**2
# The vision encoder's learned position grid (48 x 48 in the released models), interpolated to each image.
NUM_POSITION_EMBEDDINGS = 16 * 16

CHAT_TEMPLATE = chatml_template(
    "<|vision_start|><|image_pad|><|vision_end|>",
    "<|vision_start|><|video_pad|><|vision_end|>",
    default_system=None,
)


def build_tiny_qwen3vl(output_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a loadable tiny Qwen3-VL (config, safetensors weights, tokenizer, processor) of the tiny
    Qwen2.5-VL's `test` size to `output_dir` and return its path. Deterministic for a seed. The files
    are written beside it and moved in once all are written, config.json last."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    size = SIZES["test"]
    output_dir = Path(output_dir)
    built = output_dir.with_name(f".{output_dir.name}.partial")
    shutil.rmtree(built, ignore_errors=True)
    built.mkdir(parents=True)
    tokenizer, special_id = write_tokenizer(built, size.vocab_size, chat_template=CHAT_TEMPLATE)
    head_dim = size.hidden_size // size.num_attention_heads
    # Interleaved M-RoPE: (temporal, height, width) sections of half the head width, as 24:20:20 of 64.
    height_width = head_dim // 2 * 5 // 16
    config = Qwen3VLConfig(
        text_config=dict(
            qwen2_text_config(size, len(tokenizer), special_id),
            head_dim=head_dim,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [head_dim // 2 - 2 * height_width, height_width, height_width],
                "mrope_interleaved": True,
            },
        ),
        vision_config=dict(
            qwen_vision_config(size, patch_size=PATCH_SIZE),
            num_position_embeddings=NUM_POSITION_EMBEDDINGS,
            deepstack_visual_indexes=[0],
        ),
        **qwen_vision_token_ids(special_id),
        tie_word_embeddings=False,
    )
    save_random_model(Qwen3VLForConditionalGeneration, config, built, special_id, seed)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE,
        merge_size=SPATIAL_MERGE_SIZE,
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    video_settings = {
        "video_processor_type": "Qwen3VLVideoProcessor",
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": 2,
        "merge_size": SPATIAL_MERGE_SIZE,
    }
    write_processor_files(
        built, image_processor, video_settings, {"processor_class": "Qwen3VLProcessor"}, CHAT_TEMPLATE
    )
    move_built_files(built, output_dir)
    return output_dir


def main() -> None:
    seeded_build_main(build_tiny_qwen3vl, __doc__)


if __name__ == "__main__":
    main()

"""A tiny InternVL in the Hugging Face format (`InternVLForConditionalGeneration`, the layout of
`OpenGVLab/InternVL3-*-hf`) built offline: random weights, the tiny Qwen2.5-VL's trained BPE tokenizer
with InternVL's image tokens, the real InternVL processor (GOT-OCR2 tiling: an image becomes up to
`max_patches` tiles plus a thumbnail) and a chat template in InternVL3's ChatML layout, where each
image is one `<IMG_CONTEXT>` the processor expands to `<img>`, the tile tokens and `</img>`.

Its tiles are 56 pixels wide, not 448, so that an image costs a few tokens per tile (4 here, 256 in
InternVL3): the smoke recipe trains it on CPU-sized prompts (`mixed_r1.smoke.model_family=internvl`).

    python -m mixed_r1_verl.models.tiny_internvl OUTPUT_DIR
"""

from __future__ import annotations

import os
from pathlib import Path

from mixed_r1_verl.models.tiny_qwen25vl import (
    SIZES,
    SPECIAL_TOKENS,
    chatml_template,
    qwen2_text_config,
    save_random_model,
    seeded_build_main,
    write_processor_files,
    write_tokenizer,
)

TILE_SIZE = 56
PATCH_SIZE = 14
DOWNSAMPLE_RATIO = 0.5
IMAGE_SEQ_LENGTH = int((TILE_SIZE // PATCH_SIZE) ** 2 * DOWNSAMPLE_RATIO**2)
MAX_PATCHES = 6

IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

# As transformers writes InternVL3-hf's: no default system turn.
CHAT_TEMPLATE = chatml_template("<IMG_CONTEXT>\n", "<video>\n", default_system=None)


def build_tiny_internvl(output_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a loadable tiny InternVL (config, safetensors weights, tokenizer, image processor,
    processor settings, chat template) to `output_dir` and return its path. Deterministic for a seed.
    Its language model and vision encoder have the tiny Qwen2.5-VL's `test` size."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    size = SIZES["test"]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # The image tokens are named attributes of the tokenizer, which InternVLProcessor reads.
    tokenizer, special_id = write_tokenizer(
        output_dir, size.vocab_size, SPECIAL_TOKENS + list(IMAGE_TOKENS.values()), CHAT_TEMPLATE, **IMAGE_TOKENS
    )
    config = InternVLConfig(
        text_config=dict(qwen2_text_config(size, len(tokenizer), special_id), model_type="qwen2"),
        vision_config=dict(
            hidden_size=size.vision_hidden_size,
            intermediate_size=size.vision_intermediate_size,
            num_hidden_layers=size.vision_depth,
            num_attention_heads=size.vision_num_heads,
            image_size=[TILE_SIZE, TILE_SIZE],
            patch_size=[PATCH_SIZE, PATCH_SIZE],
        ),
        image_token_id=special_id["<IMG_CONTEXT>"],
        image_seq_length=IMAGE_SEQ_LENGTH,
        downsample_ratio=DOWNSAMPLE_RATIO,
        tie_word_embeddings=False,
    )
    save_random_model(InternVLForConditionalGeneration, config, output_dir, special_id, seed)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": TILE_SIZE, "width": TILE_SIZE}, crop_to_patches=True, min_patches=1, max_patches=MAX_PATCHES
    )
    video_settings = {
        "video_processor_type": "InternVLVideoProcessor",
        "size": {"height": TILE_SIZE, "width": TILE_SIZE},
        "initial_shift": True,
    }
    processor_settings = {"processor_class": "InternVLProcessor", "image_seq_length": IMAGE_SEQ_LENGTH}
    write_processor_files(output_dir, image_processor, video_settings, processor_settings, CHAT_TEMPLATE)
    return output_dir


def main() -> None:
    seeded_build_main(build_tiny_internvl, __doc__)


if __name__ == "__main__":
    main()

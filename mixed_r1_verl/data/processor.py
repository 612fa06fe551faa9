"""Image-and-text processors of the model families Mixed-R1 trains (Qwen2.5-VL, Qwen3-VL, InternVL).

`AutoProcessor` builds these families' processors with their video processors, which need
torchvision; on hosts without it (CPU-only machines), these subclasses run the same image and text
processing with the video part left out. GPU hosts keep using `AutoProcessor`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import (
    AutoProcessor,
    AutoTokenizer,
    InternVLProcessor,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
    Qwen3VLProcessor,
)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from mixed_r1_verl.data.frames import family_of_model_type
from mixed_r1_verl.data.model_files import checkpoint_model_type


class _WithoutVideos:
    """Refuses videos, for processors built without their video processor."""

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError(f"{type(self).__name__} handles images and text only, videos were given")
        return super().__call__(images=images, text=text, **kwargs)


class Qwen25VLImageTextProcessor(_WithoutVideos, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor; passing videos is an error."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen3VLImageTextProcessor(_WithoutVideos, Qwen3VLProcessor):
    """`Qwen3VLProcessor` without a video processor; passing videos is an error."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class InternVLImageTextProcessor(_WithoutVideos, InternVLProcessor):
    """`InternVLProcessor` without a video processor; passing videos is an error."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, image_seq_length, chat_template=chat_template, **kwargs)


def load_image_text_processor(
    model_dir: str | os.PathLike,
) -> Qwen25VLImageTextProcessor | Qwen3VLImageTextProcessor | InternVLImageTextProcessor:
    """The image-and-text processor of an InternVL (Hugging Face format) or Qwen3-VL checkpoint directory,
    else of a Qwen2.5-VL one."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    family = family_of_model_type(checkpoint_model_type(model_dir))
    if family == "internvl":
        settings_file = Path(model_dir) / "processor_config.json"
        settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        return InternVLImageTextProcessor(
            image_processor=GotOcr2ImageProcessorPil.from_pretrained(model_dir),
            tokenizer=tokenizer,
            image_seq_length=settings.get("image_seq_length", 256),
            chat_template=tokenizer.chat_template,
        )
    text_processor = Qwen3VLImageTextProcessor if family == "qwen3_vl" else Qwen25VLImageTextProcessor
    return text_processor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(model_dir),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


# The model family (config.json model_type) of each processor class the families use.
PROCESSOR_MODEL_FAMILIES = (
    (InternVLProcessor, "internvl"),
    (Qwen3VLProcessor, "qwen3_vl"),
    (Qwen2_5_VLProcessor, "qwen2_5_vl"),
    (Qwen2VLProcessor, "qwen2_vl"),
)


def processor_model_family(processor) -> str | None:
    """The model family a processor belongs to; None for other processors."""
    return next((family for cls, family in PROCESSOR_MODEL_FAMILIES if isinstance(processor, cls)), None)


def autoprocessor_failure(model_dir: str | os.PathLike) -> str:
    """The first sentence of the error `AutoProcessor.from_pretrained(model_dir)` raises; "" when it loads."""
    try:
        AutoProcessor.from_pretrained(model_dir)
    except Exception as error:
        message = " ".join(str(error).split()).split(". ")[0]
        return f"AutoProcessor: {message or type(error).__name__}"
    return ""

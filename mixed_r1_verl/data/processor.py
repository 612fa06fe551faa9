"""The Qwen2.5-VL processor for images and text only.

`AutoProcessor` builds Qwen2.5-VL's processor with its video processor, which needs torchvision;
on hosts without it (CPU-only machines), this subclass runs the same image and text processing
with the video part left out. GPU hosts keep using `AutoProcessor`.
"""

from __future__ import annotations

import os

from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


class Qwen25VLImageTextProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor; passing videos is an error."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError(f"{type(self).__name__} handles images and text only, videos were given")
        return super().__call__(images=images, text=text, **kwargs)


def load_image_text_processor(model_dir: str | os.PathLike) -> Qwen25VLImageTextProcessor:
    """The image-and-text processor of a Qwen2.5-VL checkpoint directory."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return Qwen25VLImageTextProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(model_dir),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def autoprocessor_failure(model_dir: str | os.PathLike) -> str:
    """The first sentence of the error `AutoProcessor.from_pretrained(model_dir)` raises; "" when it loads."""
    try:
        AutoProcessor.from_pretrained(model_dir)
    except Exception as error:
        message = " ".join(str(error).split()).split(". ")[0]
        return f"AutoProcessor: {message or type(error).__name__}"
    return ""

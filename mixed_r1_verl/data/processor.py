"""Model files for data tools: hub ids resolved to local directories, and the Qwen2.5-VL processor
for images and text only.

`AutoProcessor` builds Qwen2.5-VL's processor with its video processor, which needs torchvision;
on hosts without it (CPU-only machines), this subclass runs the same image and text processing
with the video part left out. GPU hosts keep using `AutoProcessor`.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoTokenizer, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


class Qwen25VLImageTextProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor; passing videos is an error."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError(f"{type(self).__name__} handles images and text only, videos were given")
        return super().__call__(images=images, text=text, **kwargs)


# What data tools read from a checkpoint: configs, tokenizer and chat template, never the weights.
PROCESSOR_FILES = ("*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken")


def resolve_model_dir(model_path: str | os.PathLike) -> Path:
    """A local directory as given; a hub id (`Qwen/Qwen2.5-VL-7B-Instruct`) as its snapshot in the
    Hugging Face cache, fetching only the processor and tokenizer files when online and missing.
    With HF_HUB_OFFLINE=1 only the cache is read."""
    if Path(model_path).is_dir():
        return Path(model_path)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    offline = constants.HF_HUB_OFFLINE
    try:
        return Path(snapshot_download(str(model_path), local_files_only=True))
    except HFValidationError:
        raise FileNotFoundError(f"model_path {str(model_path)!r} is neither a directory nor a hub id") from None
    except Exception as cache_miss:
        if offline:
            raise FileNotFoundError(
                f"model_path {str(model_path)!r} is not a directory and not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}); HF_HUB_OFFLINE is set, so nothing is downloaded: run "
                f"`huggingface-cli download {model_path}` where the network is reachable, or pass a local directory"
            ) from cache_miss
    try:
        return Path(snapshot_download(str(model_path), allow_patterns=list(PROCESSOR_FILES)))
    except Exception as error:
        raise FileNotFoundError(
            f"model_path {str(model_path)!r} is not a directory, not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), and could not be downloaded: {error}"
        ) from error


def load_image_text_processor(model_dir: str | os.PathLike) -> Qwen25VLImageTextProcessor:
    """The image-and-text processor of a Qwen2.5-VL checkpoint directory."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return Qwen25VLImageTextProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(model_dir),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )

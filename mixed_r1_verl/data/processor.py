"""Model files for data tools: hub ids resolved to local directories, and the Qwen2.5-VL processor
for images and text only.

`AutoProcessor` builds Qwen2.5-VL's processor with its video processor, which needs torchvision;
on hosts without it (CPU-only machines), this subclass runs the same image and text processing
with the video part left out. GPU hosts keep using `AutoProcessor`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import AutoTokenizer, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from mixed_r1_verl.data.prompts import chat_with_image_items

IMAGE_PAD = "<|image_pad|>"


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


def vision_geometry(model_dir: str | os.PathLike) -> tuple[int, int]:
    """(patch_size, merge_size) of a Qwen2-VL-family image processor; Qwen2.5-VL's 14 and 2 when the
    checkpoint does not say."""
    config_path = Path(model_dir) / "preprocessor_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return int(config.get("patch_size", 14)), int(config.get("merge_size", 2))


class PromptTokenCounter:
    """Tokens of a prompt as the Qwen2-VL family's processor builds it: the chat template's text with
    each image's pad repeated once per merged patch of the resized image. Only the tokenizer is
    loaded; no image is decoded."""

    def __init__(self, model_dir: str | os.PathLike):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        patch_size, merge_size = vision_geometry(model_dir)
        self.tile = patch_size * merge_size

    def image_tokens(self, resized_size: tuple[int, int]) -> int:
        width, height = resized_size
        return (width // self.tile) * (height // self.tile)

    def count(self, messages: list[dict], resized_sizes: list[tuple[int, int]]) -> int:
        text = self.tokenizer.apply_chat_template(
            chat_with_image_items(messages), add_generation_prompt=True, tokenize=False
        )
        pads = text.count(IMAGE_PAD)
        if pads != len(resized_sizes):
            raise ValueError(f"the chat template rendered {pads} image pad(s) for {len(resized_sizes)} image(s)")
        text_tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return text_tokens + sum(self.image_tokens(size) - 1 for size in resized_sizes)

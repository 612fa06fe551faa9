"""Checkpoint files the data tools read without loading a model: hub ids resolved to local
directories, and the vision geometry and pixel bounds of a Qwen2-VL-family image processor."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

# What data tools read from a checkpoint: configs, tokenizer and chat template, never the weights.
PROCESSOR_FILES = ("*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken")
# Qwen2.5-VL's vision patch, which verl's datasets also resize by where an image processor names none.
DEFAULT_PATCH_SIZE = 14


def resolve_model_dir(model_path: str | os.PathLike) -> Path:
    """A local directory as given (`~` expanded); a hub id (`Qwen/Qwen2.5-VL-7B-Instruct`) as its snapshot in
    the Hugging Face cache, fetching only the processor and tokenizer files when online and missing.
    With HF_HUB_OFFLINE=1 only the cache is read."""
    if Path(model_path).expanduser().is_dir():
        return Path(model_path).expanduser()
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    offline = constants.HF_HUB_OFFLINE
    try:
        return Path(snapshot_download(str(model_path), local_files_only=True))
    except HFValidationError:
        raise FileNotFoundError(f"model {str(model_path)!r} is neither a directory nor a hub id") from None
    except Exception as cache_miss:
        if offline:
            raise FileNotFoundError(
                f"model {str(model_path)!r} is not a directory and not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}); HF_HUB_OFFLINE is set, so nothing is downloaded: run "
                f"`hf download {model_path}` where the network is reachable, or pass a local directory"
            ) from cache_miss
    try:
        return Path(snapshot_download(str(model_path), allow_patterns=list(PROCESSOR_FILES)))
    except Exception as error:
        raise FileNotFoundError(
            f"model {str(model_path)!r} is not a directory, not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), and could not be downloaded: {error}"
        ) from error


def is_hub_id(path: str) -> bool:
    """Whether `path` reads as a Hugging Face repository id (`name` or `org/name`)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return True


def missing_model_path(path: str) -> str | None:
    """Why `path` names no model: it is neither a path that exists here (`~` expanded) nor a hub id; None when
    it is one."""
    if os.path.exists(os.path.expanduser(path)) or is_hub_id(path):
        return None
    return f"{os.path.abspath(os.path.expanduser(path))} does not exist (nor is {path!r} a hub id)"


WEIGHT_FILES = ("*.safetensors", "*.bin")
# A tokenizer's vocabulary: the fast tokenizer's file, a SentencePiece model, or a BPE vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# Which shard holds each weight, in a checkpoint saved in several safetensors files.
WEIGHTS_INDEX = "model.safetensors.index.json"
# The Hugging Face copy verl saves beside a checkpoint's shards, and verl's record of a run's latest checkpoint.
COPY_DIR = "huggingface"
CHECKPOINT_TRACKER = "latest_checkpointed_iteration.txt"
EXPORT_COMMAND = "python -m mixed_r1_verl.export checkpoint={checkpoint} out_dir=HF_DIR"


def file_stamps(directory: Path, files) -> list[list]:
    """Each file's path relative to `directory`, size and modification time: what tells a rewritten file."""
    return [[str(file.relative_to(directory)), file.stat().st_size, file.stat().st_mtime_ns] for file in files]


def has_weights(directory: Path) -> bool:
    return any(any(directory.glob(pattern)) for pattern in WEIGHT_FILES)


def has_tokenizer(directory: Path) -> bool:
    """Whether a model directory holds a tokenizer's vocabulary: without one, transformers builds an empty
    tokenizer from config.json alone, without an error."""
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def checkpoint_shards(checkpoint: Path) -> Path:
    """Where a verl checkpoint keeps its shards and its Hugging Face copy: a GRPO checkpoint's actor/, else
    the directory itself (an SFT checkpoint, or an actor/)."""
    return checkpoint / "actor" if (checkpoint / "actor").is_dir() else checkpoint


def not_a_model_reason(directory: str | os.PathLike) -> str | None:
    """Why a local directory is no Hugging Face model that transformers or vLLM loads, naming what to
    pass instead; None for one. A verl checkpoint (GRPO: global_step_N or its actor/, SFT: global_step_N)
    holds its sharded weights and, beside them, a Hugging Face copy in huggingface/, with weights only
    where it was saved with `hf_model` in save_contents."""
    directory = Path(directory)
    if (directory / "config.json").is_file():
        if has_weights(directory) and not has_tokenizer(directory):
            return (
                f"{directory} has no tokenizer ({', '.join(TOKENIZER_FILES)}), and transformers would build an "
                "empty one without an error: copy the tokenizer files of the model it was trained from into it"
            )
        if has_weights(directory):
            return None
        shards = directory.parent if directory.name == COPY_DIR else directory
        return (
            f"{directory} has config.json but no weights ({', '.join(WEIGHT_FILES)}); a verl checkpoint's "
            f"{COPY_DIR}/ holds them only when saved with hf_model in save_contents. Export the checkpoint, "
            f"its shards merged, as a model directory: {EXPORT_COMMAND.format(checkpoint=shards)}"
        )
    shards = checkpoint_shards(directory)
    if not (shards / COPY_DIR).is_dir():
        return f"{directory} is not a Hugging Face model directory (no config.json)"
    copy = shards / COPY_DIR
    if has_weights(copy):
        return f"{directory} is a verl checkpoint, not a Hugging Face model directory: pass its model, {copy}"
    return (
        f"{directory} is a verl checkpoint, not a Hugging Face model directory, and {copy} has no weights: "
        f"export it first, its shards merged: {EXPORT_COMMAND.format(checkpoint=shards)}"
    )


def checkpoint_model_type(model_dir: str | os.PathLike) -> str | None:
    """The `model_type` of a checkpoint directory's config.json; None without one."""
    config_file = Path(model_dir) / "config.json"
    return json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None


def config_dtype(model_dir: str | os.PathLike) -> str | None:
    """The dtype a checkpoint's config.json names (`dtype`, or transformers 4's `torch_dtype`); None where it names none."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return config.get("dtype") or config.get("torch_dtype")


def image_processor_settings(model_dir: str | os.PathLike) -> dict:
    """The checkpoint's image processor settings: its preprocessor_config.json, else the
    `image_processor` entry of processor_config.json (the one file transformers 5 writes when it saves
    a processor, as verl's checkpoints and its model merger do); {} when it has neither."""
    model_dir = Path(model_dir)
    if (model_dir / "preprocessor_config.json").is_file():
        return json.loads((model_dir / "preprocessor_config.json").read_text())
    if (model_dir / "processor_config.json").is_file():
        return json.loads((model_dir / "processor_config.json").read_text()).get("image_processor") or {}
    return {}


def required_image_processor_settings(model_dir: str | os.PathLike) -> dict:
    """`image_processor_settings`, or an error that names the directory and how such a directory comes about."""
    settings = image_processor_settings(model_dir)
    if not settings:
        raise FileNotFoundError(
            f"{model_dir} has no image processor settings (preprocessor_config.json, or processor_config.json "
            "with an image_processor). verl's model merger saves the processor only where AutoProcessor loads it "
            "(it needs torchvision): copy processor_config.json from the checkpoint's actor/huggingface directory, "
            f"or export the checkpoint with {EXPORT_COMMAND.format(checkpoint='<checkpoint>')}"
        )
    return settings


def vision_geometry(model_dir: str | os.PathLike) -> tuple[int, int]:
    """(patch_size, merge_size) of a Qwen2-VL-family image processor; Qwen2.5-VL's 14 and 2 when the
    checkpoint does not say (InternVL's does not: verl's dataset then resizes its images with patch 14 too)."""
    config = image_processor_settings(model_dir)
    return int(config.get("patch_size", DEFAULT_PATCH_SIZE)), int(config.get("merge_size", 2))


def processor_pixel_bounds(settings: Mapping) -> tuple[int | None, int | None]:
    """(min_pixels, max_pixels) a Qwen2-VL-family image processor resizes within, read from its
    settings (preprocessor_config.json or `image_processor.to_dict()`); None where they do not say."""
    size = settings.get("size") or {}
    return settings.get("min_pixels") or size.get("shortest_edge"), settings.get("max_pixels") or size.get("longest_edge")

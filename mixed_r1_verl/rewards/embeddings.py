"""The embedding side of BMAS: a tokenizer and the input-embedding table of an HF model.

A model is named as transformers and verl name it: a local directory, or a Hugging Face hub id
(`Qwen/Qwen2.5-VL-7B-Instruct`) read from the local HF cache (`HF_HOME`, `HF_HUB_CACHE`) or downloaded
into it, `HF_HUB_OFFLINE=1` respected. Of the weights only the safetensors shard that holds the
input-embedding table is read.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.model_files import EXPORT_COMMAND, WEIGHTS_INDEX
from .bmas import row_norms

# Input-embedding parameter names of the language models Mixed-R1 trains (Qwen2/2.5-VL, InternVL's
# Qwen2 / InternLM2 backbones, GPT-style models); the shortest matching one outside the vision tower wins.
_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "tok_embeddings.weight", "word_embeddings.weight", "wte.weight")
_VISION_TOWER_NAMES = ("visual", "vision")  # Qwen's `visual`, InternVL's `vision_tower` / `vision_model`
_SINGLE_WEIGHTS = "model.safetensors"


class EmbeddingModelError(RuntimeError):
    """The BMAS embedding model cannot be loaded; the message names the model and the reason."""


@dataclass(frozen=True)
class EmbeddingModel:
    """What BMAS needs from a model: its tokenizer, its input-embedding table [vocab, dim] and the
    table's row norms."""

    tokenizer: object
    table: torch.Tensor
    norms: torch.Tensor

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def _expanded(model: str | Path) -> str:
    """The model's name with a leading `~` expanded, as the table, the tokenizer and the cache read it."""
    return os.path.expanduser(str(model))


def _is_local(model: str) -> bool:
    """A directory, or a name that can only be a path (a hub id never starts with these)."""
    return model.startswith(("/", "./", "../", "~")) or Path(model).is_dir()


def _where_looked(model: str) -> str:
    if _is_local(model):
        return f"directory {model}" + ("" if Path(model).is_dir() else ", which does not exist")
    from huggingface_hub import constants

    offline = "on" if constants.HF_HUB_OFFLINE else "off"
    return f"hub id {model!r}, HF cache {constants.HF_HUB_CACHE}, HF_HUB_OFFLINE {offline}"


@contextmanager
def _loading(model: str, what: str):
    try:
        yield
    except EmbeddingModelError:
        raise
    except Exception as error:
        raise EmbeddingModelError(
            f"BMAS embedding model {model!r}: cannot load its {what} ({_where_looked(model)}): "
            f"{type(error).__name__}: {error}. Set the embedding model (training: "
            "reward.reward_kwargs.embedding_model; evaluation: embedding_model; data engine: "
            "difficulty.embedding_model) to a local model directory or to a hub id that is in the HF cache (or "
            "reachable when not offline)."
        ) from error


def _model_file(model: str, filename: str) -> Path:
    """`filename` of the model, from its directory or through the HF cache; raises FileNotFoundError."""
    if _is_local(model):
        path = Path(model) / filename
        if not path.is_file():
            raise FileNotFoundError(f"no {filename} in {model}")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(model, filename))
    except EntryNotFoundError as error:  # the repository, or its cached copy, has no such file
        raise FileNotFoundError(f"no {filename} for {model}: {error}") from error


def _embedding_key(names: Iterable[str]) -> str | None:
    candidates = [
        name
        for name in names
        if name.endswith(_EMBEDDING_SUFFIXES) and not any(part in name for part in _VISION_TOWER_NAMES)
    ]
    return min(candidates, key=len) if candidates else None


def _what_holds_the_weights(directory: Path) -> str:
    """For a directory without safetensors: where its weights are instead, and how to get safetensors."""
    if any(directory.glob("*.bin")):
        return "; it has PyTorch .bin weights only: save the model again with save_pretrained, which writes safetensors"
    verl_shards = "model_world_size_*_rank_*.pt"
    if any(directory.glob(verl_shards)) or any(directory.parent.glob(verl_shards)):
        return (
            "; it is (in) a verl checkpoint, whose weights are FSDP shards: export it, its shards merged, as a model "
            f"directory with {EXPORT_COMMAND.format(checkpoint='<checkpoint>')}"
        )
    return ""


def _weight_files(model: str) -> list[Path]:
    """The safetensors files that may hold the embedding table: with an index, only the shard it names."""
    try:
        index = _model_file(model, WEIGHTS_INDEX)
    except FileNotFoundError:
        if _is_local(model):
            directory = Path(model)
            files = sorted(directory.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(
                    f"no safetensors weights in {model} (BMAS reads the embedding table from them)"
                    + _what_holds_the_weights(directory)
                )
            return files
        return [_model_file(model, _SINGLE_WEIGHTS)]
    weight_map = json.loads(index.read_text())["weight_map"]
    key = _embedding_key(weight_map)
    if key is None:
        raise ValueError(f"{WEIGHTS_INDEX} names no input-embedding table among {_EMBEDDING_SUFFIXES}")
    return [_model_file(model, weight_map[key])]


def load_input_embeddings(model: str | Path) -> torch.Tensor:
    """The input-embedding table of the language model `model` (a directory or a hub id), read from
    its safetensors without loading the rest of the model. Raises EmbeddingModelError."""
    from safetensors import safe_open

    model = _expanded(model)
    with _loading(model, "input-embedding table"):
        for path in _weight_files(model):
            with safe_open(str(path), framework="pt") as weights:
                key = _embedding_key(weights.keys())
                if key is not None:
                    return weights.get_tensor(key)
        raise ValueError(f"no input-embedding table among {_EMBEDDING_SUFFIXES}")


def load_tokenizer(model: str | Path):
    """The tokenizer of `model` (a directory or a hub id). Raises EmbeddingModelError."""
    from transformers import AutoTokenizer

    model = _expanded(model)
    with _loading(model, "tokenizer"):
        return AutoTokenizer.from_pretrained(model)


def check_tokenizer_fits_table(model: str, tokenizer, rows: int) -> None:
    """Every id the tokenizer gives must be a row of the table; the table may have more rows (Qwen pads
    its table beyond its vocabulary). Raises EmbeddingModelError."""
    largest_id = max(tokenizer.get_vocab().values())
    if largest_id >= rows:
        raise EmbeddingModelError(
            f"BMAS embedding model {model!r}: its tokenizer gives token ids up to {largest_id} but its "
            f"input-embedding table has {rows} rows, so they are not of the same model (tokens added to the "
            "tokenizer without resizing the model's embeddings?). Point reward.reward_kwargs.embedding_model "
            "at a model directory whose tokenizer and weights belong together."
        )


_loaded: dict[str, EmbeddingModel | EmbeddingModelError] = {}
_loaded_lock = threading.Lock()


def load_embedding_model(model: str) -> EmbeddingModel:
    """Tokenizer and embedding table of `model`, loaded once per process. A failed load is remembered:
    later calls raise the same EmbeddingModelError without trying again."""
    model = _expanded(model)
    with _loaded_lock:
        if model not in _loaded:
            try:
                table, tokenizer = load_input_embeddings(model), load_tokenizer(model)
                check_tokenizer_fits_table(model, tokenizer, table.shape[0])
                _loaded[model] = EmbeddingModel(tokenizer, table, row_norms(table))
            except EmbeddingModelError as error:
                _loaded[model] = error
        loaded = _loaded[model]
    if isinstance(loaded, EmbeddingModelError):
        raise loaded
    return loaded

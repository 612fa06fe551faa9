"""The embedding side of BMAS: a tokenizer and the input-embedding table of an HF model directory."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

# Input-embedding parameter names of the language models Mixed-R1 trains (Qwen2/2.5-VL, InternVL's
# Qwen2 / InternLM2 backbones, GPT-style models); the longest matching one wins.
_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "tok_embeddings.weight", "word_embeddings.weight", "wte.weight")


@dataclass(frozen=True)
class EmbeddingModel:
    """What BMAS needs from a model: its tokenizer and its input-embedding table [vocab, dim]."""

    tokenizer: object
    table: torch.Tensor

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return sorted({model_dir / name for name in json.loads(index.read_text())["weight_map"].values()})
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no safetensors weights (BMAS reads the input-embedding table from them)")
    return files


def load_input_embeddings(model_dir: str | Path) -> torch.Tensor:
    """The input-embedding table of the language model in `model_dir`, read from its safetensors
    without loading the rest of the model."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    for path in _weight_files(model_dir):
        with safe_open(str(path), framework="pt") as weights:
            candidates = [key for key in weights.keys() if key.endswith(_EMBEDDING_SUFFIXES) and "visual" not in key]
            if candidates:
                return weights.get_tensor(min(candidates, key=len))
    raise ValueError(f"{model_dir}: no input-embedding table among {_EMBEDDING_SUFFIXES}")


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)


@functools.lru_cache(maxsize=4)
def load_embedding_model(model_dir: str) -> EmbeddingModel:
    """Tokenizer and embedding table of `model_dir`, cached per process."""
    return EmbeddingModel(load_tokenizer(model_dir), load_input_embeddings(model_dir))

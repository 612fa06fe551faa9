"""Open-ended reward: BMAS between the answer and the reference, on the embedding model's tokens."""

from __future__ import annotations

from .bmas import bmas_batch
from .embeddings import EmbeddingModel


def open_ended_accuracy(answer: str, reference: str, embedding_model: EmbeddingModel) -> float:
    pair = (embedding_model.encode(answer), embedding_model.encode(reference))
    return bmas_batch(embedding_model.table, [pair])[0]

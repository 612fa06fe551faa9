"""Mixed-Reward: the per-task rewards of Mixed-R1 and the entry point that dispatches to them."""

from .bmas import bmas_batch, bmas_from_similarity, row_norms
from .embeddings import EmbeddingModel, load_embedding_model
from .scoring import (
    DEFAULT_CORRECT_THRESHOLDS,
    DEFAULT_FORMAT_WEIGHT,
    DEFAULT_TASK_MAP,
    TASKS,
    Verdict,
    compute_score,
    judge,
    values_differ,
)

__all__ = [
    "DEFAULT_CORRECT_THRESHOLDS",
    "DEFAULT_FORMAT_WEIGHT",
    "DEFAULT_TASK_MAP",
    "TASKS",
    "EmbeddingModel",
    "Verdict",
    "bmas_batch",
    "bmas_from_similarity",
    "compute_score",
    "judge",
    "load_embedding_model",
    "row_norms",
    "values_differ",
]

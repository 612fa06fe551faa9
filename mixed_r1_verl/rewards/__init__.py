"""Mixed-Reward: the per-task rewards of Mixed-R1 and the entry point that dispatches to them."""

from .bmas import bmas_batch, bmas_from_similarity, row_norms
from .embeddings import EmbeddingModel, load_embedding_model
from .scoring import (
    DEFAULT_FORMAT_WEIGHT,
    DEFAULT_TASK_MAP,
    Verdict,
    compute_score,
    judge,
    values_differ,
)
from .tasks import BUILTIN_TASKS, DEFAULT_CORRECT_THRESHOLDS, Task, task_names

__all__ = [
    "BUILTIN_TASKS",
    "DEFAULT_CORRECT_THRESHOLDS",
    "DEFAULT_FORMAT_WEIGHT",
    "DEFAULT_TASK_MAP",
    "EmbeddingModel",
    "Task",
    "Verdict",
    "bmas_batch",
    "bmas_from_similarity",
    "compute_score",
    "judge",
    "load_embedding_model",
    "row_norms",
    "task_names",
    "values_differ",
]

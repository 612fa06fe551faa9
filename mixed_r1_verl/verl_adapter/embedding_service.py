"""One BMAS embedding table per node, shared by every reward worker on it.

A named Ray actor per (node, model) loads the table once and puts it in the node's object store;
workers map it zero-copy (read-only shared memory), so eight workers cost one table. With
`num_gpus > 0` the actor also holds the table on its GPU and scores batches there.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mixed_r1_verl.rewards import bmas_batch, row_norms
from mixed_r1_verl.rewards.embeddings import load_input_embeddings

GPU_READY_TIMEOUT_S = 120


def _to_shareable(table: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16: share the raw 16-bit words and reinterpret them on the other side.
    return table.view(torch.int16).numpy() if table.dtype == torch.bfloat16 else table.numpy()


def _from_shared(array: np.ndarray, dtype: str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shared array is read-only by design; nothing writes to it
        tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == "torch.bfloat16" else tensor


class EmbeddingService:
    """Owns a model's input-embedding table on one node (a Ray actor; see `embedding_service`)."""

    def __init__(self, model_dir: str, device: str = "cpu"):
        table = load_input_embeddings(model_dir)
        norms = row_norms(table)
        self._dtype = str(table.dtype)
        self._shared = [ray.put(_to_shareable(table)), ray.put(norms.numpy())]
        self._device_table = table.to(device) if device != "cpu" else None
        self._device_norms = norms.to(device) if device != "cpu" else None

    def table(self) -> tuple[str, list]:
        # The references (table, row norms) are in a list so that Ray hands them over unresolved.
        return self._dtype, self._shared

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        if self._device_table is None:
            raise RuntimeError("this embedding service holds no GPU table; score on the workers instead")
        return bmas_batch(self._device_table, pairs, self._device_norms)


def embedding_service(model_dir: str, num_gpus: float = 0.0):
    """The embedding service of this node for `model_dir`, created by the first worker that asks.
    It lives while its creator holds the returned handle: keep it for as long as the table is used."""
    node_id = ray.get_runtime_context().get_node_id()
    key = hashlib.sha1(f"{model_dir}|{num_gpus}".encode()).hexdigest()[:16]
    service = (
        ray.remote(EmbeddingService)
        .options(
            name=f"mixed_r1_embeddings_{node_id[:16]}_{key}",
            get_if_exists=True,
            num_cpus=0,
            num_gpus=num_gpus,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        )
        .remote(model_dir, "cuda" if num_gpus > 0 else "cpu")
    )
    if num_gpus > 0:
        try:
            ray.get(service.table.remote(), timeout=GPU_READY_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as error:
            raise RuntimeError(
                f"BMAS asked for {num_gpus} GPU per node (reward.reward_kwargs.bmas_num_gpus) but Ray could not "
                f"place it within {GPU_READY_TIMEOUT_S}s: verl's resource pool holds every GPU. Leave GPU headroom "
                "(e.g. trainer.n_gpus_per_node below the node's GPU count) or set bmas_num_gpus=0 to score on CPU."
            ) from error
    return service


def shared_table(service) -> tuple[torch.Tensor, torch.Tensor]:
    """The service's table and its row norms, mapped zero-copy from this node's object store."""
    dtype, (table_reference, norms_reference) = ray.get(service.table.remote())
    return _from_shared(ray.get(table_reference), dtype), _from_shared(ray.get(norms_reference), "torch.float32")

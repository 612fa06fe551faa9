"""One BMAS embedding table per node, shared by every reward worker on it.

A named Ray actor per (node, model) loads the table once and puts it in the node's object store;
workers map it zero-copy (read-only shared memory), so eight workers cost one table. With
`num_gpus > 0` the actor also holds the table on its GPU and scores batches there.
"""

from __future__ import annotations

import hashlib
import traceback
import warnings

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mixed_r1_verl.rewards import bmas_batch, row_norms
from mixed_r1_verl.rewards.embeddings import EmbeddingModelError, load_input_embeddings

SERVICE_NAME_PREFIX = "mixed_r1_embeddings_"
# The service's own concurrency group for `placed`, which thus answers while a table load runs.
PLACEMENT_CHECK = "placement_check"


class BmasGpuUnavailable(RuntimeError):
    """`bmas_num_gpus > 0` but Ray cannot give the BMAS actor that much GPU on this node."""


def _to_shareable(table: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16: share the raw 16-bit words and reinterpret them on the other side.
    return table.view(torch.int16).numpy() if table.dtype == torch.bfloat16 else table.numpy()


def _from_shared(array: np.ndarray, dtype: str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shared array is read-only by design; nothing writes to it
        tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == "torch.bfloat16" else tensor


class EmbeddingService:
    """Owns a model's input-embedding table on one node (a Ray actor; see `embedding_service`). The table
    is loaded by the first call that needs it, not at construction, so `placed` answers as soon as Ray has
    placed the actor. A table that cannot be loaded (EmbeddingModelError, or the GPU or object store out of
    memory) is remembered: every caller gets the same error, and the load is not tried again."""

    def __init__(self, model: str, device: str = "cpu"):
        self._model, self._device = model, device
        self._loaded = False
        self._error: Exception | None = None

    @ray.method(concurrency_group=PLACEMENT_CHECK)
    def placed(self) -> bool:
        return True

    def _load(self) -> None:
        """Runs in the default concurrency group, one call at a time: the first caller loads the table."""
        if self._error is not None:
            raise self._error.with_traceback(None)  # the first caller had its traceback; it grows on each raise
        if self._loaded:
            return
        try:
            self._load_table()
        except Exception as error:
            self._shared = None
            traceback.clear_frames(error.__traceback__)  # keeps no table of the failed load alive
            self._error = error
            raise
        self._loaded = True

    def _load_table(self) -> None:
        table = load_input_embeddings(self._model)
        norms = row_norms(table)
        self._dtype, self._rows = str(table.dtype), table.shape[0]
        self._shared = [ray.put(_to_shareable(table)), ray.put(norms.numpy())]
        self._device_table = table.to(self._device) if self._device != "cpu" else None
        self._device_norms = norms.to(self._device) if self._device != "cpu" else None

    def table(self) -> tuple[str, list]:
        self._load()
        # The references (table, row norms) are in a list so that Ray hands them over unresolved.
        return self._dtype, self._shared

    def rows(self) -> int:
        self._load()
        return self._rows

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        self._load()
        if self._device_table is None:
            raise RuntimeError("this embedding service holds no GPU table; score on the workers instead")
        return bmas_batch(self._device_table, pairs, self._device_norms)


def embedding_service(model: str, num_gpus: float = 0.0):
    """The embedding service of this node for `model`, created by the first worker that asks (the call
    does not wait for it). It lives while a handle to it does: keep it as long as the table is used."""
    node_id = ray.get_runtime_context().get_node_id()
    key = hashlib.sha1(f"{model}|{num_gpus}".encode()).hexdigest()[:16]
    return (
        ray.remote(concurrency_groups={PLACEMENT_CHECK: 1})(EmbeddingService)
        .options(
            name=f"{SERVICE_NAME_PREFIX}{node_id[:16]}_{key}",
            get_if_exists=True,
            num_cpus=0,
            num_gpus=num_gpus,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        )
        .remote(model, "cuda" if num_gpus > 0 else "cpu")
    )


def _table_references(service) -> tuple[str, list]:
    try:
        return ray.get(service.table.remote())
    except EmbeddingModelError as error:  # Ray's task error is also an instance of the actor's error type
        raise EmbeddingModelError(str(error.cause)) from None


def shared_table(service) -> tuple[torch.Tensor, torch.Tensor]:
    """The service's table and its row norms, mapped zero-copy from this node's object store.
    Raises EmbeddingModelError when the service could not load the table."""
    dtype, (table_reference, norms_reference) = _table_references(service)
    return _from_shared(ray.get(table_reference), dtype), _from_shared(ray.get(norms_reference), "torch.float32")


def _node_gpus(node_id: str) -> float:
    return next((node["Resources"].get("GPU", 0.0) for node in ray.nodes() if node["NodeID"] == node_id), 0.0)


def no_gpu_for_bmas(num_gpus: float, node_id: str, reason: str) -> BmasGpuUnavailable:
    return BmasGpuUnavailable(
        f"reward.reward_kwargs.bmas_num_gpus={num_gpus}: Ray cannot give the BMAS embedding actor {num_gpus} GPU "
        f"on node {node_id} ({reason}). In a colocated run verl's resource pool holds every GPU of "
        "trainer.n_gpus_per_node on each node (one placement-group bundle per GPU for the actor, rollout and "
        "reference workers), and no actor outside the pool can use a reserved GPU, not even a fraction of it. "
        "Set bmas_num_gpus=0 (the default: one shared CPU table per node, scored in the reward workers, "
        "overlapping generation), or leave GPUs outside the pool (trainer.n_gpus_per_node below the node's GPU count)."
    )


def gpu_embedding_service(model: str, num_gpus: float, wait_s: float):
    """The node's GPU embedding service, ready to score, or BmasGpuUnavailable when Ray has no such GPU
    on this node for `wait_s` seconds (the pending actor is then removed); the table load after placement
    is not timed. Blocks: call at start-up."""
    node_id = ray.get_runtime_context().get_node_id()
    node_gpus = _node_gpus(node_id)
    if node_gpus < num_gpus:
        raise no_gpu_for_bmas(num_gpus, node_id, f"the node has {node_gpus:g} GPU")
    service = embedding_service(model, num_gpus)
    placed, _ = ray.wait([service.placed.remote()], timeout=wait_s)
    if not placed:
        ray.kill(service)
        raise no_gpu_for_bmas(num_gpus, node_id, f"none became free within {wait_s:g} s")
    _table_references(service)
    return service

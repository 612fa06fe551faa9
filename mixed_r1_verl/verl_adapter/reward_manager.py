"""verl reward manager `mixed_r1`: scores each rollout with Mixed-Reward inside verl's reward loop.

Select it with `reward.reward_manager.name=mixed_r1`; options live in `reward.reward_kwargs`:
  task_map        data_source -> task, for rows without extra_info.task
  format_weight   w in score = (1 - w) * accuracy + w * format (float, or task -> float); default 0.1
  iou_threshold   grounding: binary reward at this IoU instead of the continuous IoU
  embedding_model BMAS embedding model directory; default: the policy (actor_rollout_ref.model.path)
  bmas_device     auto | cpu | cuda: where a worker scores BMAS when bmas_num_gpus is 0 (auto: cuda if visible)
  bmas_num_gpus   > 0: one GPU actor per node holds the table and scores every BMAS batch of the node
  bmas_linger_ms  how long a BMAS request waits for others to batch with (default 5)
Every sample reports the same extra keys: score, accuracy, format, error, task.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from concurrent.futures import ThreadPoolExecutor

import torch
from omegaconf import OmegaConf

from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from mixed_r1_verl.rewards import EmbeddingModel, bmas_batch, judge
from mixed_r1_verl.rewards.embeddings import load_embedding_model, load_tokenizer

logger = logging.getLogger(__name__)

REWARD_MANAGER_NAME = "mixed_r1"


class BmasBatcher:
    """Gathers the BMAS requests that the reward loop makes concurrently in one event loop and scores
    them as one batch; requests arriving while a batch is computed form the next one."""

    def __init__(self, score_batch, linger_s: float, max_batch: int = 4096):
        self._score_batch = score_batch  # async: list of (answer_ids, reference_ids) -> list of floats
        self._linger_s = linger_s
        self._max_batch = max_batch
        self._pending: list[tuple[tuple[list[int], list[int]], asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    async def score(self, answer_ids: list[int], reference_ids: list[int]) -> float:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(((answer_ids, reference_ids), future))
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(self._linger_s)
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    scores = await self._score_batch([pair for pair, _ in batch])
                except Exception as error:
                    for _, future in batch:
                        future.set_exception(error)
                else:
                    for (_, future), value in zip(batch, scores):
                        future.set_result(value)
        finally:
            self._drainer = None


def _bmas_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


@register(REWARD_MANAGER_NAME)
class MixedR1RewardManager(RewardManagerBase):
    def __init__(self, config, tokenizer, compute_score, reward_router_address=None, reward_model_tokenizer=None):
        super().__init__(config, tokenizer, compute_score)
        reward_kwargs = config.reward.get("reward_kwargs")
        options = OmegaConf.to_container(reward_kwargs, resolve=True) if reward_kwargs is not None else {}
        self.judge_options = {
            "task_map": options.get("task_map"),
            "format_weight": options.get("format_weight"),
            "iou_threshold": options.get("iou_threshold"),
        }
        self.embedding_model_dir = str(options.get("embedding_model") or config.actor_rollout_ref.model.path)
        self.bmas_device = _bmas_device(options.get("bmas_device", "auto"))
        self.bmas_num_gpus = float(options.get("bmas_num_gpus", 0.0))
        self.bmas_linger_s = float(options.get("bmas_linger_ms", 5)) / 1000
        # A user's reward.custom_reward_function replaces Mixed-Reward; verl hands it to us.
        custom_path = config.reward.get("custom_reward_function", {}).get("path")
        self.custom_compute_score = compute_score if custom_path else None
        self._embedding_tokenizer = None
        self._embedding_service = None
        self._bmas: BmasBatcher | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixed_r1_bmas")

    def _bmas_batcher(self) -> BmasBatcher:
        if self._bmas is None:
            self._embedding_tokenizer = load_tokenizer(self.embedding_model_dir)
            self._bmas = BmasBatcher(self._bmas_scorer(), self.bmas_linger_s)
        return self._bmas

    def _bmas_scorer(self):
        import ray

        if not ray.is_initialized():
            model: EmbeddingModel = load_embedding_model(self.embedding_model_dir)
            return self._local_scorer(model.table, model.norms)
        from mixed_r1_verl.verl_adapter.embedding_service import embedding_service, shared_table

        # The service lives while a handle to it does: the workers keep theirs for their lifetime.
        self._embedding_service = service = embedding_service(self.embedding_model_dir, self.bmas_num_gpus)
        if self.bmas_num_gpus > 0:

            async def remote_scorer(pairs):
                return await service.score.remote(pairs)

            return remote_scorer
        return self._local_scorer(*shared_table(service))

    def _local_scorer(self, table: torch.Tensor, norms: torch.Tensor):
        table, norms = table.to(self.bmas_device), norms.to(self.bmas_device)

        async def local_scorer(pairs):
            return await asyncio.get_running_loop().run_in_executor(self._executor, bmas_batch, table, pairs, norms)

        return local_scorer

    async def run_single(self, data) -> dict:
        item = data[-1]
        response_ids = item.batch["responses"]
        valid_length = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        response = self.tokenizer.decode(response_ids[:valid_length], skip_special_tokens=True)
        data_source = item.non_tensor_batch["data_source"]
        ground_truth = item.non_tensor_batch["reward_model"]["ground_truth"]
        extra_info = item.non_tensor_batch.get("extra_info") or {}

        if self.custom_compute_score is not None:
            result = self.custom_compute_score(
                data_source=data_source, solution_str=response, ground_truth=ground_truth, extra_info=extra_info
            )
            result = await result if inspect.isawaitable(result) else result
            return {"reward_score": float(result["score"]), "reward_extra_info": dict(result)}

        verdict = judge(data_source, response, ground_truth, extra_info, **self.judge_options)
        if verdict.error is None and verdict.accuracy is None:
            try:
                batcher = self._bmas_batcher()
                encode = lambda text: self._embedding_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
                verdict.accuracy = await batcher.score(encode(verdict.answer), encode(str(ground_truth)))
            except Exception as error:  # a reward must never take the trainer down
                verdict.error = f"{type(error).__name__}: {error}"
                logger.warning("mixed_r1 BMAS error (data_source=%r): %s", data_source, verdict.error)
        result = verdict.result()
        return {"reward_score": result["score"], "reward_extra_info": result}

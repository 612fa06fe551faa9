"""verl reward manager `mixed_r1`: scores each rollout with Mixed-Reward inside verl's reward loop.

Select it with `reward.reward_manager.name=mixed_r1`; options live in `reward.reward_kwargs`:
  task_map          data_source -> task, for rows without extra_info.task
  format_weight     w in score = (1 - w) * accuracy + w * format (float, or task -> float); default 0.1
  iou_threshold     grounding: binary reward at this IoU instead of the continuous IoU
  correct_threshold accuracy at which `correct` is 1 (float, or task -> float); default
                    matching/chart 1, grounding IoU 0.5, open_ended BMAS 0.5
  embedding_model   BMAS embedding model, a directory or a hub id; default: the policy
                    (actor_rollout_ref.model.path)
  bmas_device       auto | cpu | cuda: where a worker scores BMAS when bmas_num_gpus is 0 (auto: cuda
                    only if Ray assigned this process a GPU; outside Ray, if torch sees one)
  bmas_num_gpus     > 0: one GPU actor per node holds the table and scores every BMAS batch of the node
  bmas_gpu_wait_s   how long start-up waits for Ray to place that GPU actor (default 60)
  bmas_linger_ms    how long a BMAS request waits for others to batch with (default 5)
  overlong_buffer_cfg  DAPO's overlong penalty (`mixed_r1_verl/rewards/length.py`), verl's keys:
                    enable, len, penalty_factor, log; off by default. Applies to a custom function's
                    score too.
Any other key stops the manager with a ValueError naming it.
Every sample reports the same extra keys: score, accuracy, correct, format, error, task, pred (and
overlong_reward and overlong with overlong_buffer_cfg.log).
A sample without a ground truth (no `reward_model.ground_truth`, or None, NaN, blank or empty) stops
the reward with a ValueError naming the sample. A reward.custom_reward_function's samples report `score`
and the keys it returns, which must be the same for every sample.

The embedding model and, with bmas_num_gpus > 0, the GPU actor are set up when the manager is built
(verl builds it in each reward worker's constructor, before any request): a model that cannot be
loaded or a GPU that cannot be had stops the worker there with the reason, instead of scoring every
open_ended sample 0. So does an installed task (`mixed_r1_verl.rewards.tasks`) that cannot be loaded, or
one that the training driver has and this worker's node lacks.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import os
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import ray
import torch
from omegaconf import OmegaConf

from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from mixed_r1_verl.data.model_files import missing_model_path
from mixed_r1_verl.rewards import bmas_batch, judge
from mixed_r1_verl.rewards.embeddings import check_tokenizer_fits_table, load_embedding_model, load_tokenizer
from mixed_r1_verl.rewards.length import OVERLONG, OVERLONG_REWARD, OverlongBuffer
from mixed_r1_verl.rewards.scoring import reward_option_errors, sample_name
from mixed_r1_verl.rewards.tasks import check_driver_tasks_are_installed
from mixed_r1_verl.verl_adapter.metrics import response_caps

logger = logging.getLogger(__name__)

REWARD_MANAGER_NAME = "mixed_r1"
REWARD_OPTIONS = (
    "task_map", "format_weight", "iou_threshold", "correct_threshold", "embedding_model", "bmas_device",
    "bmas_num_gpus", "bmas_gpu_wait_s", "bmas_linger_ms", "overlong_buffer_cfg",
)  # fmt: skip
BMAS_DEVICES = ("auto", "cpu", "cuda")
# The BMAS options that are numbers (GPUs, seconds, milliseconds), with their defaults.
BMAS_NUMBERS = {"bmas_num_gpus": 0.0, "bmas_gpu_wait_s": 60.0, "bmas_linger_ms": 5.0}

TextPair = tuple[str, str]
BatchScorer = Callable[[list[TextPair]], Awaitable[list[float]]]


class BmasBatcher:
    """Gathers the BMAS requests that the reward loop makes concurrently in one event loop and scores
    them as one batch; requests arriving while a batch is computed form the next one.

    Every request ends: with its score, with the scorer's error, with an error when the scorer returns
    a wrong number of scores, or cancelled when the batching itself is cancelled. A caller that gives
    up (is cancelled) does not disturb the others of its batch."""

    def __init__(self, score_batch: BatchScorer, linger_s: float, max_batch: int = 4096):
        self._score_batch = score_batch
        self._linger_s = linger_s
        self._max_batch = max_batch
        self._pending: list[tuple[TextPair, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    async def score(self, answer: str, reference: str) -> float:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(((answer, reference), future))
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(self._linger_s)
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                await self._settle([(pair, future) for pair, future in batch if not future.done()])
        finally:
            self._drainer = None
            # Left only when the drain itself was cancelled (the loop is closing): end those requests too.
            pending, self._pending = self._pending, []
            for _, future in pending:
                future.cancel()

    async def _settle(self, batch: list[tuple[TextPair, asyncio.Future]]) -> None:
        futures = [future for _, future in batch]
        if not futures:
            return
        try:
            scores = await self._score_batch([pair for pair, _ in batch])
            if len(scores) != len(futures):
                raise RuntimeError(f"BMAS scorer returned {len(scores)} scores for {len(futures)} requests")
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as error:
            for future in futures:
                if not future.done():
                    future.set_exception(error)
            return
        for future, value in zip(futures, scores):
            if not future.done():
                future.set_result(value)


def ray_assigned_gpus() -> list | None:
    """The GPU ids Ray assigned to this process, or None outside a Ray worker (no Ray, or the driver)."""
    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return ray.get_gpu_ids()


def resolve_bmas_device(choice: str) -> str:
    """The device of `choice`, one of BMAS_DEVICES: `auto` picks cuda only for a process Ray gave a GPU (Ray
    leaves CUDA_VISIBLE_DEVICES as it is for actors that asked for none, so torch sees the node's GPUs in
    verl's CPU reward workers) and, outside Ray, when torch sees a GPU."""
    if choice != "auto":
        return choice
    assigned = ray_assigned_gpus()
    if assigned is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if assigned else "cpu"


def sample_ground_truth(fields: Mapping, data_source, extra_info: Mapping):
    """`reward_model.ground_truth` of a sample's fields; ValueError naming the sample when it has none."""
    reward_model = fields.get("reward_model")
    if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
        raise ValueError(
            f"{sample_name(data_source, extra_info)} cannot be scored: it has no reward_model.ground_truth "
            f"(reward_model is {reward_model!r})"
        )
    return reward_model["ground_truth"]


def custom_score(result, custom_function: str, sample: str) -> tuple[float, dict]:
    """The score and the fields of what a custom reward function returned: a finite number, or a dict
    with a finite `score`."""
    where = f"reward.custom_reward_function {custom_function} for {sample}"
    if isinstance(result, dict):
        if "score" not in result:
            raise ValueError(f"{where} returned a dict without 'score': {result!r}")
        score, fields = result["score"], dict(result)
    else:
        score, fields = result, {}
    try:
        value = float(score)  # numpy and torch scalars too
    except (TypeError, ValueError):
        raise TypeError(f"{where} returned {result!r}; expected a number or a dict with a numeric 'score'") from None
    if not math.isfinite(value):
        raise ValueError(f"{where} returned the non-finite score {value}")
    return value, fields


def keywords_taken(function, keywords: dict) -> dict:
    """The `keywords` that a custom reward function takes by name (all of them where it takes **kwargs); it may
    come wrapped by verl with its reward_kwargs, as verl.trainer.ppo.reward.get_custom_reward_fn wraps it."""
    if isinstance(function, functools.partial) and function.func.__module__ == "verl.trainer.ppo.reward":
        function = function.args[0]
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read: hand it everything, as verl does
        return keywords
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return keywords
    names = {parameter.name for parameter in parameters}
    return {key: value for key, value in keywords.items() if key in names}


def check_same_extra_keys(first_keys: list[str], keys: list[str], custom_function: str, sample: str) -> None:
    """verl stacks every sample's extra info under the first sample's keys, so they must all have the same."""
    differing = [key for key in keys if key not in first_keys] + [key for key in first_keys if key not in keys]
    if differing:
        has = "returned" if differing[0] in keys else "did not return"
        raise ValueError(
            f"reward.custom_reward_function {custom_function} {has} key {differing[0]!r} for {sample}, unlike "
            f"for the first sample this reward worker scored (keys {first_keys}); verl needs the same keys for "
            "every sample"
        )


def bmas_option_errors(options: Mapping) -> list[str]:
    """What is wrong with the BMAS options of `options` (each message starts with the option's name): a device
    not in BMAS_DEVICES, a number (BMAS_NUMBERS) that is not a finite number of at least 0."""
    device = options.get("bmas_device", "auto")
    errors = [] if device in BMAS_DEVICES else [f"bmas_device: {device!r} is not one of {', '.join(BMAS_DEVICES)}"]
    for name, default in BMAS_NUMBERS.items():
        value = options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            errors.append(f"{name}: {value!r} is not a finite number of at least 0")
    return errors


def bmas_embedding_model(options: Mapping, config) -> str:
    """`embedding_model` of `options`, else the policy's path; ValueError for an embedding_model that is neither
    a path that exists here nor a hub id."""
    model = options.get("embedding_model")
    if not model:
        return str(config.actor_rollout_ref.model.path)
    missing = missing_model_path(str(model))
    if missing:
        raise ValueError(f"reward.reward_kwargs.embedding_model={model}: {missing}")
    return str(model)


def reward_options(config) -> dict:
    """`reward.reward_kwargs` as a plain dict ({} when unset)."""
    reward_kwargs = config.reward.get("reward_kwargs")
    return OmegaConf.to_container(reward_kwargs, resolve=True) if reward_kwargs is not None else {}


def configured_overlong_buffer(config) -> OverlongBuffer | None:
    """The overlong buffer `reward.reward_kwargs` enables, else None; ValueError for a key the manager does
    not know (verl's reward loop would pass it by unused), a per-task option or task_map naming no task or
    out of range (`reward_option_errors`), a BMAS option it cannot use (`bmas_option_errors`), or a wrong
    overlong_buffer_cfg."""
    options = reward_options(config)
    unknown = sorted(set(options) - set(REWARD_OPTIONS))
    if unknown:
        raise ValueError(
            f"reward.reward_kwargs.{unknown[0]} is not an option of the {REWARD_MANAGER_NAME} reward manager; "
            f"its options: {', '.join(REWARD_OPTIONS)}"
        )
    errors = reward_option_errors(options) + bmas_option_errors(options)
    if errors:
        raise ValueError("; ".join(f"reward.reward_kwargs.{error}" for error in errors))
    response_length = int(config.actor_rollout_ref.rollout.response_length)
    return OverlongBuffer.from_options(options.get("overlong_buffer_cfg"), response_length)


def with_overlong_penalty(scored: dict, buffer: OverlongBuffer, length: int, cap: int) -> dict:
    """`scored` ({reward_score, reward_extra_info}) with the buffer's penalty added to its score."""
    penalty = buffer.penalty(length, cap)
    score = scored["reward_score"] + penalty
    extra_info = {**scored["reward_extra_info"], "score": score}
    if buffer.log:
        extra_info.update({OVERLONG_REWARD: penalty, OVERLONG: float(penalty < 0)})
    return {"reward_score": score, "reward_extra_info": extra_info}


@register(REWARD_MANAGER_NAME)
class MixedR1RewardManager(RewardManagerBase):
    def __init__(self, config, tokenizer, compute_score, reward_router_address=None, reward_model_tokenizer=None):
        super().__init__(config, tokenizer, compute_score)
        self.overlong_buffer = configured_overlong_buffer(config)
        rollout = config.actor_rollout_ref.rollout
        self.rollout_limits = {key: rollout.get(key) for key in ("prompt_length", "response_length", "max_model_len")}
        options = reward_options(config)
        self.judge_options = {
            key: options.get(key) for key in ("task_map", "format_weight", "iou_threshold", "correct_threshold")
        }
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixed_r1_bmas")
        # A user's reward.custom_reward_function replaces Mixed-Reward; verl hands it to us.
        custom = config.reward.get("custom_reward_function") or {}
        self.custom_function = f"{custom.get('path')}:{custom.get('name')}" if custom.get("path") else None
        # With a reward model (reward.reward_model.enable), a custom function reaches it as verl's naive manager's
        # does, where it takes the two arguments: one written without a reward model in mind is called as before.
        self.reward_model_kwargs = keywords_taken(
            compute_score,
            {"reward_router_address": reward_router_address, "reward_model_tokenizer": reward_model_tokenizer}
            if reward_router_address is not None
            else {},
        )
        self._custom_extra_keys: list[str] | None = None  # those of the first sample scored
        self._embedding_service = None
        # An installed task that cannot be used, or one the driver has and this node lacks, stops the worker here.
        check_driver_tasks_are_installed(os.environ)
        self._bmas = None if self.custom_function else self._start_bmas(options, config)

    def _start_bmas(self, options: dict, config) -> BmasBatcher:
        """Loads the embedding tokenizer and table (or reaches the GPU actor) now, off the event loop."""
        model = bmas_embedding_model(options, config)
        self.embedding_tokenizer = load_tokenizer(model)
        num_gpus = float(options.get("bmas_num_gpus", BMAS_NUMBERS["bmas_num_gpus"]))
        if num_gpus > 0:
            from mixed_r1_verl.verl_adapter.embedding_service import gpu_embedding_service

            wait_s = float(options.get("bmas_gpu_wait_s", BMAS_NUMBERS["bmas_gpu_wait_s"]))
            # The service lives while a handle to it does: the workers keep theirs for their lifetime.
            self._embedding_service = service = gpu_embedding_service(model, num_gpus, wait_s)
            rows = ray.get(service.rows.remote())
            scorer = self._remote_scorer(service)
        else:
            device = resolve_bmas_device(options.get("bmas_device", "auto"))
            table, norms = self._embedding_table(model)
            rows = table.shape[0]
            scorer = self._local_scorer(table, norms, device)
        check_tokenizer_fits_table(model, self.embedding_tokenizer, rows)
        return BmasBatcher(scorer, float(options.get("bmas_linger_ms", BMAS_NUMBERS["bmas_linger_ms"])) / 1000)

    def _embedding_table(self, model: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not ray.is_initialized():
            embedding_model = load_embedding_model(model)
            return embedding_model.table, embedding_model.norms
        from mixed_r1_verl.verl_adapter.embedding_service import embedding_service, shared_table

        self._embedding_service = service = embedding_service(model)
        return shared_table(service)

    def _encode(self, pairs: list[TextPair]) -> list[tuple[list[int], list[int]]]:
        answers = self.embedding_tokenizer([a for a, _ in pairs], add_special_tokens=False)["input_ids"]
        references = self.embedding_tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"]
        return list(zip(answers, references))

    def _local_scorer(self, table: torch.Tensor, norms: torch.Tensor, device: str) -> BatchScorer:
        table, norms = table.to(device), norms.to(device)

        async def local_scorer(pairs: list[TextPair]) -> list[float]:
            score = lambda: bmas_batch(table, self._encode(pairs), norms)  # noqa: E731
            return await asyncio.get_running_loop().run_in_executor(self._executor, score)

        return local_scorer

    def _remote_scorer(self, service) -> BatchScorer:
        async def remote_scorer(pairs: list[TextPair]) -> list[float]:
            encoded = await asyncio.get_running_loop().run_in_executor(self._executor, self._encode, pairs)
            return await service.score.remote(encoded)

        return remote_scorer

    async def _custom_score(self, **sample) -> dict:
        if inspect.iscoroutinefunction(self.compute_score):
            result = await self.compute_score(**sample)
        else:
            result = await asyncio.get_running_loop().run_in_executor(None, lambda: self.compute_score(**sample))
            result = await result if inspect.isawaitable(result) else result
        name = sample_name(sample["data_source"], sample["extra_info"])
        score, fields = custom_score(result, self.custom_function, name)
        extra_info = {**fields, "score": score}
        if self._custom_extra_keys is None:
            self._custom_extra_keys = list(extra_info)
        check_same_extra_keys(self._custom_extra_keys, list(extra_info), self.custom_function, name)
        return {"reward_score": score, "reward_extra_info": {key: extra_info[key] for key in self._custom_extra_keys}}

    async def run_single(self, data) -> dict:
        item = data[-1]
        response_ids = item.batch["responses"]
        attention_mask = item.batch["attention_mask"]
        valid_length = int(attention_mask[-response_ids.shape[-1] :].sum())
        response = self.tokenizer.decode(response_ids[:valid_length], skip_special_tokens=True)
        data_source = item.non_tensor_batch["data_source"]
        extra_info = item.non_tensor_batch.get("extra_info") or {}
        ground_truth = sample_ground_truth(item.non_tensor_batch, data_source, extra_info)

        scored = await self._score(data_source, response, ground_truth, extra_info)
        if self.overlong_buffer is None:
            return scored
        prompt_length = int(attention_mask[: -response_ids.shape[-1]].sum())
        cap = response_caps([prompt_length], self.rollout_limits)[0]
        return with_overlong_penalty(scored, self.overlong_buffer, valid_length, cap)

    async def _score(self, data_source, response: str, ground_truth, extra_info: Mapping) -> dict:
        if self.custom_function is not None:
            return await self._custom_score(
                data_source=data_source,
                solution_str=response,
                ground_truth=ground_truth,
                extra_info=extra_info,
                **self.reward_model_kwargs,
            )

        verdict = judge(data_source, response, ground_truth, extra_info, **self.judge_options)
        if verdict.error is None and verdict.accuracy is None:
            try:
                verdict.accuracy = await self._bmas.score(verdict.answer, str(ground_truth))
            except Exception as error:  # a reward must never take the trainer down
                verdict.error = f"{type(error).__name__}: {error}"
                logger.warning("mixed_r1 BMAS error (data_source=%r): %s", data_source, verdict.error)
        result = verdict.result()
        return {"reward_score": result["score"], "reward_extra_info": result}

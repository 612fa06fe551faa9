"""The adapter's parts that need no trainer: per-task metrics, the BMAS batcher, the shared table."""

import asyncio

import numpy as np
import pytest
import ray
import torch

from mixed_r1_verl.rewards import bmas_batch, compute_score
from mixed_r1_verl.rewards.embeddings import load_input_embeddings
from mixed_r1_verl.verl_adapter.metrics import per_task_metrics
from mixed_r1_verl.verl_adapter.reward_manager import BmasBatcher
from mixed_r1_verl.verl_adapter.trainer import reward_extra_infos


def test_per_task_metrics_from_real_reward_outputs():
    rows = [
        compute_score("a", "<think>x</think><answer>B</answer>", "B", {"task": "matching"}),
        compute_score("a", "<answer>C</answer>", "B", {"task": "matching"}),
        compute_score("b", "<think>x</think><answer>45</answer>", "45", {"task": "chart"}),
        compute_score("c", "<answer>1</answer>", "1", {}),
    ]
    metrics = per_task_metrics(rows)
    assert metrics["mixed_r1/matching/count"] == 2
    assert metrics["mixed_r1/matching/accuracy/mean"] == 0.5
    assert metrics["mixed_r1/matching/score/mean"] == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["mixed_r1/matching/format/mean"] == 0.5
    assert metrics["mixed_r1/chart/score/mean"] == 1.0
    assert metrics["mixed_r1/unknown/error/mean"] == 1.0
    assert not any(key.startswith("mixed_r1/grounding") for key in metrics)


def test_padding_rows_and_foreign_rows_are_left_out():
    extra_fields = [
        {"reward_extra_info": {"task": "chart", "score": 1.0}},
        {"reward_extra_info": {"task": "chart", "score": 0.0}},
        {"reward_extra_info": {"acc": 1.0}},
        None,
    ]
    tags = [{}, {"is_padding": True}, {}, {}]
    infos = reward_extra_infos(extra_fields, tags)
    assert per_task_metrics(infos) == {"mixed_r1/chart/count": 1.0, "mixed_r1/chart/score/mean": 1.0}


def test_batcher_scores_concurrent_requests_in_one_batch():
    table = torch.randn(50, 8)
    batches = []

    async def score_batch(pairs):
        batches.append(len(pairs))
        return bmas_batch(table, pairs)

    async def main():
        batcher = BmasBatcher(score_batch, linger_s=0.001)
        pairs = [([i, i + 1], [i + 2]) for i in range(20)]
        scores = await asyncio.gather(*(batcher.score(a, r) for a, r in pairs))
        later = await batcher.score([1], [1])
        return pairs, scores, later

    pairs, scores, later = asyncio.run(main())
    assert batches == [20, 1]
    assert scores == pytest.approx(bmas_batch(table, pairs))
    assert later == 1.0


def test_batcher_passes_errors_to_every_waiter():
    async def failing(pairs):
        raise RuntimeError("boom")

    async def main():
        batcher = BmasBatcher(failing, linger_s=0)
        return await asyncio.gather(batcher.score([1], [2]), batcher.score([3], [4]), return_exceptions=True)

    results = asyncio.run(main())
    assert [str(result) for result in results] == ["boom", "boom"]


@ray.remote(num_cpus=0)
class TableReader:
    def read(self, model_dir):
        from mixed_r1_verl.verl_adapter.embedding_service import embedding_service, shared_table

        self.service = service = embedding_service(model_dir)  # a holder keeps the node's table alive
        table, _ = shared_table(service)
        _, (reference, _) = ray.get(service.table.remote())
        mapped_from_object_store = not ray.get(reference).flags.writeable  # Ray maps numpy zero-copy, read-only
        return table.float().sum().item(), table.dtype == torch.bfloat16, mapped_from_object_store, service._actor_id.hex()


def test_one_table_per_node_shared_zero_copy(tiny_model_dir):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        readers = [TableReader.remote() for _ in range(3)]
        results = ray.get([reader.read.remote(str(tiny_model_dir)) for reader in readers])
    finally:
        ray.shutdown()
    expected = load_input_embeddings(tiny_model_dir).float().sum().item()
    assert [total for total, _, _, _ in results] == pytest.approx([expected] * 3)
    assert all(is_bf16 and zero_copy for _, is_bf16, zero_copy, _ in results)
    assert len({service for _, _, _, service in results}) == 1


def test_trainer_behaves_as_verls_sync_trainer(tiny_model_dir):
    from hydra import compose, initialize_config_module

    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    overrides = [f"actor_rollout_ref.model.path={tiny_model_dir}", "trainer.v1.trainer_mode=mixed_r1_sync",
                 "algorithm.adv_estimator=grpo", "data.train_batch_size=4"]
    with initialize_config_module("verl.trainer.config", version_base=None):
        config = compose("ppo_trainer", overrides=overrides)
    trainer = get_trainer_cls("mixed_r1_sync")(config)
    assert type(trainer.replay_buffer) is ReplayBuffer
    assert trainer.trainer_mode == "sync"

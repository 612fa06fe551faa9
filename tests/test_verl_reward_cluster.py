"""The reward loop on a simulated two-node Ray cluster: one embedding table per node, scoring on both."""

from collections import Counter

import pytest
import ray
from ray.cluster_utils import Cluster
from reward_loop_helpers import SAMPLES, reward_config, rollout_batch
from transformers import AutoTokenizer

from verl.experimental.reward_loop.reward_loop import RewardLoopManager
from mixed_r1_verl.rewards import compute_score
from mixed_r1_verl.verl_adapter.embedding_service import SERVICE_NAME_PREFIX

OPEN_ENDED = [sample for sample in SAMPLES if sample[3].get("task") == "open_ended"]
RULE_SCORED = [sample for sample in SAMPLES if sample[3].get("task") != "open_ended"]
WORKERS = 4  # two per node


@pytest.fixture(scope="module")
def two_nodes():
    """A head without CPUs (it hosts no workers) and two worker nodes, each named by a custom resource."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = {
        cluster.add_node(num_cpus=1, resources={name: 1}).node_id: name for name in ("node_a", "node_b")
    }
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield nodes
    ray.shutdown()
    cluster.shutdown()


def node_of(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


def test_one_table_per_node_and_rewards_scored_on_both(two_nodes, tiny_model_dir):
    # verl splits a batch into one chunk per worker: every chunk gets open_ended rows, so BMAS runs on both nodes.
    samples = [
        sample
        for chunk in range(WORKERS)
        for sample in (OPEN_ENDED[chunk % 2], RULE_SCORED[2 * chunk % 7], RULE_SCORED[(2 * chunk + 1) % 7])
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    manager = RewardLoopManager(reward_config(tiny_model_dir, num_workers=WORKERS))
    try:
        output = manager.compute_rm_score(rollout_batch(tokenizer, samples))
        worker_nodes = [node_of(worker) for worker in manager.reward_loop_workers]
        services = [name for name in ray.util.list_named_actors() if name.startswith(SERVICE_NAME_PREFIX)]
        service_nodes = sorted(two_nodes[node_of(ray.get_actor(name))] for name in services)
    finally:
        for worker in manager.reward_loop_workers:
            ray.kill(worker)

    assert Counter(two_nodes[node] for node in worker_nodes) == {"node_a": 2, "node_b": 2}
    assert service_nodes == ["node_a", "node_b"], "one embedding table per node, not one per worker"
    for row, (data_source, response, ground_truth, extra_info) in enumerate(samples):
        expected = compute_score(data_source, response, ground_truth, extra_info, embedding_model=str(tiny_model_dir))
        assert output.non_tensor_batch["task"][row] == expected["task"]
        for key in ("score", "accuracy", "correct", "error"):
            assert output.non_tensor_batch[key][row] == pytest.approx(expected[key], abs=1e-5), (row, key)
    assert list(output.non_tensor_batch["task"]).count("open_ended") == WORKERS

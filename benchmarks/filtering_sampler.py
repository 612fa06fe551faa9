"""Cost of per-task filtering inside one training step's sampling, on a real local TransferQueue.

Prints the wall time of ``sample()`` for verl's own sync ReplayBuffer and for PerTaskDynamicSampler
on the same finished groups (rollouts are written instantly, so this is pure sampler overhead).

    python benchmarks/filtering_sampler.py [--prompts 128] [--group-size 8] [--response-tokens 1024]
"""

import argparse
import itertools
import time

import torch
import transfer_queue as tq
from local_ray import local_ray
from omegaconf import OmegaConf
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from mixed_r1_verl.verl_adapter.dynamic_sampling import PerTaskDynamicSampler

TASKS = ("matching", "chart", "grounding", "open_ended")
uids = itertools.count()


def submit(count, group_size, response_tokens, zero_variance_every):
    for _ in range(count):
        index = next(uids)
        uid = f"b{index}"
        task = TASKS[index % len(TASKS)]
        flat = zero_variance_every and index % zero_variance_every == 0
        scores = [0.0] * group_size if flat else [float(session % 2) for session in range(group_size)]
        tq.kv_put(key=uid, partition_id="train", tag={"is_prompt": True, "status": "running", "global_steps": 1})
        trajectories = [
            {
                "responses": torch.randint(0, 1000, (response_tokens,)),
                "extra_fields": {
                    "reward_extra_info": {
                        "score": score, "accuracy": score, "correct": score, "format": 1.0, "error": 0.0, "task": task
                    }
                },
            }
            for score in scores
        ]
        tq.kv_batch_put(
            keys=[f"{uid}_{session}_0" for session in range(group_size)],
            partition_id="train",
            fields=list_of_dict_to_tensordict(trajectories),
            tags=[{"status": "success", "global_steps": 1}] * group_size,
        )
        tq.kv_put(key=uid, partition_id="train", tag={"status": "finished"})
    return count


def timed_step(sampler, prompts, args, zero_variance_every):
    submit(prompts, args.group_size, args.response_tokens, zero_variance_every)
    start = time.perf_counter()
    batch, metrics = sampler.sample(global_steps=1, partition_id="train", batch_size=prompts)
    elapsed = time.perf_counter() - start
    tq.kv_clear(keys=batch.keys, partition_id="train")
    return elapsed, metrics


def samplers(args):
    """verl's sync ReplayBuffer and PerTaskDynamicSampler, both refilling with informative groups."""

    def refill(count):
        return submit(count, args.group_size, args.response_tokens, zero_variance_every=0)

    common = {
        "trainer_mode": "sync",
        "trainer_config": {},
        "max_off_policy_threshold": None,
        "max_off_policy_strategy": "drop",
        "refill_fn": refill,
    }
    baseline = ReplayBuffer(sampler_kwargs={}, poll_interval=0.01, **common)
    filtered = PerTaskDynamicSampler(sampler_kwargs={"poll_interval_s": 0.01}, **common)
    return baseline, filtered


def measure(args):
    baseline, filtered = samplers(args)
    print(f"{args.prompts} prompts x {args.group_size} responses of {args.response_tokens} tokens")
    for label, sampler, zero_variance_every in (
        ("verl ReplayBuffer, no filtering", baseline, 0),
        ("PerTaskDynamicSampler, all groups informative", filtered, 0),
        ("PerTaskDynamicSampler, 1 in 4 groups dropped + refilled", filtered, 4),
    ):
        times = []
        for _ in range(args.repeats):
            elapsed, metrics = timed_step(sampler, args.prompts, args, zero_variance_every)
            times.append(elapsed)
        refilled = metrics.get("filtering/refilled_prompts", 0)
        print(f"{label:58s} sample(): best {min(times) * 1000:7.1f} ms  (refilled {refilled} prompts)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--response-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with local_ray(num_cpus=2):
        tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
        try:
            measure(args)
        finally:
            tq.close()


if __name__ == "__main__":
    main()

"""`recipe=smoke lora=on` with vLLM rollouts: verl hands vLLM the trained adapters, which it applies to the
language model, so the second step's rollouts sample from the policy the first step trained."""

import math

from gpu_checks import TASKS, assert_succeeded

from mixed_r1_verl.run_logs import metrics_log_path, non_finite, read_metrics_log, smoke_training, task_metrics

STEPS = 2


def test_smoke_with_lora_trains_adapters_that_vllms_rollouts_sample_with(gpu_out):
    run = smoke_training(
        "smoke_lora", gpu_out, "lora=on", f"trainer.total_training_steps={STEPS}", "trainer.save_freq=-1",
        # A rate that moves the adapters after one step, so that a rollout without them would show.
        "actor_rollout_ref.actor.optim.lr=1e-2",
    )  # fmt: skip
    assert_succeeded(run)
    steps = read_metrics_log(metrics_log_path(gpu_out, run.name))
    assert sorted(steps) == list(range(1, STEPS + 1))
    for step, metrics in steps.items():
        assert not non_finite(metrics), f"step {step}: non-finite metrics {non_finite(metrics)}"
        assert sorted(task_metrics(metrics, "mixed_r1")) == sorted(TASKS)
        diff = metrics["training/rollout_probs_diff_mean"]
        assert math.isfinite(diff) and diff < 1e-2, f"step {step}: rollout vs actor token probabilities differ by {diff}"

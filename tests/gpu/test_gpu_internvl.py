"""recipe=smoke_internvl with vLLM rollouts: InternVL's image prompts reach vLLM with each image
collapsed to one placeholder (mixed_r1_verl/verl_adapter/internvl.py), the trained weights reach vLLM's
InternVL implementation, and every sample of all four tasks is scored and trained on."""

import math

from gpu_checks import TASKS, assert_succeeded

from mixed_r1_verl.run_logs import metrics_log_path, non_finite, read_metrics_log, smoke_training, task_metrics

STEPS = 2
SAMPLES_PER_TASK = 8  # recipes/smoke.yaml: 2 prompts of each task per step, 4 responses each


def test_smoke_internvl_trains_with_vllm_on_every_sample_of_all_four_tasks(gpu_out):
    run = smoke_training(
        "smoke_internvl", gpu_out, f"trainer.total_training_steps={STEPS}", "trainer.save_freq=-1",
        recipe="smoke_internvl",
    )  # fmt: skip
    assert_succeeded(run)
    assert "Failed to create processor" not in run.log_text(), "verl refused InternVL's processor"
    steps = read_metrics_log(metrics_log_path(gpu_out, run.name))
    assert sorted(steps) == list(range(1, STEPS + 1))
    for step, metrics in steps.items():
        assert not non_finite(metrics), f"step {step}: non-finite metrics {non_finite(metrics)}"
        per_task = task_metrics(metrics, "mixed_r1")
        counts = {task: per_task.get(task, {}).get("count", 0) for task in TASKS}
        assert all(count == SAMPLES_PER_TASK for count in counts.values()), f"step {step}: samples lost: {counts}"
        assert all(per_task[task]["error/mean"] == 0 for task in TASKS), f"step {step}: reward errors"
        assert metrics["actor/grad_norm"] > 0 and metrics["response_length/mean"] > 0
        # vLLM and the actor score the sampled tokens from the same prompt: an image expanded twice on
        # vLLM's side would shift every position after it.
        diff = metrics["training/rollout_probs_diff_mean"]
        assert math.isfinite(diff) and diff < 1e-2, f"step {step}: rollout vs actor token probabilities differ by {diff}"

"""The smoke recipes of the other model families with vLLM rollouts, `recipe=smoke_internvl` and
`recipe=smoke_qwen3vl`: every sample of all four tasks is scored and trained on, and the trained weights
reach vLLM's implementation of the family. InternVL's image prompts reach vLLM with each image collapsed
to one placeholder (mixed_r1_verl/verl_adapter/internvl.py); Qwen3-VL's 32-pixel image tokens and M-RoPE
positions are verl's own."""

import math

import pytest

from gpu_checks import TASKS, assert_succeeded

from mixed_r1_verl.run_logs import metrics_log_path, non_finite, read_metrics_log, smoke_training, task_metrics

STEPS = 2
SAMPLES_PER_TASK = 8  # recipes/smoke.yaml: 2 prompts of each task per step, 4 responses each


@pytest.mark.parametrize("recipe", ["smoke_internvl", "smoke_qwen3vl"])
def test_smoke_recipe_of_the_family_trains_with_vllm_on_every_sample_of_all_four_tasks(recipe, gpu_out):
    run = smoke_training(
        recipe, gpu_out, f"trainer.total_training_steps={STEPS}", "trainer.save_freq=-1", recipe=recipe,
    )  # fmt: skip
    assert_succeeded(run)
    assert "Failed to create processor" not in run.log_text(), "verl refused the model's processor"
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

"""GRPO on the smoke recipe with vLLM rollouts: per-task rewards every step on task-balanced batches,
checkpoint and resume, per-task filtering counters (issue checks 1-3). Two training runs: the
recipe as shipped (steps 1-6), then a restart from its step-3 checkpoint with filtering on (4-6)."""

import math

from gpu_checks import RESUME_FROM_STEP, TASKS, assert_succeeded, output_lines
from length_checks import assert_task_lengths_add_up_to_the_batchs

from mixed_r1_verl.run_logs import (
    metrics_log_path, non_finite, read_resumed_metrics_log, smoke_checkpoint_dir, task_metrics,
)  # fmt: skip

PER_TASK_KEYS = (
    "score/mean", "accuracy/mean", "format/mean", "error/mean", "top_answer_share", "groups_with_signal",
    "response_length/mean", "response_length/clip_ratio",
)  # fmt: skip
SMOKE_STEPS = 6
SMOKE_ROLLOUT_N = 4  # responses per prompt in recipes/smoke.yaml
SMOKE_BATCH_PROMPTS = 8  # data.train_batch_size there: groups in every training batch
SMOKE_RESPONSE_LENGTH = 128  # data.max_response_length there


def steps_of(run, gpu_out):
    """The run's steps, those of its tries before a resume at the deadline included."""
    return read_resumed_metrics_log(metrics_log_path(gpu_out, run.name))


def assert_task_rewards(step: int, metrics: dict) -> dict[str, dict[str, float]]:
    """Every task present in the step's batch logs finite score/accuracy/format/error means, its top
    answer share, the share of its prompt groups with signal, its response length and clip ratio, and no
    reward errors; returns the per-task metrics."""
    per_task = task_metrics(metrics, "mixed_r1")
    present = {task: values for task, values in per_task.items() if values.get("count", 0) > 0}
    assert present, f"step {step}: no mixed_r1/<task>/count > 0 in {sorted(metrics)}"
    for task, values in present.items():
        for key in PER_TASK_KEYS:
            assert key in values, f"step {step}: mixed_r1/{task}/{key} missing"
            assert math.isfinite(values[key]), f"step {step}: mixed_r1/{task}/{key} = {values[key]}"
        assert values["error/mean"] == 0, f"step {step}: reward errors on {task}: {values['error/mean']}"
    return per_task


def test_smoke_trains_with_vllm_on_four_task_batches_and_logs_per_task_rewards(smoke_first_run, gpu_out):
    steps = steps_of(smoke_first_run, gpu_out)
    assert sorted(steps) == list(range(1, SMOKE_STEPS + 1))
    assert any("vllm" in line.lower() for line in output_lines(smoke_first_run)), "no vLLM output in the log"
    for step, metrics in steps.items():
        assert not non_finite(metrics), f"step {step}: non-finite metrics {non_finite(metrics)}"
        for key in ("critic/score/mean", "response_length/mean", "timing_s/gen", "actor/grad_norm"):
            assert key in metrics, f"step {step}: {key} not logged"
        assert metrics["response_length/mean"] > 0, f"step {step}: empty rollouts"
        assert metrics["actor/grad_norm"] > 0, f"step {step}: no update (actor/grad_norm 0)"
        per_task = assert_task_rewards(step, metrics)
        assert_task_lengths_add_up_to_the_batchs(metrics, per_task, step, SMOKE_RESPONSE_LENGTH)
        counts = {task: values.get("count", 0) for task, values in per_task.items()}
        assert set(counts) >= set(TASKS) and all(counts[task] > 0 for task in TASKS), f"step {step}: {counts}"
        spread = max(counts[task] for task in TASKS) - min(counts[task] for task in TASKS)
        assert spread <= SMOKE_ROLLOUT_N, f"step {step}: tasks differ by more than one prompt: {counts}"
        lost = SMOKE_BATCH_PROMPTS * SMOKE_ROLLOUT_N - sum(counts.values())
        assert lost == 0, f"step {step}: {lost} samples lost (see 'Error in _run_prompt' in the log)"


def test_checkpoint_at_step_3_and_resume_continues_at_step_4(smoke_first_run, smoke_resumed_run, gpu_out):
    first_ckpt = smoke_checkpoint_dir(gpu_out, smoke_first_run.name)
    assert (first_ckpt / f"global_step_{RESUME_FROM_STEP}" / "actor").is_dir()
    assert (first_ckpt / f"global_step_{RESUME_FROM_STEP}" / "data.pt").is_file()
    assert_succeeded(smoke_resumed_run)
    steps = steps_of(smoke_resumed_run, gpu_out)
    assert sorted(steps) == list(range(RESUME_FROM_STEP + 1, SMOKE_STEPS + 1))
    resumed_ckpt = smoke_checkpoint_dir(gpu_out, smoke_resumed_run.name)
    assert (resumed_ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(SMOKE_STEPS)
    for step, metrics in steps.items():
        assert not non_finite(metrics), f"step {step}: non-finite metrics {non_finite(metrics)}"
        assert_task_rewards(step, metrics)


def test_filtering_logs_kept_and_dropped_for_every_task_every_step(smoke_resumed_run, gpu_out):
    assert_succeeded(smoke_resumed_run)
    steps = steps_of(smoke_resumed_run, gpu_out)
    assert steps
    for step, metrics in steps.items():
        counters = task_metrics(metrics, "filtering")
        for task in TASKS:
            for key in ("kept", "dropped"):
                value = counters.get(task, {}).get(key)
                assert value is not None and value >= 0, f"step {step}: filtering/{task}/{key} = {value}"
        assert sum(counters[task]["kept"] for task in TASKS) == metrics["filtering/kept"] == SMOKE_BATCH_PROMPTS
        assert sum(counters[task]["dropped"] for task in TASKS) == metrics["filtering/dropped"]

"""`recipe=smoke lora=on` with vLLM rollouts: verl hands vLLM the trained adapters, which it applies to the
language model, so the second step's rollouts sample from the policy the first step trained; the last
step's Hugging Face copy, which verl saves under peft's names, holds the weights with the adapters merged
in, and vLLM evaluates it. With `lora.merge=true` verl merges every adapter, the vision tower's included,
into the full weights it sends vLLM."""

import math

import pytest
from gpu_checks import TASKS, assert_succeeded, evaluate_on_the_smoke_val_set_with_vllm

from mixed_r1_verl.models.lora import saved_by_peft
from mixed_r1_verl.run_logs import (
    metrics_log_path, non_finite, read_metrics_log, smoke_checkpoint_dir, smoke_training, task_metrics,
)  # fmt: skip

STEPS = 2


@pytest.fixture(scope="module")
def lora_run(gpu_out):
    run = smoke_training(
        "smoke_lora", gpu_out, "lora=on", f"trainer.total_training_steps={STEPS}", f"trainer.save_freq={STEPS}",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,extra,hf_model]",
        # A rate that moves the adapters after one step, so that a rollout without them would show.
        "actor_rollout_ref.actor.optim.lr=1e-2",
    )  # fmt: skip
    assert_succeeded(run)
    return run


def assert_the_rollouts_sample_the_trained_policy(run, gpu_out):
    steps = read_metrics_log(metrics_log_path(gpu_out, run.name))
    assert sorted(steps) == list(range(1, STEPS + 1))
    for step, metrics in steps.items():
        assert not non_finite(metrics), f"step {step}: non-finite metrics {non_finite(metrics)}"
        assert sorted(task_metrics(metrics, "mixed_r1")) == sorted(TASKS)
        diff = metrics["training/rollout_probs_diff_mean"]
        assert math.isfinite(diff) and diff < 1e-2, f"step {step}: rollout vs actor token probabilities differ by {diff}"


def test_smoke_with_lora_trains_adapters_that_vllms_rollouts_sample_with(lora_run, gpu_out):
    assert_the_rollouts_sample_the_trained_policy(lora_run, gpu_out)


def test_with_lora_merge_vllm_samples_with_the_vision_towers_adapters_merged_in(gpu_out):
    run = smoke_training(
        "smoke_lora_merge", gpu_out, "lora=on", "actor_rollout_ref.model.lora.merge=true",
        "actor_rollout_ref.model.exclude_modules=null", f"trainer.total_training_steps={STEPS}", "trainer.save_freq=-1",
        "actor_rollout_ref.actor.optim.lr=1e-2",
    )  # fmt: skip
    assert_succeeded(run)
    assert_the_rollouts_sample_the_trained_policy(run, gpu_out)


def test_the_checkpoints_hugging_face_copy_holds_the_merged_weights_that_vllm_evaluates(lora_run, gpu_out):
    copy = smoke_checkpoint_dir(gpu_out, lora_run.name) / f"global_step_{STEPS}" / "actor" / "huggingface"
    assert not saved_by_peft(copy)
    assert f"{copy}: " in lora_run.log_text() and "LoRA adapters merged into the weights" in lora_run.log_text()
    evaluation = evaluate_on_the_smoke_val_set_with_vllm("eval_lora_copy", gpu_out, copy)
    assert "holds a LoRA adapter" not in evaluation.log_text(), "the copy was merged when saved"

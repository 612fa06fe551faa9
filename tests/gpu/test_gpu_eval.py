"""Evaluation with vLLM generation on the smoke run's final checkpoint, merged to a Hugging Face
directory by verl's model merger (issue check 4)."""

from gpu_checks import assert_succeeded, evaluate_on_the_smoke_val_set_with_vllm

from mixed_r1_verl.run_logs import project_command, smoke_checkpoint_dir

FINAL_STEP = 6


def test_merged_checkpoint_is_evaluated_with_vllm_on_every_val_row(smoke_first_run, gpu_out):
    actor_dir = smoke_checkpoint_dir(gpu_out, smoke_first_run.name) / f"global_step_{FINAL_STEP}" / "actor"
    merged = gpu_out / "hf_step6"
    merge = project_command(
        "merge_step6", gpu_out, "verl.model_merger", "merge", "--backend", "fsdp",
        "--local_dir", str(actor_dir), "--target_dir", str(merged),
    )  # fmt: skip
    assert_succeeded(merge)
    evaluate_on_the_smoke_val_set_with_vllm("eval_step6", gpu_out, merged)

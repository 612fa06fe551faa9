"""Evaluation with vLLM generation on the smoke run's final checkpoint, merged to a Hugging Face
directory by verl's model merger (issue check 4)."""

from gpu_checks import TASKS, assert_succeeded, per_task_table, val_rows_per_task

from mixed_r1_verl.models.tiny_qwen25vl import TEST_SIZE_VLLM_GPU_MEMORY_UTILIZATION, TEST_SIZE_VLLM_KV_CACHE_BYTES
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
    val_parquet = gpu_out / "smoke" / "data" / "val.parquet"
    evaluation = project_command(
        "eval_step6", gpu_out, "mixed_r1_verl.eval", f"data={val_parquet}", f"model={merged}",
        "backend=vllm", "max_new_tokens=64", "vllm_kwargs.enforce_eager=true",
        f"vllm_kwargs.kv_cache_memory_bytes={TEST_SIZE_VLLM_KV_CACHE_BYTES}",
        f"vllm_kwargs.gpu_memory_utilization={TEST_SIZE_VLLM_GPU_MEMORY_UTILIZATION}",
        f"out_dir={gpu_out / 'eval_step6'}",
    )  # fmt: skip
    assert_succeeded(evaluation)
    table = per_task_table(evaluation.log_text())
    expected = val_rows_per_task(val_parquet)
    assert set(table) == set(TASKS) == set(expected), f"table tasks {sorted(table)}, val tasks {sorted(expected)}"
    for task in TASKS:
        assert float(table[task]["n"]) == expected[task], f"{task}: n {table[task]['n']} != {expected[task]} val rows"
        assert float(table[task]["errors"]) == 0, f"{task}: {table[task]['errors']} reward errors"

"""Evaluation with vLLM generation on the smoke run's final checkpoint, exported to a Hugging Face
directory by `mixed_r1_verl.export` (from its FSDP shards, with the model card read from the run's saved
config), its results then written into the export's card (issue check 4)."""

from gpu_checks import TASKS, assert_succeeded, evaluate_on_the_smoke_val_set_with_vllm
from huggingface_hub import ModelCard

from mixed_r1_verl.run_logs import project_command, smoke_checkpoint_dir

FINAL_STEP = 6


def test_exported_checkpoint_is_evaluated_with_vllm_on_every_val_row(smoke_first_run, gpu_out):
    step_dir = smoke_checkpoint_dir(gpu_out, smoke_first_run.name) / f"global_step_{FINAL_STEP}"
    exported = gpu_out / "hf_step6"
    export = project_command("export_step6", gpu_out, "mixed_r1_verl.export", f"checkpoint={step_dir}", f"out_dir={exported}")
    assert_succeeded(export)
    # The GPU trainer saved the run's config beside the checkpoint; the export's card reads it.
    assert (step_dir / "mixed_r1_run.yaml").is_file()
    assert f"Step {FINAL_STEP} of a GRPO run" in (exported / "README.md").read_text()
    evaluate_on_the_smoke_val_set_with_vllm("eval_step6", gpu_out, exported, "card=true")
    # card=true wrote the results into the export's card: the Hub's model-index per data_source.
    card = ModelCard((exported / "README.md").read_text())
    sources = {result.dataset_type for result in card.data.eval_results}
    assert sources == {f"synthetic_{task}" for task in TASKS}, sources
    assert "### On val.parquet" in card.text and "answered by vLLM (dtype auto)" in card.text

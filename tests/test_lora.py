"""LoRA runs (`lora=on`): adapters on the language model only, refused on the vision tower where vLLM would
ignore them, trained by a GRPO run on CPU, and evaluated with the adapter verl's model merger writes beside
the base weights merged in."""

import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from data_helpers import CPU_GRPO_SETTINGS, checkout_env, run_on_cpu
from test_train_config import compose_recipe
from mixed_r1_verl.main import lora_mismatches, start_from_merged_adapter
from mixed_r1_verl.models.lora import ADAPTER_DIR, MERGE_RECORD, MERGED_DIR, with_lora_merged
from mixed_r1_verl.run_logs import read_metrics_log

STEPS = 2


@pytest.mark.parametrize("family", ["qwen25vl", "qwen3vl", "internvl"])
def test_lora_on_keeps_adapters_off_the_vision_tower_and_projector_that_vllm_ignores(
    family, tiny_model_dir, tiny_qwen3vl_dir, tiny_internvl_dir
):
    model_dir = {"qwen25vl": tiny_model_dir, "qwen3vl": tiny_qwen3vl_dir, "internvl": tiny_internvl_dir}[family]
    path = f"actor_rollout_ref.model.path={model_dir}"
    assert lora_mismatches(compose_recipe("smoke", path)) == [], "full-parameter training"
    assert lora_mismatches(compose_recipe("smoke", path, "lora=on")) == []
    [refused] = lora_mismatches(compose_recipe("smoke", path, "actor_rollout_ref.model.lora_rank=8"))
    vision_part = "vision_tower" if family == "internvl" else "visual"
    assert refused.startswith("actor_rollout_ref.model.lora_rank=8 with target_modules='all-linear' and exclude_modules=None")
    assert f"(model.{vision_part}." in refused and "Use lora=on" in refused
    # Modules are matched by their last name: Qwen2.5-VL's vision MLP and InternVL's vision attention go by the
    # language model's names too, Qwen3-VL's vision blocks do not.
    language_names = "actor_rollout_ref.model.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
    named = lora_mismatches(compose_recipe("smoke", path, "actor_rollout_ref.model.lora_rank=8", language_names))
    assert bool(named) == (family != "qwen3vl"), named


def test_the_training_entry_refuses_adapters_on_the_vision_tower_before_ray_starts(tmp_path):
    run = run_on_cpu(
        "grpo", tmp_path, ["recipe=smoke", *CPU_GRPO_SETTINGS, "actor_rollout_ref.model.lora_rank=8"], 600,
        MIXED_R1_SMOKE_DIR=str(tmp_path / "smoke"),
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    # The tiny Qwen2.5-VL's 2 vision blocks (qkv, proj, gate_proj, up_proj, down_proj) and its merger's 2 layers.
    assert "puts LoRA adapters on 12 modules of the vision tower or projector (model.visual.blocks.0.attn.qkv" in run.stderr
    assert "Started a local Ray instance" not in run.stdout + run.stderr


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """The smoke recipe with lora=on for 2 steps, a checkpoint at the last, at a learning rate that moves the
    adapters visibly; its checkpoint merged by verl's model merger."""
    work_dir = tmp_path_factory.mktemp("lora_on_cpu")
    settings = [
        "recipe=smoke", "lora=on", *CPU_GRPO_SETTINGS, "data.max_response_length=32",
        f"trainer.total_training_steps={STEPS}", f"trainer.save_freq={STEPS}", "actor_rollout_ref.actor.optim.lr=1e-2",
    ]  # fmt: skip
    run = run_on_cpu(
        "grpo", work_dir, settings, 1200, MIXED_R1_SMOKE_DIR=str(work_dir / "smoke"),
        VERL_FILE_LOGGER_PATH=str(work_dir / "metrics.jsonl"),
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-8000:]
    actor = work_dir / "smoke" / "checkpoints" / f"global_step_{STEPS}" / "actor"
    merged = work_dir / "merged"
    subprocess.run(
        [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir", str(actor),
         "--target_dir", str(merged)],
        env=checkout_env(), capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    # Without torchvision AutoProcessor fails, and verl's merger then saves the tokenizer alone.
    shutil.copy(actor / "huggingface" / "processor_config.json", merged)
    return work_dir, merged


def test_a_lora_run_trains_adapters_on_the_language_model_that_the_rollouts_sample_with(lora_run):
    work_dir, merged = lora_run
    steps = read_metrics_log(work_dir / "metrics.jsonl")
    assert sorted(steps) == list(range(1, STEPS + 1))
    # After step 1 the adapters are trained: the rollout of step 2 samples with them (the CPU rollout merges
    # them as vLLM applies them), and the actor scores its tokens alike.
    assert steps[STEPS]["training/rollout_probs_diff_mean"] < 1e-3
    adapter = load_file(merged / ADAPTER_DIR / "adapter_model.safetensors")
    assert adapter and all(".language_model." in name for name in adapter), sorted(adapter)[:5]
    assert any(tensor.abs().max() > 0 for name, tensor in adapter.items() if ".lora_B." in name)


def test_evaluation_generates_with_the_adapter_merged_into_the_base_weights(lora_run):
    work_dir, merged = lora_run
    val = work_dir / "smoke" / "data" / "val.parquet"
    run = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.eval", f"data={val}", f"model={merged}", "backend=hf",
         "max_new_tokens=8", f"out_dir={work_dir / 'eval'}"],
        env=checkout_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"{merged} holds a LoRA adapter ({ADAPTER_DIR}/): using its weights with the adapter merged in" in run.stderr
    summary = json.loads((work_dir / "eval" / "summary.json").read_text())
    assert summary["tasks"]["all"]["n"] == pq.read_metadata(val).num_rows

    # What peft itself makes of the base weights and the adapter.
    base = AutoModelForImageTextToText.from_pretrained(merged, dtype=torch.float32)
    base_weights = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    expected = PeftModel.from_pretrained(base, merged / ADAPTER_DIR).merge_and_unload().state_dict()
    ours = AutoModelForImageTextToText.from_pretrained(merged / MERGED_DIR, dtype=torch.float32).state_dict()
    assert ours.keys() == expected.keys()
    changed = [name for name in ours if not torch.equal(ours[name], base_weights[name])]
    assert changed and all(".language_model." in name for name in changed), changed[:5]
    for name in ours:
        # Ours is rounded once to the checkpoint's bfloat16.
        assert torch.allclose(ours[name], expected[name], rtol=1e-2, atol=1e-3), name

    # Merged once: a second evaluation reuses the merge, a new adapter merges again.
    record = (merged / MERGED_DIR / MERGE_RECORD).read_text()
    assert with_lora_merged(str(merged)) == str(merged / MERGED_DIR)
    assert (merged / MERGED_DIR / MERGE_RECORD).read_text() == record
    adapter_file = merged / ADAPTER_DIR / "adapter_model.safetensors"
    adapter_file.write_bytes(adapter_file.read_bytes())
    with_lora_merged(str(merged))
    assert (merged / MERGED_DIR / MERGE_RECORD).read_text() != record


def test_training_from_a_lora_checkpoint_starts_from_its_weights_with_the_adapter_merged_in(lora_run):
    _, merged = lora_run
    config = compose_recipe("smoke", f"actor_rollout_ref.model.path={merged}")
    start_from_merged_adapter(config)
    assert config.actor_rollout_ref.model.path == str(merged / MERGED_DIR)
    assert config.reward.reward_kwargs.embedding_model == str(merged / MERGED_DIR)
    plain = compose_recipe("smoke", f"actor_rollout_ref.model.path={merged / MERGED_DIR}")
    start_from_merged_adapter(plain)
    assert plain.actor_rollout_ref.model.path == str(merged / MERGED_DIR)

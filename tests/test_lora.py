"""LoRA runs (`lora=on`): adapters on the language model only, refused on the vision tower where vLLM would
ignore them, trained by a GRPO run on CPU, and evaluated with the adapter verl's model merger writes beside
the base weights merged in; checkpoints' Hugging Face copies, which verl saves under peft's names, hold the
weights with the adapters merged in."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from data_helpers import CPU_GRPO_SETTINGS, card_parts, checkout_env, run_module, run_on_cpu
from test_train_config import compose_recipe
from mixed_r1_verl.data.model_files import WEIGHTS_INDEX
from mixed_r1_verl.data.prompts import chat_template_text
from mixed_r1_verl.eval.cache import CACHE_FILE, discard_generations_made_otherwise
from mixed_r1_verl.eval.generation import SamplingSettings, build_generator
from mixed_r1_verl.main import lora_mismatches, start_from_merged_adapter
from mixed_r1_verl.models import lora
from mixed_r1_verl.models.lora import (
    ADAPTER_DIR, MERGE_RECORD, MERGED_DIR, PEFT_PREFIX, TRAIN_META, merge_saved_adapters, saved_by_peft, with_lora_merged,
)  # fmt: skip
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
    assert f"(model.{vision_part}." in refused and "Use lora=on" in refused and "lora.merge=true" in refused
    # Merged into the full weights verl sends vLLM, the vision tower's adapters reach the rollouts too.
    merged = compose_recipe("smoke", path, "actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora.merge=true")
    assert lora_mismatches(merged) == []
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


def lora_training(work_dir, *settings) -> dict:
    """`STEPS` steps of the smoke recipe with lora=on at a learning rate that moves the adapters visibly;
    the metrics of each step."""
    settings = [
        "recipe=smoke", "lora=on", *CPU_GRPO_SETTINGS, "data.max_response_length=32",
        f"trainer.total_training_steps={STEPS}", "actor_rollout_ref.actor.optim.lr=1e-2", *settings,
    ]  # fmt: skip
    run = run_on_cpu(
        "grpo", work_dir, settings, 1200, MIXED_R1_SMOKE_DIR=str(work_dir / "smoke"),
        VERL_FILE_LOGGER_PATH=str(work_dir / "metrics.jsonl"),
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-8000:]
    steps = read_metrics_log(work_dir / "metrics.jsonl")
    assert sorted(steps) == list(range(1, STEPS + 1))
    return steps


def test_with_lora_merge_the_vision_towers_adapters_train_and_the_rollouts_sample_with_them(tmp_path):
    settings = ("trainer.save_freq=-1", "actor_rollout_ref.model.exclude_modules=null", "actor_rollout_ref.model.lora.merge=true")
    steps = lora_training(tmp_path, *settings)
    # Step 1 trained adapters on the vision tower too; verl sends the rollout the weights with all of them merged in.
    assert steps[STEPS]["training/rollout_probs_diff_mean"] < 1e-3


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """`lora_training` with a checkpoint at the last step, with its Hugging Face copy; the checkpoint merged
    by verl's model merger."""
    work_dir = tmp_path_factory.mktemp("lora_on_cpu")
    lora_training(
        work_dir, f"trainer.save_freq={STEPS}", "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]"
    )
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


def test_the_checkpoints_hugging_face_copy_holds_the_weights_with_the_adapters_merged_in(lora_run):
    work_dir, merged = lora_run
    copy = work_dir / "smoke" / "checkpoints" / f"global_step_{STEPS}" / "actor" / "huggingface"
    assert not saved_by_peft(copy)
    ours = AutoModelForImageTextToText.from_pretrained(copy, dtype=torch.float32).state_dict()
    # The same training through verl's model merger (base weights and lora_adapter/), merged by transformers.
    expected = AutoModelForImageTextToText.from_pretrained(with_lora_merged(str(merged)), dtype=torch.float32).state_dict()
    base = AutoModelForImageTextToText.from_pretrained(merged, dtype=torch.float32).state_dict()
    assert ours.keys() == expected.keys()
    for name in ours:
        # verl saves the copy in the actor's float32, its merger the base weights in bfloat16.
        assert torch.allclose(ours[name], expected[name], rtol=1e-2, atol=1e-3), name
    # The trained adapters move the weights by more than that tolerance.
    assert any(".language_model." in name and not torch.allclose(ours[name], base[name], rtol=1e-2, atol=1e-3) for name in ours)


def test_export_writes_a_lora_checkpoint_with_the_adapters_merged_in_from_its_copy_or_its_shards(lora_run, tmp_path):
    work_dir, merged = lora_run
    actor = work_dir / "smoke" / "checkpoints" / f"global_step_{STEPS}" / "actor"
    from_copy = json.loads(run_module("mixed_r1_verl.export", f"checkpoint={actor.parent}", f"out_dir={tmp_path / 'copy'}"))
    # The trainer merged the adapters into the copy when it saved it, in the actor's float32; the export is
    # in the config's bfloat16 unless asked for the dtype saved.
    assert (from_copy["weights_from"], from_copy["lora_merged"], from_copy["dtypes"]) == ("huggingface/", False, ["BF16"])
    run = yaml.safe_load((actor.parent / "mixed_r1_run.yaml").read_text())["actor_rollout_ref"]["model"]
    _, _, rows = card_parts((tmp_path / "copy" / "README.md").read_text())
    assert rows["LoRA"] == f"rank {run['lora_rank']}, alpha {run['lora_alpha']}, merged into the weights"
    as_saved = json.loads(run_module("mixed_r1_verl.export", f"checkpoint={actor}", f"out_dir={tmp_path / 'saved'}", "dtype=saved"))
    assert as_saved["dtypes"] == ["F32"] and as_saved["weight_bytes"] > 1.9 * from_copy["weight_bytes"]
    copy = load_file(actor / "huggingface" / "model.safetensors")
    exported, exported_as_saved = load_file(tmp_path / "copy" / "model.safetensors"), load_file(tmp_path / "saved" / "model.safetensors")
    assert exported.keys() == exported_as_saved.keys() == copy.keys()
    assert all(exported[name].equal(copy[name].bfloat16()) and exported_as_saved[name].equal(copy[name]) for name in copy)

    shards_only = tmp_path / "global_step_2" / "actor"
    shutil.copytree(actor, shards_only, ignore=shutil.ignore_patterns("*.safetensors"))
    from_shards = json.loads(run_module("mixed_r1_verl.export", f"checkpoint={shards_only.parent}", f"out_dir={tmp_path / 'shards'}"))
    assert (from_shards["weights_from"], from_shards["lora_merged"], from_shards["dtypes"]) == (
        "FSDP shards", True, ["BF16"]
    )  # fmt: skip
    assert not any(name.startswith("lora_") for name in from_shards["files"]) and "processor_config.json" in from_shards["files"]

    expected = AutoModelForImageTextToText.from_pretrained(with_lora_merged(str(merged)), dtype=torch.float32).state_dict()
    for exported in ("copy", "shards"):
        ours = AutoModelForImageTextToText.from_pretrained(tmp_path / exported, dtype=torch.float32).state_dict()
        assert ours.keys() == expected.keys()
        for name in ours:
            # verl saves the copy in the actor's float32, its merger the base weights in bfloat16.
            assert torch.allclose(ours[name], expected[name], rtol=1e-2, atol=1e-3), (exported, name)


def peft_saved_copy(model_dir, target, shards: int):
    """`model_dir`'s model with random LoRA adapters, saved as verl saves a LoRA run's Hugging Face copy: the
    peft model's state dict in `target` (over `shards` files), verl's rank and alpha beside it. Returns
    peft's own merge of it."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.bfloat16)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    state = {name: tensor.contiguous() for name, tensor in peft.state_dict().items()}
    target.mkdir(parents=True)
    shutil.copy(model_dir / "config.json", target)
    names = list(state)
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)] if shards > 1 else ["model.safetensors"]
    weight_map = {name: files[i * shards // len(names)] for i, name in enumerate(names)}
    for file in files:
        save_file({name: state[name] for name in names if weight_map[name] == file}, target / file, metadata={"format": "pt"})
    if shards > 1:
        (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (target.parent / TRAIN_META).write_text(json.dumps({"r": 4, "lora_alpha": 8, "task_type": "CAUSAL_LM"}))
    return peft.merge_and_unload().state_dict()


def assert_merged_as_peft_merges(directory, expected):
    merged = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.bfloat16).state_dict()
    assert merged.keys() == expected.keys()
    for name in merged:
        # peft rounds the adapter's product to bfloat16 before adding it; ours is rounded once.
        assert torch.allclose(merged[name].float(), expected[name].float(), rtol=1e-2, atol=1e-3), (directory, name)


@pytest.mark.parametrize("shards", [1, 3])
def test_a_copy_saved_under_peft_names_is_merged_in_place_or_beside_it_as_peft_merges_it(shards, tiny_model_dir, tmp_path):
    copy = tmp_path / "actor" / "huggingface"
    expected = peft_saved_copy(tiny_model_dir, copy, shards)
    assert saved_by_peft(copy)
    # Loaded as it is, transformers finds none of its weights.
    untouched = AutoModelForImageTextToText.from_pretrained(copy, dtype=torch.bfloat16).state_dict()
    assert not any(torch.equal(untouched[name], expected[name]) for name in expected if name.endswith("q_proj.weight"))

    # Evaluation and training read it with the adapters merged in, beside it ...
    beside = with_lora_merged(str(copy))
    assert beside == str(copy / MERGED_DIR)
    # ... and the trainers rewrite it in place.
    assert merge_saved_adapters(copy) and not saved_by_peft(copy)
    assert not merge_saved_adapters(copy)
    for directory in (copy, copy / MERGED_DIR):
        if shards > 1:
            index = json.loads((directory / WEIGHTS_INDEX).read_text())
            assert not any(name.startswith(PEFT_PREFIX) or ".lora_" in name for name in index["weight_map"])
            assert sorted(set(index["weight_map"].values())) == sorted(path.name for path in directory.glob("*.safetensors"))
            assert len(set(index["weight_map"].values())) == shards
            saved = [tensor for file in directory.glob("*.safetensors") for tensor in load_file(file).values()]
            assert index["metadata"]["total_size"] == sum(tensor.numel() * tensor.element_size() for tensor in saved)
        assert_merged_as_peft_merges(directory, expected)
    assert sorted(path.name for path in copy.parent.iterdir()) == ["huggingface", TRAIN_META]


def test_a_merge_cut_short_while_swapping_its_files_in_is_finished_by_the_next_reader(tiny_model_dir, tmp_path, monkeypatch):
    copy = tmp_path / "actor" / "huggingface"
    expected = peft_saved_copy(tiny_model_dir, copy, 3)
    replace, swapped = os.replace, []

    def killed_after_the_first_file(source, target):
        if target.parent == copy:
            if swapped:
                raise KeyboardInterrupt("killed while swapping the merged files in")
            swapped.append(target)
        replace(source, target)

    monkeypatch.setattr(lora.os, "replace", killed_after_the_first_file)
    with pytest.raises(KeyboardInterrupt):
        merge_saved_adapters(copy)
    monkeypatch.undo()
    # Half swapped: one file holds merged weights, the others still peft's names.
    peft_named = [any(name.startswith(PEFT_PREFIX) for name in load_file(file)) for file in sorted(copy.glob("*.safetensors"))]
    assert peft_named == [False, True, True] and swapped == [copy / "model-00001-of-00003.safetensors"]

    assert with_lora_merged(str(copy)) == str(copy)
    assert not saved_by_peft(copy) and sorted(path.name for path in copy.parent.iterdir()) == ["huggingface", TRAIN_META]
    assert_merged_as_peft_merges(copy, expected)


def test_a_peft_copy_that_cannot_be_merged_is_named_with_the_reason(tiny_model_dir, tmp_path):
    copy = tmp_path / "actor" / "huggingface"
    peft_saved_copy(tiny_model_dir, copy, 1)
    (copy.parent / TRAIN_META).unlink()
    for merge in (merge_saved_adapters, with_lora_merged):  # the export's merge; evaluation's and training's
        with pytest.raises(FileNotFoundError, match=f"{copy} holds LoRA adapters under peft's names, and .*{TRAIN_META}"):
            merge(copy)
    (copy.parent / TRAIN_META).write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    weights = load_file(copy / "model.safetensors")
    [name] = [name for name in weights if name.endswith("q_proj.lora_A.default.weight")][:1]
    weights[name.replace("lora_A.default.weight", "lora_magnitude_vector.default.weight")] = torch.ones(4)
    from safetensors.torch import save_file

    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lora_magnitude_vector.default.weight is not a LoRA A or B matrix"):
        merge_saved_adapters(copy)


def model_with_adapter(model_dir, target):
    """`model_dir`'s model with a random LoRA adapter on its language model's attention, as verl's model
    merger writes a LoRA run's checkpoint: the base weights and files, and peft's adapter in lora_adapter/."""
    from peft import LoraConfig, get_peft_model

    shutil.copytree(model_dir, target)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    attention = r".*language_model.*\.(q_proj|v_proj)"
    config = LoraConfig(r=4, lora_alpha=8, target_modules=attention, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(target / ADAPTER_DIR)
    assert (target / ADAPTER_DIR / "adapter_config.json").is_file()
    return target


def edit_json(path, **fields):
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def files_beside_the_weights(directory) -> dict:
    """The contents of a model directory's files other than its weights and config.json, by name."""
    return {
        path.name: path.read_bytes()
        for path in directory.iterdir()
        if path.is_file() and path.suffix != ".safetensors" and path.name not in ("config.json", MERGE_RECORD)
    }


def test_the_merged_directory_takes_up_the_model_directorys_edited_chat_template_and_processor_files(
    tiny_model_dir, tmp_path
):
    model = model_with_adapter(tiny_model_dir, tmp_path / "model")
    merged = Path(with_lora_merged(str(model)))
    assert files_beside_the_weights(merged) == files_beside_the_weights(model)
    record, weights = (merged / MERGE_RECORD).read_text(), (merged / "model.safetensors").stat().st_mtime_ns

    # The user gives the model a system turn, other image bounds and sampling defaults, and drops a file.
    template = model / "chat_template.jinja"
    template.write_text("{{- '<|im_start|>system\nThink first.<|im_end|>\n' -}}" + template.read_text())
    edit_json(model / "preprocessor_config.json", max_pixels=200704)
    edit_json(model / "generation_config.json", eos_token_id=[2])
    (model / "video_preprocessor_config.json").unlink()
    assert with_lora_merged(str(model)) == str(merged)
    assert files_beside_the_weights(merged) == files_beside_the_weights(model)
    # ... without merging the weights again.
    assert (merged / MERGE_RECORD).read_text() == record
    assert (merged / "model.safetensors").stat().st_mtime_ns == weights

    # Evaluation and the data engine generate with the edited template.
    generator = build_generator("transformers", str(model), SamplingSettings(max_new_tokens=2), device="cpu")
    prompt = chat_template_text(generator.processor.tokenizer, [{"role": "user", "content": "Which bar?"}])
    assert prompt.startswith("<|im_start|>system\nThink first.<|im_end|>\n")


@pytest.mark.parametrize("layout", ["lora_adapter", "peft_names"])
def test_cached_generations_are_discarded_when_the_adapters_alpha_changes(layout, tiny_model_dir, tmp_path, caplog):
    if layout == "lora_adapter":
        model = model_with_adapter(tiny_model_dir, tmp_path / "model")
        alpha_file, named = model / ADAPTER_DIR / "adapter_config.json", f"files.{ADAPTER_DIR}/adapter_config.json"
    else:
        model = tmp_path / "actor" / "huggingface"
        peft_saved_copy(tiny_model_dir, model, 1)
        alpha_file, named = model.parent / TRAIN_META, f"files.../{TRAIN_META}"
    out, sampling, generator = tmp_path / "eval", {"max_new_tokens": 8}, {"backend": "hf", "device": "cpu"}
    out.mkdir()
    discard_generations_made_otherwise(out, str(model), sampling, generator)
    (out / CACHE_FILE).write_text('{"id": "a", "response": "x"}\n')
    discard_generations_made_otherwise(out, str(model), sampling, generator)
    assert (out / CACHE_FILE).exists()
    merged = load_file(Path(with_lora_merged(str(model))) / "model.safetensors")

    edit_json(alpha_file, lora_alpha=64)
    # Another model: the adapter is merged in at 8 times the scaling ...
    remerged = load_file(Path(with_lora_merged(str(model))) / "model.safetensors")
    assert any(not torch.equal(merged[name], remerged[name]) for name in merged if name.endswith("q_proj.weight"))
    # ... so its cached generations are not reused.
    discard_generations_made_otherwise(out, str(model), sampling, generator)
    assert not (out / CACHE_FILE).exists()
    assert f"written with another {named}; generating again" in caplog.text


def test_training_from_a_lora_checkpoint_starts_from_its_weights_with_the_adapter_merged_in(lora_run):
    _, merged = lora_run
    config = compose_recipe("smoke", f"actor_rollout_ref.model.path={merged}")
    start_from_merged_adapter(config)
    assert config.actor_rollout_ref.model.path == str(merged / MERGED_DIR)
    assert config.reward.reward_kwargs.embedding_model == str(merged / MERGED_DIR)
    plain = compose_recipe("smoke", f"actor_rollout_ref.model.path={merged / MERGED_DIR}")
    start_from_merged_adapter(plain)
    assert plain.actor_rollout_ref.model.path == str(merged / MERGED_DIR)

"""`python -m mixed_r1_verl.export`: a checkpoint as a Hugging Face model directory, from verl's copy or from
the FSDP shards of several ranks (saved by verl's checkpoint manager from CPU processes). Exports of
checkpoints that training wrote are checked beside those runs (tests/test_train_on_cpu.py, tests/test_lora.py)."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_lora import assert_merged_as_peft_merges, peft_saved_copy
from transformers import AutoModelForImageTextToText

from data_helpers import REPO, card_parts, checkout_env
from mixed_r1_verl.data.model_files import CHECKPOINT_TRACKER, WEIGHTS_INDEX
from mixed_r1_verl.export import ExportConfig, export
from mixed_r1_verl.models.fsdp_shards import write_at, write_fsdp_weights
from mixed_r1_verl.models.lora import saved_by_peft
from mixed_r1_verl.models.weight_files import tensor_bytes

FSDP_CHECKPOINT = REPO / "tests" / "fsdp_checkpoint.py"


def export_command(*settings):
    return subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.export", *settings], env=checkout_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_a_copy_saved_under_peft_names_is_exported_with_the_adapters_merged_in_and_left_as_it_was(tiny_model_dir, tmp_path):
    copy = tmp_path / "checkpoints" / "global_step_3" / "actor" / "huggingface"
    expected = peft_saved_copy(tiny_model_dir, copy, 3)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"):
        shutil.copy(tiny_model_dir / name, copy)
    before = sorted(path.name for path in copy.iterdir())
    (tmp_path / "checkpoints" / CHECKPOINT_TRACKER).write_text("3")

    out = tmp_path / "hf" / "step_3"
    run = export_command(f"checkpoint={tmp_path / 'checkpoints'}", f"out_dir={out}")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert (summary["checkpoint"], summary["weights_from"], summary["lora_merged"], summary["model_type"]) == (
        str(copy.parent), "huggingface/", True, "qwen2_5_vl"
    )  # fmt: skip
    assert summary["dtypes"] == ["BF16"]
    assert summary["files"] == sorted([*before, "README.md"]) == sorted(path.name for path in out.iterdir())
    # A checkpoint without the run config the project's trainers save: the card tells what the layout does.
    metadata, first, rows = card_parts((out / "README.md").read_text())
    assert "base_model" not in metadata and metadata["tags"] == ["mixed-r1", "grpo", "verl"]
    assert first.startswith("Step 3 of a GRPO run") and rows == {"LoRA": "merged into the weights", "weights": "bfloat16"}
    assert_merged_as_peft_merges(out, expected)
    assert saved_by_peft(copy) and sorted(path.name for path in copy.iterdir()) == before
    assert sorted(path.name for path in out.parent.iterdir()) == ["step_3"]

    refused = export_command(f"checkpoint={copy}", f"out_dir={out}")
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"FileExistsError: {out} exists and is not empty: export writes a new directory"
    )  # fmt: skip


def copy_of_step_3(tiny_model_dir, step_dir):
    """A GRPO checkpoint's Hugging Face copy under `step_dir`, with its processor and tokenizer."""
    copy = step_dir / "actor" / "huggingface"
    peft_saved_copy(tiny_model_dir, copy, 3)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"):
        shutil.copy(tiny_model_dir / name, copy)


@pytest.mark.parametrize("checkpoint", [".", "actor", "actor/huggingface", "../global_step_3"])
def test_a_checkpoint_named_from_inside_its_step_directory_is_exported_as_that_step(
    checkpoint, tiny_model_dir, tmp_path, monkeypatch
):
    step_dir = tmp_path / "checkpoints" / "global_step_3"
    copy_of_step_3(tiny_model_dir, step_dir)
    monkeypatch.chdir(step_dir)
    summary = export(ExportConfig(checkpoint=checkpoint, out_dir=str(tmp_path / "out")))
    assert summary["checkpoint"] == str(step_dir / "actor")
    _, first, _ = card_parts((tmp_path / "out" / "README.md").read_text())
    assert first.startswith("Step 3 of a GRPO run")


def test_a_link_named_by_its_step_to_the_checkpoints_storage_is_exported_as_that_step(tiny_model_dir, tmp_path):
    stored = tmp_path / "storage" / "ckpt-a1b2"
    copy_of_step_3(tiny_model_dir, stored)
    step_dir = tmp_path / "run" / "global_step_3"
    step_dir.parent.mkdir()
    step_dir.symlink_to(stored, target_is_directory=True)
    summary = export(ExportConfig(checkpoint=str(step_dir), out_dir=str(tmp_path / "out")))
    assert summary["checkpoint"] == str(step_dir / "actor")
    _, first, _ = card_parts((tmp_path / "out" / "README.md").read_text())
    assert first.startswith("Step 3 of a GRPO run")


def test_a_copy_without_a_processor_or_tokenizer_is_refused_naming_what_to_copy(tiny_model_dir, tmp_path):
    copy = tmp_path / "global_step_1" / "huggingface"
    peft_saved_copy(tiny_model_dir, copy, 1)
    with pytest.raises(ValueError) as refused:
        export(ExportConfig(checkpoint=str(copy.parent), out_dir=str(tmp_path / "out")))
    assert str(refused.value) == (
        f"{copy} holds no image processor settings and no tokenizer: copy the processor and tokenizer files "
        "(preprocessor_config.json or processor_config.json, tokenizer.json, tokenizer_config.json) of the model "
        "the run started from into it"
    )
    shutil.copy(tiny_model_dir / "preprocessor_config.json", copy)
    with pytest.raises(ValueError, match=f"{copy} holds no tokenizer: copy the processor"):
        export(ExportConfig(checkpoint=str(copy.parent), out_dir=str(tmp_path / "out")))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["global_step_1"]


def test_what_is_no_checkpoint_is_refused_naming_what_to_pass(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"dtype must be bfloat16, float16, float32 or saved \(.*\), got 'auto'"):
        export(ExportConfig(checkpoint=str(tiny_model_dir), out_dir=str(tmp_path / "out"), dtype="auto"))
    with pytest.raises(FileNotFoundError) as refused:
        export(ExportConfig(checkpoint=str(tiny_model_dir), out_dir=str(tmp_path / "out")))
    assert str(refused.value) == (
        f"{tiny_model_dir} is no verl checkpoint: expected a run's checkpoint directory ({CHECKPOINT_TRACKER}), "
        "global_step_N, its actor/, or its huggingface/"
    )
    (tmp_path / CHECKPOINT_TRACKER).write_text("7")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / CHECKPOINT_TRACKER} names step 7, and .*global_step_7 is missing"):
        export(ExportConfig(checkpoint=str(tmp_path), out_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def fsdp_checkpoint(model_dir, out_dir, ranks: int, *options: str):
    """`model_dir`'s model saved as verl's FSDP checkpoint by `ranks` CPU processes (tests/fsdp_checkpoint.py);
    returns its actor/ and the unsharded weights it must export as."""
    saved = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), str(FSDP_CHECKPOINT),
         str(model_dir), str(out_dir), *options],
        env=checkout_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr[-3000:]
    return out_dir / "actor", load_file(out_dir / "reference.safetensors")


@pytest.fixture(scope="module")
def sharded_checkpoints(tiny_model_dir, tmp_path_factory):
    """The tiny model as verl saves it from 3 ranks (rows split unevenly: 32 rows as 11, 11, 10); with the
    output layer tied to the input embeddings, from 2 ranks; and with LoRA adapters on the language model,
    from 2 replicas of 2 ranks each (hybrid sharding)."""
    root = tmp_path_factory.mktemp("fsdp_checkpoints")
    return {
        "plain": fsdp_checkpoint(tiny_model_dir, root / "plain", 3),
        "tied": fsdp_checkpoint(tiny_model_dir, root / "tied", 2, "--tied"),
        "lora": fsdp_checkpoint(tiny_model_dir, root / "lora", 4, "--lora-rank", "4", "--replicas", "2"),
    }


def exported_weights(actor, out, dtype="bfloat16"):
    """The export's summary and its weights as transformers loads them, in the dtype written."""
    summary = export(ExportConfig(checkpoint=str(actor), out_dir=str(out), dtype=dtype))
    return summary, AutoModelForImageTextToText.from_pretrained(out, dtype="auto").state_dict()


def test_the_shards_of_every_rank_are_exported_as_the_unsharded_model_and_as_verls_merger_writes_it(sharded_checkpoints, tmp_path):
    actor, reference = sharded_checkpoints["plain"]
    summary, as_saved = exported_weights(actor, tmp_path / "saved", "saved")
    assert (summary["weights_from"], summary["lora_merged"], summary["dtypes"]) == ("FSDP shards", False, ["F32"])
    assert as_saved.keys() == reference.keys() and all(as_saved[name].equal(reference[name]) for name in reference)
    assert "processor_config.json" in summary["files"] and "model.safetensors.index.json" not in summary["files"]

    summary, exported = exported_weights(actor, tmp_path / "bf16")
    assert summary["dtypes"] == ["BF16"] and summary["weight_bytes"] < 0.51 * sum(t.nbytes for t in reference.values())
    # The config names the dtype written, which transformers and vLLM then load the model in.
    for out, dtype in (("saved", "float32"), ("bf16", "bfloat16")):
        config = json.loads((tmp_path / out / "config.json").read_text())
        assert config["dtype"] == config["text_config"]["dtype"] == config["vision_config"]["dtype"] == dtype
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "bf16", dtype="auto").dtype == torch.bfloat16
    merger = subprocess.run(
        [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir", str(actor),
         "--target_dir", str(tmp_path / "merger")],
        env=checkout_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert merger.returncode == 0, merger.stderr[-3000:]
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merger", dtype="auto").state_dict()
    assert exported.keys() == merged.keys() and all(exported[name].equal(merged[name]) for name in merged)


def test_shards_are_written_over_several_files_with_an_index_where_one_would_be_too_large(sharded_checkpoints, tmp_path):
    actor, reference = sharded_checkpoints["plain"]
    out = tmp_path / "out"
    assert write_fsdp_weights(actor, out, actor / "huggingface", max_file_bytes=200_000) == 0
    files = sorted(path.name for path in out.glob("*.safetensors"))
    index = json.loads((out / WEIGHTS_INDEX).read_text())
    total = sum(tensor.nbytes for tensor in reference.values())
    assert len(files) >= math.ceil(total / 200_000) and sorted(set(index["weight_map"].values())) == files
    # Each file's data within the limit; its header holds the names, shapes and offsets of its weights.
    assert all(path.stat().st_size < 200_000 + 10_000 for path in out.glob("*.safetensors"))
    assert index["metadata"]["total_size"] == total
    shutil.copy(actor / "huggingface" / "config.json", out)
    loaded = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).state_dict()
    assert loaded.keys() == reference.keys() and all(loaded[name].equal(reference[name]) for name in reference)


@pytest.mark.parametrize("family", ["tiny_internvl_dir", "tiny_qwen3vl_dir"])
def test_the_shards_of_internvl_and_qwen3_vl_are_exported_as_their_unsharded_models(family, request, tmp_path):
    actor, reference = fsdp_checkpoint(request.getfixturevalue(family), tmp_path / "checkpoint", 2)
    summary, exported = exported_weights(actor, tmp_path / "out", "saved")
    assert summary["model_type"] == json.loads((actor / "huggingface" / "config.json").read_text())["model_type"]
    assert exported.keys() == reference.keys() and all(exported[name].equal(reference[name]) for name in reference)


def test_a_tied_output_layer_is_exported_once_and_loads_tied(sharded_checkpoints, tmp_path):
    actor, reference = sharded_checkpoints["tied"]
    embeddings = "model.language_model.embed_tokens.weight"
    assert reference["lm_head.weight"].equal(reference[embeddings])
    _, exported = exported_weights(actor, tmp_path / "out", "saved")
    # Saved under both names, transformers would load them as two weights and leave them untied.
    assert "lm_head.weight" not in load_file(tmp_path / "out" / "model.safetensors")
    assert all(exported[name].equal(reference[name]) for name in reference)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_lora_shards_of_hybrid_sharding_are_exported_with_the_adapters_merged_as_peft_merges_them(sharded_checkpoints, tiny_model_dir, tmp_path):
    actor, reference = sharded_checkpoints["lora"]
    summary, exported = exported_weights(actor, tmp_path / "out", "saved")
    assert (summary["weights_from"], summary["lora_merged"]) == ("FSDP shards", True)
    written = load_file(tmp_path / "out" / "model.safetensors")
    assert not any(".lora_" in name or ".base_layer." in name for name in written)
    assert exported.keys() == reference.keys()
    assert all(torch.allclose(exported[name], reference[name], rtol=1e-5, atol=1e-6) for name in reference)
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    adapted = [name for name in reference if not torch.allclose(reference[name], base[name], rtol=1e-3, atol=1e-4)]
    assert adapted and all(".language_model." in name and name.endswith("proj.weight") for name in adapted)


def test_shards_missing_a_rank_or_of_another_model_are_refused_naming_what_differs(sharded_checkpoints, tmp_path):
    actor, _ = sharded_checkpoints["plain"]
    partial = tmp_path / "partial" / "actor"
    shutil.copytree(actor, partial)
    (partial / "model_world_size_3_rank_1.pt").unlink()
    with pytest.raises(FileNotFoundError) as refused:
        export(ExportConfig(checkpoint=str(partial), out_dir=str(tmp_path / "out")))
    assert str(refused.value) == (
        f"{partial} lacks 1 of its 3 ranks' model shards (model_world_size_3_rank_1.pt); a checkpoint saved "
        "without `model` in save_contents holds none"
    )

    for change, refusal in (
        # One layer more: its weights are missing.
        (lambda text: text.update(num_hidden_layers=text["num_hidden_layers"] + 1,
                                  layer_types=[*text["layer_types"], text["layer_types"][-1]]),
         r"\d+ missing \(model.language_model.layers.2.[^)]*\), 0 unexpected \(\), 0 of another shape"),
        # Wider MLPs: three of each layer's weights have other shapes.
        (lambda text: text.update(intermediate_size=text["intermediate_size"] * 2),
         r"0 missing \(\), 0 unexpected \(\), 6 of another shape \(model.language_model.layers.0.mlp.gate_proj.weight "
         r"\[128, 64\] for \[256, 64\]"),
    ):  # fmt: skip
        other = tmp_path / "other" / "actor"
        shutil.rmtree(other.parent, ignore_errors=True)
        shutil.copytree(actor, other)
        config = json.loads((other / "huggingface" / "config.json").read_text())
        change(config["text_config"])
        (other / "huggingface" / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=(
            rf"the shards in {other} are not the weights of the model {other}/huggingface/config.json describes: {refusal}"
        )):  # fmt: skip
            export(ExportConfig(checkpoint=str(other), out_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_rows_larger_than_one_write_moves_are_written_whole(tmp_path):
    # Linux moves at most 2**31 - 4096 bytes a write: a single rank's float32 embeddings of Qwen2.5-VL-7B
    # (152064 x 3584) are 2.18 GB.
    rows = torch.arange(2**31 + 4096 * 3, dtype=torch.uint8)
    target = tmp_path / "weights.bin"
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        write_at(descriptor, tensor_bytes(rows), 8)
    finally:
        os.close(descriptor)
    assert target.stat().st_size == 8 + rows.numel()
    with open(target, "rb") as written:
        written.seek(8 + 2**31 - 4096 - 8)
        tail = written.read()
    assert tail == rows[2**31 - 4096 - 8 :].numpy().tobytes()

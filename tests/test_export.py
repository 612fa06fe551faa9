"""`python -m mixed_r1_verl.export`: a checkpoint as a Hugging Face model directory. Exports of checkpoints
that training wrote are checked beside those runs (tests/test_train_on_cpu.py, tests/test_lora.py)."""

import json
import shutil
import subprocess
import sys

import pytest
from test_lora import assert_merged_as_peft_merges, peft_saved_copy

from data_helpers import checkout_env
from mixed_r1_verl.data.model_files import CHECKPOINT_TRACKER
from mixed_r1_verl.export import ExportConfig, export
from mixed_r1_verl.models.lora import saved_by_peft


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
    assert summary["files"] == before == sorted(path.name for path in out.iterdir())
    assert_merged_as_peft_merges(out, expected)
    assert saved_by_peft(copy) and sorted(path.name for path in copy.iterdir()) == before
    assert sorted(path.name for path in out.parent.iterdir()) == ["step_3"]

    refused = export_command(f"checkpoint={copy}", f"out_dir={out}")
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"FileExistsError: {out} exists and is not empty: export writes a new directory"
    )  # fmt: skip


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
    with pytest.raises(ValueError, match="dtype must be auto .* or saved .*, got 'float32'"):
        export(ExportConfig(checkpoint=str(tiny_model_dir), out_dir=str(tmp_path / "out"), dtype="float32"))
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

"""The run config saved beside each checkpoint, compared with a resumed run's. The trainers' notes on
resuming are checked beside their resumed runs (tests/test_train_on_cpu.py, tests/test_sft.py)."""

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import transformers
from omegaconf import OmegaConf

from mixed_r1_verl.run_config import (
    CODE,
    SHOWN_CHANGES,
    changed_settings,
    resumed_settings_note,
    train_file_digests,
    write_run_config,
)


def test_changed_settings_name_each_setting_that_differs_was_added_or_was_removed():
    saved = {"data": {"train_files": ["a.parquet"], "num_workers": 2}, "trainer": {"save_freq": 2, "logger": ["console"]},
             "sampler": {"kwargs": {}}}  # fmt: skip
    current = {"data": {"train_files": ["a.parquet", "b.parquet"], "num_workers": 2}, "trainer": {"logger": ["console"]},
               "mixed_r1": {"stop_by": 1800000000}, "sampler": {"kwargs": {"metric": "correct"}}}  # fmt: skip
    assert changed_settings(saved, current) == [
        "data.train_files: ['a.parquet'] -> ['a.parquet', 'b.parquet']",
        "mixed_r1: None -> {'stop_by': 1800000000}",  # a mapping added whole
        "sampler.kwargs.metric: None -> 'correct'",
        "trainer.save_freq: 2 -> None",
    ]
    assert changed_settings(saved, saved) == []


def test_a_resumed_run_lists_its_changes_up_to_a_limit_and_counts_the_rest(tmp_path):
    saved = OmegaConf.create({"optim": {"lr": 1e-5}, "paths": {f"p{i:02d}": i for i in range(30)}, "lr_alias": "${optim.lr}"})
    write_run_config(saved, tmp_path, train_file_digests(saved))
    assert resumed_settings_note(tmp_path, saved, {}) is None
    assert resumed_settings_note(tmp_path / "no_config", saved, {}) is None

    current = OmegaConf.merge(saved, {"optim": {"lr": 2e-5}, "paths": {f"p{i:02d}": -i for i in range(1, 30)}})
    note = resumed_settings_note(tmp_path, current, {}).splitlines()
    assert note[0] == (
        f"{tmp_path.name}: resumed with 31 setting(s) changed since it was saved ({tmp_path / 'mixed_r1_run.yaml'} "
        "holds the saved ones):"
    )
    # Interpolations compare as resolved: `lr_alias` follows optim.lr.
    assert note[1:4] == ["  lr_alias: 1e-05 -> 2e-05", "  optim.lr: 1e-05 -> 2e-05", "  paths.p01: 1 -> -1"]
    assert len(note) == 1 + SHOWN_CHANGES + 1 and note[-1] == f"  ... and {31 - SHOWN_CHANGES} more"


def test_a_run_resumed_on_training_files_written_again_says_which(tmp_path):
    """The same path, other rows (the converter run again into the same directory): the saved data
    position would be applied to them."""
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"id": list(range(16))}), first)
    pq.write_table(pa.table({"id": list(range(8))}), second)
    config = OmegaConf.create({"data": {"train_files": [str(first), str(second)]}})
    checkpoint, later = tmp_path / "global_step_4", tmp_path / "global_step_8"
    checkpoint.mkdir()
    later.mkdir()
    read = train_file_digests(config)  # as the run's datasets loaded them
    write_run_config(config, checkpoint, read)
    assert resumed_settings_note(checkpoint, config, train_file_digests(config)) is None
    bytes_then = {path: path.stat().st_size for path in (first, second)}
    pq.write_table(pa.table({"id": list(range(100, 108))}), second)  # as many rows, others
    pq.write_table(pa.table({"id": list(range(24))}), first)
    write_run_config(config, later, read)  # a checkpoint saved after the files were written again
    assert resumed_settings_note(checkpoint, config, train_file_digests(config)).splitlines() == [
        "global_step_4: resumed on training data written again since it was saved; the data position it saved "
        "(rows read this epoch) is applied to these files' rows:",
        f"  {first}: 16 rows, {bytes_then[first]} bytes -> 24 rows, {first.stat().st_size} bytes",
        f"  {second}: 8 rows, {bytes_then[second]} bytes -> 8 rows, {second.stat().st_size} bytes",
    ]
    now = train_file_digests(config)
    later_note, earlier_note = (resumed_settings_note(step, config, now) for step in (later, checkpoint))
    assert later_note.splitlines()[1:] == earlier_note.splitlines()[1:]


def parquet_footer(path):
    data = path.read_bytes()
    return data[-8 - int.from_bytes(data[-8:-4], "little") :]


def test_a_training_file_written_again_with_ground_truths_of_the_same_size_is_named(tmp_path):
    """Its footer (offsets, sizes, min/max statistics) stays byte for byte what it was."""
    train = tmp_path / "train.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "answer": ["A", "B", "C"]}), train)
    footer_then = parquet_footer(train)
    config = OmegaConf.create({"data": {"train_files": [str(train)]}})
    checkpoint = tmp_path / "global_step_2"
    checkpoint.mkdir()
    write_run_config(config, checkpoint, train_file_digests(config))
    pq.write_table(pa.table({"id": ["a", "b", "c"], "answer": ["B", "A", "C"]}), train)  # two answers corrected
    assert parquet_footer(train) == footer_then
    assert resumed_settings_note(checkpoint, config, train_file_digests(config)).splitlines()[1:] == [
        f"  {train}: 3 rows, {train.stat().st_size} bytes -> 3 rows, {train.stat().st_size} bytes"
    ]


def test_a_checkpoint_with_footer_digests_is_compared_by_rows_and_bytes(tmp_path):
    train = tmp_path / "train.parquet"
    pq.write_table(pa.table({"id": list(range(4))}), train)
    config = OmegaConf.create({"data": {"train_files": [str(train)]}})
    checkpoint = tmp_path / "global_step_2"
    checkpoint.mkdir()
    saved = {str(train): {"bytes": train.stat().st_size, "rows": 4, "footer_sha256": "0" * 64}}
    write_run_config(config, checkpoint, saved)
    assert resumed_settings_note(checkpoint, config, train_file_digests(config)) is None
    pq.write_table(pa.table({"id": list(range(5))}), train)
    assert "4 rows" in resumed_settings_note(checkpoint, config, train_file_digests(config))


def test_a_checkpoint_records_the_code_and_the_library_versions_that_ran(tmp_path):
    write_run_config(OmegaConf.create({"trainer": {"seed": 0}}), tmp_path, {})
    code = json.loads((tmp_path / CODE).read_text())
    libraries = code["libraries"]
    assert (libraries["torch"], libraries["transformers"]) == (torch.__version__, transformers.__version__)
    assert libraries["verl"] == "0.9.1" and "vllm" in libraries and "flash-attn" in libraries
    checkout = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert code["mixed_r1_verl"]["git_commit"] == (commit.stdout.strip() if commit.returncode == 0 else None)

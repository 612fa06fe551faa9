"""The run config saved beside each checkpoint, compared with a resumed run's. The trainers' notes on
resuming are checked beside their resumed runs (tests/test_train_on_cpu.py, tests/test_sft.py)."""

from omegaconf import OmegaConf

from mixed_r1_verl.run_config import SHOWN_CHANGES, changed_settings, resumed_settings_note, write_run_config


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
    write_run_config(saved, tmp_path)
    assert resumed_settings_note(tmp_path, saved) is None
    assert resumed_settings_note(tmp_path / "no_config", saved) is None

    current = OmegaConf.merge(saved, {"optim": {"lr": 2e-5}, "paths": {f"p{i:02d}": -i for i in range(1, 30)}})
    note = resumed_settings_note(tmp_path, current).splitlines()
    assert note[0] == (
        f"{tmp_path.name}: resumed with 31 setting(s) changed since it was saved ({tmp_path / 'mixed_r1_run.yaml'} "
        "holds the saved ones):"
    )
    # Interpolations compare as resolved: `lr_alias` follows optim.lr.
    assert note[1:4] == ["  lr_alias: 1e-05 -> 2e-05", "  optim.lr: 1e-05 -> 2e-05", "  paths.p01: 1 -> -1"]
    assert len(note) == 1 + SHOWN_CHANGES + 1 and note[-1] == f"  ... and {31 - SHOWN_CHANGES} more"

"""The step budget behind `mixed_r1.stop_by`; the trainer acting on it runs in tests/test_train_on_cpu.py."""

import time

import pytest
from omegaconf import OmegaConf

from mixed_r1_verl.main import exit_if_stop_by_is_not_ahead
from mixed_r1_verl.settings import EXIT_USAGE
from mixed_r1_verl.verl_adapter.stop_by import EARLY_END_FILE, StopBy, planned_last_step, write_early_end

NOW = 1_800_000_000.0


def test_the_first_step_is_the_estimate_until_later_steps_replace_its_warm_up():
    stop_by = StopBy(stop_by=NOW + 1000, save_estimate_s=60)
    stop_by.record_cycle(90.0)  # rollout warm-up included
    assert stop_by.step_estimate_s() == 90.0
    for seconds in (10.0, 12.0, 30.0):  # the 30 s step validated
        stop_by.record_cycle(seconds)
    assert stop_by.step_estimate_s() == 12.0


def test_steps_that_fit_leave_the_checkpoint_its_estimate_until_a_save_is_timed():
    stop_by = StopBy(stop_by=NOW + 100, save_estimate_s=60)
    stop_by.record_cycle(10.0)
    assert stop_by.steps_that_fit(NOW, validates_last_step=False) == 4  # (100 - 60) / 10
    stop_by.record_save(5.0)
    assert stop_by.steps_that_fit(NOW, validates_last_step=False) == 9  # (100 - 5) / 10
    stop_by.record_save(2.0)
    assert stop_by.save_s == 5.0, "the slowest save timed is the one reserved"


def test_the_last_steps_validation_is_reserved_only_when_it_validates():
    stop_by = StopBy(stop_by=NOW + 100, save_estimate_s=0)
    stop_by.record_cycle(10.0)
    stop_by.record_validation(35.0)
    assert stop_by.steps_that_fit(NOW, validates_last_step=True) == 6  # (100 - 35) / 10
    assert stop_by.steps_that_fit(NOW, validates_last_step=False) == 10
    stop_by.record_validation(5.0)
    assert stop_by.steps_that_fit(NOW, validates_last_step=True) == 6, "the slowest validation timed is reserved"


@pytest.mark.parametrize(
    "seconds_left, expected_last",
    [(1000.0, 40), (155.0, 26), (25.0, 13), (19.0, 12), (-5.0, 12)],
)
def test_the_last_step_is_the_planned_one_or_the_last_that_fits(seconds_left, expected_last):
    stop_by = StopBy(stop_by=NOW + seconds_left, save_estimate_s=10)
    stop_by.record_cycle(10.0)
    assert stop_by.last_step(step=12, planned_last=40, now=NOW, validates_last_step=False) == expected_last


def test_a_run_ended_early_leaves_its_planned_last_step_beside_its_checkpoints(tmp_path):
    checkpoints = tmp_path / "ckpt"
    assert planned_last_step(checkpoints) is None
    write_early_end(checkpoints, last_step=12, planned_last_step=40, stop_by=NOW)
    write_early_end(checkpoints, last_step=9, planned_last_step=40, stop_by=NOW)  # a later estimate moves it
    assert planned_last_step(checkpoints) == 40
    assert [path.name for path in checkpoints.iterdir()] == [EARLY_END_FILE]


SAVE_ESTIMATE_RULE = "the seconds a checkpoint save is assumed to take before mixed_r1.stop_by must be a finite number"


@pytest.mark.parametrize(
    "stop_by, estimate, refusal",
    [
        (float("inf"), 60, "mixed_r1.stop_by=inf is not a Unix time in seconds"),
        (float("nan"), 60, "mixed_r1.stop_by=nan is not a Unix time in seconds"),
        (None, -600, f"mixed_r1.stop_save_estimate_s=-600: {SAVE_ESTIMATE_RULE}"),
        (None, "abc", f"mixed_r1.stop_save_estimate_s='abc': {SAVE_ESTIMATE_RULE}"),
        (None, None, f"mixed_r1.stop_save_estimate_s=None: {SAVE_ESTIMATE_RULE}"),
        (None, float("inf"), f"mixed_r1.stop_save_estimate_s=inf: {SAVE_ESTIMATE_RULE}"),
    ],
)
def test_a_stop_by_that_is_no_finite_time_or_a_save_estimate_that_is_no_seconds_is_refused_at_the_entry(
    stop_by, estimate, refusal, capsys
):
    """The trainer would stop on them after the first step (inf, nan), when it is built ('abc', null) or plan
    its last checkpoint past stop_by (a negative estimate). The SFT entry checks them alike."""
    ahead = time.time() + 3600
    mixed_r1 = OmegaConf.create({"stop_by": ahead if stop_by is None else stop_by, "stop_save_estimate_s": estimate})
    with pytest.raises(SystemExit) as stopped:
        exit_if_stop_by_is_not_ahead(mixed_r1)
    assert stopped.value.code == EXIT_USAGE and refusal in capsys.readouterr().err
    exit_if_stop_by_is_not_ahead(OmegaConf.create({"stop_by": ahead, "stop_save_estimate_s": 0}))
    exit_if_stop_by_is_not_ahead(OmegaConf.create({"stop_by": None, "stop_save_estimate_s": estimate}))

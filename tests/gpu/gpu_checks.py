"""Names and assertions shared by the GPU acceptance tests."""

from __future__ import annotations

import pytest

from mixed_r1_verl.run_logs import DEADLINE_ENV, LoggedRun

TASKS = ("chart", "grounding", "matching", "open_ended")
RESUME_FROM_STEP = 3


def skip_if_out_of_time(run: LoggedRun) -> None:
    """A run stopped at the verification deadline is not a result: the test is skipped, and a rerun
    with more time runs it again."""
    if run.out_of_time:
        step = run.last_step()
        progress = "no training step logged" if step is None else f"last step logged: {step}"
        pytest.skip(
            f"{run.name} did not finish before ${DEADLINE_ENV} ({progress}); rerun with more time ({run.log_path})"
        )


def assert_succeeded(run: LoggedRun) -> None:
    skip_if_out_of_time(run)
    assert run.returncode == 0, f"{run.name} exited {run.returncode}; end of {run.log_path}:\n{run.log_tail()}"


def output_lines(run: LoggedRun) -> list[str]:
    """The run's output, without the command line `run_logged` writes first."""
    return run.log_text().splitlines()[1:]

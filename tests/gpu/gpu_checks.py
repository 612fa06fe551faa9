"""Names and assertions shared by the GPU acceptance tests."""

from __future__ import annotations

from mixed_r1_verl.run_logs import LoggedRun

TASKS = ("chart", "grounding", "matching", "open_ended")
RESUME_FROM_STEP = 3


def assert_succeeded(run: LoggedRun) -> None:
    assert run.returncode == 0, f"{run.name} exited {run.returncode}; end of {run.log_path}:\n{run.log_tail()}"


def output_lines(run: LoggedRun) -> list[str]:
    """The run's output, without the command line `run_logged` writes first."""
    return run.log_text().splitlines()[1:]

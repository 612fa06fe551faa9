"""Ending a GRPO run before a wall-clock time (`mixed_r1.stop_by`, a Unix time in seconds) with a checkpoint.

A Slurm job or a reserved node is killed at its end; training that reaches that moment loses every step
since its last checkpoint. With `mixed_r1.stop_by` the `mixed_r1_sync` trainer estimates after every
step how many more steps still fit, each as long as a typical step so far, with time left for the last
one's checkpoint and validation, and makes the last of them the run's last step (saved and validated as
verl does at `trainer.total_training_steps`). When not even one more fits, it saves the checkpoint of the
step just finished and ends there. A rerun with `trainer.resume_mode=auto` carries on from it. Each
such decision is written to `<trainer.default_local_dir>/stop_by.json` (EARLY_END_FILE): the step the run
ends at and the one it had planned, so that what comes after the run can tell a run ended early.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf


@dataclass
class StopBy:
    """Step timings of one run and the steps they leave before `stop_by`."""

    stop_by: float
    # What a checkpoint save is assumed to take until one was timed.
    save_estimate_s: float
    cycles_s: list[float] = field(default_factory=list)
    save_s: float | None = None
    validation_s: float = 0.0

    def record_cycle(self, seconds: float) -> None:
        """One step, from the end of the step before (or the start of training) to the end of this one."""
        self.cycles_s.append(seconds)

    def record_save(self, seconds: float) -> None:
        self.save_s = max(seconds, self.save_s or 0.0)

    def record_validation(self, seconds: float) -> None:
        self.validation_s = max(seconds, self.validation_s)

    def step_estimate_s(self) -> float:
        """A typical step: the median after the first (which also warms up the rollout), else the first."""
        later = self.cycles_s[1:]
        return statistics.median(later) if later else self.cycles_s[0]

    def reserve_s(self, validates_last_step: bool) -> float:
        """Time kept after the last step: its checkpoint and, when it validates, its validation."""
        save = self.save_estimate_s if self.save_s is None else self.save_s
        return save + (self.validation_s if validates_last_step else 0.0)

    def steps_that_fit(self, now: float, validates_last_step: bool) -> int:
        """How many more steps can run from `now` and still save (and validate) the last one by stop_by."""
        left = self.stop_by - now - self.reserve_s(validates_last_step)
        return max(0, math.floor(left / self.step_estimate_s()))

    def last_step(self, step: int, planned_last: int, now: float, validates_last_step: bool) -> int:
        """The step the run should end at, having just finished `step`: never past `planned_last`."""
        return min(planned_last, step + self.steps_that_fit(now, validates_last_step))

    def estimate(self, now: float, validates_last_step: bool) -> str:
        """What the decision rests on, for the line that announces it."""
        return (
            f"{self.stop_by - now:.0f} s left; a step takes about {self.step_estimate_s():.1f} s, "
            f"{self.reserve_s(validates_last_step):.0f} s are kept for the last checkpoint and validation"
        )

    @classmethod
    def from_config(cls, config) -> StopBy | None:
        """From `mixed_r1.stop_by` and `mixed_r1.stop_save_estimate_s`; None without a stop_by."""
        stop_by = OmegaConf.select(config, "mixed_r1.stop_by")
        if stop_by is None:
            return None
        return cls(float(stop_by), float(OmegaConf.select(config, "mixed_r1.stop_save_estimate_s")))


EARLY_END_FILE = "stop_by.json"


def write_early_end(checkpoint_dir: str | Path, last_step: int, planned_last_step: int, stop_by: float) -> None:
    """Records in `checkpoint_dir` that the run writing there now ends at `last_step`, before its planned one."""
    record = {"last_step": last_step, "planned_last_step": planned_last_step, "stop_by": stop_by}
    path = Path(checkpoint_dir) / EARLY_END_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record) + "\n")
    partial.replace(path)


def planned_last_step(checkpoint_dir: str | Path) -> int | None:
    """The planned last step of the latest run that ended early in `checkpoint_dir`; None if none did."""
    path = Path(checkpoint_dir) / EARLY_END_FILE
    return int(json.loads(path.read_text())["planned_last_step"]) if path.is_file() else None

"""The tasks Mixed-Reward scores: Mixed-R1's four, and those that other installed packages add.

A package adds a task without changing this one. It declares a `Task` under the entry point group
`mixed_r1_verl.tasks`, named as the task:

    # setup.py of the package
    entry_points={"mixed_r1_verl.tasks": ["counting = my_rewards.counting:COUNTING"]}

    # my_rewards/counting.py
    from mixed_r1_verl.rewards import Task

    COUNTING = Task("counting", counting_accuracy, "Answer with a single whole number.")

Installed where training runs, the task is known to every process that reads entry points: the
converter and the data engine accept its records and ask them with its instruction, and the reward
(in verl's reward workers, in evaluation and in the data engine's difficulty stage) scores them with its
accuracy. Per-task metrics, filtering and reports name it like the four.

A task that needs more of a record than its answer (every annotator's answer, a tolerance per row)
declares typed reward fields; records give them under `reward_info`, the converter checks and writes them
with their types, and the accuracy reads them from `extra_info["reward_info"]`:

    VQA = Task("vqa", vqa_accuracy, "Answer with a word or a short phrase.", reward_fields={"answers": list[str]})
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import numbers
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import get_args, get_origin

from mixed_r1_verl.cli import EXIT_USAGE

BUILTIN_TASKS = ("matching", "chart", "grounding", "open_ended")
# Accuracy at which a response counts as correct (the binary `correct` field, e.g. for judging whether a
# GRPO group has any signal). matching and chart accuracies are already 0/1. grounding: IoU 0.5, the
# usual detection criterion (with `iou_threshold` the accuracy itself is 0/1 at that IoU, so correct
# follows it). open_ended: BMAS 0.5, our choice (the paper gives none), the same as the data engine's
# difficulty filter.
DEFAULT_CORRECT_THRESHOLDS = {"matching": 1.0, "chart": 1.0, "grounding": 0.5, "open_ended": 0.5}
TASK_ENTRY_POINT_GROUP = "mixed_r1_verl.tasks"
# Names the reports use for rows that are not one task's: no task may take them.
RESERVED_TASK_NAMES = ("unknown", "other", "all")
TASK_NAME = re.compile(r"[a-z][a-z0-9_]*")
# The installed tasks of the training driver (name -> package), for every Ray worker to check its own.
DRIVER_TASKS_ENV_VAR = "MIXED_R1_DRIVER_TASKS"

AccuracyFunction = Callable[[str, str, Mapping], float]
# The types a task's reward field may have: what parquet stores with its type and JSON records give.
REWARD_FIELD_TYPES = (str, float, int, bool, list[str], list[float], list[int])


class TaskPluginError(ValueError):
    """An installed task cannot be used: it names the entry point and the reason. A bad input, as the
    commands take it: it ends them with its message, without a traceback."""


@dataclass(frozen=True)
class Task:
    """A task another package adds.

    `accuracy(answer, ground_truth, extra_info)` gets the text of the response's last `<answer>` block,
    the record's answer (the row's `reward_model.ground_truth`) and the row's `extra_info`, and returns
    a number in [0, 1]; an exception or another value scores the response 0 and counts as a reward error.
    `instruction` ends the task's prompts (before the reasoning-format instruction). A response is
    `correct` when its accuracy reaches `correct_threshold`. `reward_fields` (name -> one of
    REWARD_FIELD_TYPES) are what a record may give under `reward_info` for the accuracy to read from
    `extra_info["reward_info"]` (None where a record gives none).
    """

    name: str
    accuracy: AccuracyFunction
    instruction: str
    correct_threshold: float = 1.0
    reward_fields: Mapping[str, type] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not TASK_NAME.fullmatch(self.name):
            raise ValueError(f"task name {self.name!r}: expected lower-case letters, digits and _, from a letter")
        if self.name in BUILTIN_TASKS or self.name in RESERVED_TASK_NAMES:
            taken = "a built-in task" if self.name in BUILTIN_TASKS else "reserved for report rows"
            raise ValueError(f"task name {self.name!r} is {taken}")
        if not callable(self.accuracy):
            raise ValueError(f"task {self.name!r}: accuracy must be callable, got {type(self.accuracy).__name__}")
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ValueError(f"task {self.name!r}: instruction must be a non-empty string")
        threshold = self.correct_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
            raise ValueError(f"task {self.name!r}: correct_threshold={threshold!r}, expected a number in (0, 1]")
        if not isinstance(self.reward_fields, Mapping):
            raise ValueError(f"task {self.name!r}: reward_fields must map field names to types")
        for name, kind in self.reward_fields.items():
            if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
                raise ValueError(f"task {self.name!r}: reward field {name!r}: expected lower-case letters, digits and _")
            if kind not in REWARD_FIELD_TYPES:
                raise ValueError(
                    f"task {self.name!r}: reward field {name!r} has type {type_name(kind)}, expected one of "
                    + ", ".join(map(type_name, REWARD_FIELD_TYPES))
                )

    def score(self, answer: str, ground_truth, extra_info: Mapping) -> float:
        """The task's accuracy for one answer, checked to be a number in [0, 1]. Its reward fields reach the
        accuracy as plain Python values (verl's batches hold lists as numpy arrays)."""
        reward_info = extra_info.get("reward_info")
        if reward_info:
            plain = {name: value.tolist() if hasattr(value, "tolist") else value for name, value in reward_info.items()}
            extra_info = {**extra_info, "reward_info": plain}
        accuracy = self.accuracy(answer, ground_truth, extra_info)
        # numbers.Real takes numpy's numbers too (np.float32, np.int64), not numpy's bool.
        if isinstance(accuracy, bool) or not isinstance(accuracy, numbers.Real) or not 0 <= accuracy <= 1:
            raise ValueError(f"task {self.name!r}'s accuracy returned {accuracy!r}, expected a number in [0, 1]")
        if math.isnan(accuracy):
            raise ValueError(f"task {self.name!r}'s accuracy returned NaN")
        return float(accuracy)


def type_name(kind) -> str:
    """`str`, `list[str]`: a reward field's type as Python writes it."""
    return str(kind) if get_origin(kind) is list else getattr(kind, "__name__", repr(kind))


def reward_field_value_error(kind: type, value) -> str | None:
    """Why `value` is not of the reward field type `kind`; None when it is (an int is a float too; a bool
    is no number; a float must be finite)."""
    if get_origin(kind) is not list:
        fits = {
            str: isinstance(value, str),
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
        }[kind]
        return None if fits else f"expected {'a finite number' if kind is float else type_name(kind)}, got {value!r}"
    if not isinstance(value, list):
        return f"expected {type_name(kind)}, got {value!r}"
    (item_kind,) = get_args(kind)
    for index, item in enumerate(value):
        if error := reward_field_value_error(item_kind, item):
            return f"item {index}: {error}"
    return None


def _entry_point_name(entry_point: importlib.metadata.EntryPoint) -> str:
    package = f" (package {entry_point.dist.name})" if entry_point.dist is not None else ""
    return f"entry point {entry_point.name} = {entry_point.value} of group {TASK_ENTRY_POINT_GROUP}{package}"


@functools.cache
def plugin_tasks() -> dict[str, Task]:
    """The tasks installed packages add, by name; read once per process. Raises TaskPluginError naming
    the entry point when one cannot be loaded, is no `Task`, or names another task."""
    tasks: dict[str, Task] = {}
    for entry_point in importlib.metadata.entry_points(group=TASK_ENTRY_POINT_GROUP):
        where = _entry_point_name(entry_point)
        try:
            task = entry_point.load()
        except Exception as error:
            raise TaskPluginError(f"{where} cannot be loaded: {type(error).__name__}: {error}") from error
        if not isinstance(task, Task):
            raise TaskPluginError(f"{where} is a {type(task).__name__}, not a mixed_r1_verl.rewards.Task")
        if task.name != entry_point.name:
            raise TaskPluginError(f"{where} holds task {task.name!r}: the entry point must be named as its task")
        if task.name in tasks:
            raise TaskPluginError(f"{where}: another installed package adds task {task.name!r} too")
        for name, kind in task.reward_fields.items():
            other = next((other for other in tasks.values() if other.reward_fields.get(name, kind) != kind), None)
            if other is not None:
                raise TaskPluginError(
                    f"{where}: reward field {name!r} of task {task.name!r} is a {type_name(kind)}, and task "
                    f"{other.name!r} declares it a {type_name(other.reward_fields[name])}: records of both share "
                    "one parquet column, so a field name takes one type"
                )
        tasks[task.name] = task
    return tasks


def task_names() -> tuple[str, ...]:
    """Every task a record may have: the four of Mixed-R1, then the installed ones."""
    return (*BUILTIN_TASKS, *plugin_tasks())


def reward_fields(task: str) -> Mapping[str, type]:
    """The reward fields a record of `task` may give (none for the four)."""
    return {} if task in BUILTIN_TASKS else plugin_tasks()[task].reward_fields


def all_reward_fields() -> dict[str, type]:
    """Every installed task's reward fields, by name: the converter's `extra_info.reward_info` columns."""
    return {name: kind for task in plugin_tasks().values() for name, kind in task.reward_fields.items()}


def default_correct_threshold(task: str) -> float:
    """The accuracy at which a response of `task` is correct: the built-in default, or the installed task's own."""
    if task in BUILTIN_TASKS:
        return DEFAULT_CORRECT_THRESHOLDS[task]
    return plugin_tasks()[task].correct_threshold


def installed_task_packages() -> dict[str, str]:
    """The package each installed task comes from (its entry point where no package is known)."""
    plugin_tasks()  # refuses a broken entry point first
    entry_points = importlib.metadata.entry_points(group=TASK_ENTRY_POINT_GROUP)
    return {point.name: point.dist.name if point.dist is not None else point.value for point in entry_points}


def driver_tasks_env() -> dict[str, str]:
    """The variable that tells the Ray workers which tasks the driver has installed, and from which package."""
    packages = installed_task_packages()
    return {DRIVER_TASKS_ENV_VAR: json.dumps(packages, sort_keys=True)} if packages else {}


def check_driver_tasks_are_installed(environ) -> None:
    """In a Ray worker: its installed tasks load, and the driver's are installed here too (else this worker
    would score their samples as of an unknown task, 0 and a reward error, while other nodes score them)."""
    installed = plugin_tasks()  # refuses a broken entry point first
    driver_tasks = json.loads(environ.get(DRIVER_TASKS_ENV_VAR) or "{}")
    missing = {name: package for name, package in driver_tasks.items() if name not in installed}
    if missing:
        tasks = ", ".join(f"{name!r} (package {package})" for name, package in sorted(missing.items()))
        raise TaskPluginError(
            f"node {socket.gethostname()} lacks the installed task(s) {tasks} that the training driver has: "
            "install the package(s) in this node's Python environment too"
        )


def tasks_table() -> str:
    """What `mixed-r1 tasks` prints: each task, where it comes from, the accuracy at which a response is
    correct and, for an installed task, its reward fields and instruction."""
    packages = installed_task_packages()
    rows = [("task", "from", "correct at", "reward fields", "instruction")]
    rows += [(name, "built-in", str(DEFAULT_CORRECT_THRESHOLDS[name]), "", "") for name in BUILTIN_TASKS]
    rows += [
        (task.name, f"package {packages[task.name]}", str(task.correct_threshold),
         ", ".join(f"{name}: {type_name(kind)}" for name, kind in task.reward_fields.items()), task.instruction)
        for task in plugin_tasks().values()
    ]  # fmt: skip
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = ("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]) for row in rows)
    return "".join(line.rstrip() + "\n" for line in lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        usage = "usage: mixed-r1 tasks (no settings): lists the tasks records may have"
        asks_help = argv in (["-h"], ["--help"])
        print(usage if asks_help else f"mixed-r1 tasks takes no settings, got {' '.join(argv)}\n{usage}",
              file=sys.stdout if asks_help else sys.stderr)  # fmt: skip
        return 0 if asks_help else EXIT_USAGE
    try:
        print(tasks_table(), end="")
    except TaskPluginError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())

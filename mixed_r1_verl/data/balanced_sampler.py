"""Task-balanced batches for verl's training data loader.

With shuffled mixed data a small batch often misses a task (8 prompts from 4 tasks: all four are in
every batch of a 6-step run only about 8 % of the time). `TaskBalancedSampler` orders every epoch so
that each batch of `data.train_batch_size` consecutive rows holds every task in proportion to its
remaining rows (at least one of each while the batch has room), visits every row at most once per epoch
(those past the last whole batch sit it out, which ones changes with each epoch's order), and is seeded
(`data.seed`, default 0) and resumable through verl's checkpointed data loader (with the settings its
order follows, which its state records).

Select it with

    data.sampler.class_path=pkg://mixed_r1_verl.data.balanced_sampler data.sampler.class_name=TaskBalancedSampler

It takes the constructor arguments verl's custom-sampler hook has used, `(data_source, data_config)`;
verl 0.9.1 has no such hook in `create_rl_sampler`, so the project's trainer applies `data.sampler`
(`with_configured_sampler`). The task of a row is `extra_info.task`, else its `data_source`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler
from torchdata.stateful_dataloader import StatefulDataLoader
from verl.utils.import_utils import load_extern_object

from mixed_r1_verl.data.dataset import extra_info_column

DEFAULT_SEED = 0
# The sampler state's record of the settings its order follows, by the names a message gives them.
ORDER_SETTINGS_KEY = "order_settings"
START_ANEW = "start a new run (another trainer.default_local_dir, or trainer.resume_mode=disable)"


class SamplerConfigError(ValueError):
    """A `data.sampler` setting or a dataset row the sampler cannot use."""


def row_tasks(dataset) -> list[str]:
    """The task of every row of a verl RL dataset (`extra_info.task`, else `data_source`)."""
    frame = getattr(dataset, "dataframe", None)
    if frame is None:
        raise SamplerConfigError(f"TaskBalancedSampler needs a verl RL dataset with a `dataframe`; got {type(dataset).__name__}")
    sources = frame["data_source"] if "data_source" in frame.column_names else [None] * len(frame)
    tasks = []
    for index, (task, source) in enumerate(zip(extra_info_column(frame, "task"), sources)):
        if not (task or source):
            row_id = extra_info_column(frame.select([index]), "id")[0]
            raise SamplerConfigError(f"row {index} (id {row_id!r}) has neither extra_info.task nor data_source")
        tasks.append(str(task or source))
    return tasks


def batch_quota(remaining: dict[str, int], slots: int, tie_order: Sequence[str]) -> dict[str, int]:
    """How many rows of each task the next batch of `slots` rows takes: one per task with rows left
    (the tasks with most rows first, if there are more tasks than slots), the rest in proportion to
    the rows left, never more than a task has. `tie_order` breaks ties."""
    rank = {task: position for position, task in enumerate(tie_order)}
    active = sorted((task for task, count in remaining.items() if count > 0), key=lambda t: (-remaining[t], rank[t]))
    slots = min(slots, sum(remaining[task] for task in active))
    quota = {task: 0 for task in remaining}
    for task in active[:slots]:
        quota[task] = 1
    total = sum(remaining[task] for task in active)
    for _ in range(slots - sum(quota.values())):
        open_tasks = [task for task in active if quota[task] < remaining[task]]
        lag = {task: slots * remaining[task] / total - quota[task] for task in open_tasks}
        quota[max(open_tasks, key=lambda t: (lag[t], -rank[t]))] += 1
    return quota


def balanced_order(tasks: Sequence[str], batch_size: int, rng: np.random.Generator | None) -> list[int]:
    """Row indices in whole task-balanced batches of `batch_size` (see `batch_quota`); rows of a task in
    random order and tasks mixed within each batch when `rng` is given, else in file order. The rows left
    over (fewer than a batch) sit the epoch out, as verl's `drop_last` leaves them: handed out, they would
    start the next epoch's first step when verl fetches prompts one at a time (`filtering=on`), and every
    later step would straddle two balanced batches."""
    by_task: dict[str, list[int]] = {}
    for index, task in enumerate(tasks):
        by_task.setdefault(task, []).append(index)
    queues = {task: (list(rng.permutation(rows)) if rng else rows) for task, rows in by_task.items()}
    tie_order = [str(t) for t in rng.permutation(sorted(queues))] if rng else sorted(queues)
    taken = dict.fromkeys(queues, 0)
    order: list[int] = []
    while len(tasks) - len(order) >= batch_size:
        remaining = {task: len(queues[task]) - taken[task] for task in queues}
        batch = []
        for task, count in batch_quota(remaining, batch_size, tie_order).items():
            batch.extend(queues[task][taken[task] : taken[task] + count])
            taken[task] += count
        order.extend(int(i) for i in (rng.permutation(batch) if rng else batch))
    return order


class _EpochIterator(Iterator[int]):
    """One epoch of a TaskBalancedSampler; its state (epoch, rows yielded) is what a checkpoint keeps.

    The sampler moves on to the next epoch when an epoch has yielded all its rows, not when an iterator
    is built: a data loader with worker processes builds two per epoch, one without builds one, and the
    order of an epoch must depend on its number only (a run may resume with another number of them)."""

    def __init__(self, sampler: TaskBalancedSampler, epoch: int):
        self.sampler = sampler
        self.epoch = epoch
        self.order = sampler.epoch_order(epoch)
        self.yielded = 0

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.yielded >= len(self.order):
            self.sampler.next_epoch = self.epoch + 1
            raise StopIteration
        self.yielded += 1
        return self.order[self.yielded - 1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.order = self.sampler.epoch_order(self.epoch)
        self.yielded = int(state["yielded"])


class TaskBalancedSampler(Sampler[int]):
    """Row indices of a verl RL dataset in task-balanced batches; a new seeded order every epoch."""

    def __init__(self, data_source, data_config):
        self.tasks = row_tasks(data_source)
        self.batch_size = int(data_config.get("train_batch_size") or 0)
        if self.batch_size < 1:
            raise SamplerConfigError(f"data.train_batch_size must be a positive integer, got {self.batch_size}")
        seed = data_config.get("seed")
        self.seed = DEFAULT_SEED if seed is None else int(seed)
        self.shuffle = bool(data_config.get("shuffle", True))
        # Once: a data loader with worker processes saves the sampler's state, this digest included, on
        # every fetch, and with single-prompt fetches (filtering=on) hashing every row's task each time
        # would cost more than the fetch.
        self.tasks_digest = hashlib.sha256("\n".join(self.tasks).encode()).hexdigest()[:16]
        self.next_epoch = 0

    def order_settings(self) -> dict[str, Any]:
        """What shapes the order: a resume whose settings differ would repeat some rows and skip others."""
        return {
            "data.train_batch_size": self.batch_size,
            "data.seed": self.seed,
            "data.shuffle": self.shuffle,
            "training rows": len(self.tasks),
            "digest of the rows' tasks": self.tasks_digest,
        }

    def epoch_order(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        return balanced_order(self.tasks, self.batch_size, rng)

    def __iter__(self) -> _EpochIterator:
        return _EpochIterator(self, self.next_epoch)

    def __len__(self) -> int:
        return len(self.tasks) - len(self.tasks) % self.batch_size

    def state_dict(self) -> dict[str, Any]:
        return {"next_epoch": self.next_epoch, ORDER_SETTINGS_KEY: self.order_settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_epoch = int(state["next_epoch"])


def saved_sampler_state(loader_state) -> dict | None:
    """The TaskBalancedSampler state (the dict with its `next_epoch`) in a checkpointed data loader state."""
    if not isinstance(loader_state, dict):
        return None
    if "next_epoch" in loader_state:
        return loader_state
    for value in loader_state.values():
        found = saved_sampler_state(value)
        if found is not None:
            return found
    return None


def changed_order_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`name: saved then, current now` for every setting recorded in `saved` that differs in `current`;
    a state written before settings were recorded has none to compare."""
    changed = {name: value for name, value in saved.items() if value != current.get(name)}
    return [f"{name}: {value!r} then, {current.get(name)!r} now" for name, value in changed.items()]


def check_resumed_sampler(loader: StatefulDataLoader, checkpoint: str) -> None:
    """Raises SamplerConfigError when the data loader state restored from `checkpoint` was written with
    task-balanced batches and this run shuffles, or the other way round (the restored order would not
    fit the sampler, and torchdata would only fail on the first batch with a bare KeyError), or when the
    task-balanced order was written with other settings than this run's (`order_settings`)."""
    state = getattr(loader, "next_iter_state", None)
    if not state:
        return
    sampler_state = saved_sampler_state(state)
    written = sampler_state is not None
    uses = isinstance(loader.sampler, TaskBalancedSampler)
    if written != uses:
        kinds = {
            True: "task-balanced batches (data.sampler TaskBalancedSampler)",
            False: "a sampler other than TaskBalancedSampler (verl's own when data.sampler is unset)",
        }
        raise SamplerConfigError(
            f"{checkpoint}: its data loader state was written with {kinds[written]}, but this run uses "
            f"{kinds[uses]}. Resume with the data.sampler setting the run was checkpointed with, or {START_ANEW}."
        )
    if written:
        changed = changed_order_settings(sampler_state.get(ORDER_SETTINGS_KEY, {}), loader.sampler.order_settings())
        if changed:
            raise SamplerConfigError(
                f"{checkpoint}: its task-balanced order was written with other settings ({'; '.join(changed)}), "
                f"so this run would repeat some rows and skip others. Resume with the settings the run was "
                f"checkpointed with, or {START_ANEW}."
            )


def sampler_class(data_config) -> type | None:
    """The class `data.sampler.class_path` / `class_name` select; None when neither is set. SamplerConfigError
    when only one is, or when the class cannot be loaded."""
    settings = data_config.get("sampler") or {}
    class_path, class_name = settings.get("class_path"), settings.get("class_name")
    if not class_path and not class_name:
        return None
    if not (class_path and class_name):
        raise SamplerConfigError(
            f"data.sampler needs both class_path and class_name, got class_path={class_path!r}, class_name={class_name!r}"
        )
    try:
        return load_extern_object(class_path, class_name)
    except Exception as error:  # noqa: BLE001 - whatever importing the user's module raises
        raise SamplerConfigError(
            f"data.sampler.class_path={class_path} data.sampler.class_name={class_name}: the class cannot be "
            f"loaded ({type(error).__name__}: {error})"
        ) from error


def configured_sampler(data_config, dataset) -> Sampler | None:
    """The sampler `data.sampler.class_path` / `class_name` select, built on `dataset`; None when unset."""
    selected = sampler_class(data_config)
    return None if selected is None else selected(data_source=dataset, data_config=data_config)


def with_configured_sampler(dataloader: StatefulDataLoader, data_config) -> StatefulDataLoader:
    """verl's training data loader, rebuilt with the same settings on the `data.sampler` sampler when
    one is configured; unchanged otherwise."""
    sampler = configured_sampler(data_config, dataloader.dataset)
    if sampler is None:
        return dataloader
    return StatefulDataLoader(
        dataset=dataloader.dataset,
        batch_size=dataloader.batch_size,
        num_workers=dataloader.num_workers,
        drop_last=dataloader.drop_last,
        collate_fn=dataloader.collate_fn,
        sampler=sampler,
    )

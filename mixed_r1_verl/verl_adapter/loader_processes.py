"""The worker processes of the trainers' data loaders.

Resuming with another number of them: torchdata's `StatefulDataLoader` restores a saved position only
into as many worker processes as wrote it; with any other number the first batch fails with a bare
AssertionError, after the trainer has started every worker and loaded the model. The order of a
map-style dataset's batches does not depend on that number (the sampler runs in the trainer's process),
so the resumed epoch is read with the saved number and every later epoch with the configured one.

Stopping them when training ends: the loader keeps its iterator, so the processes of an epoch that
training left unfinished live on until Ray ends the trainer's actor, and their being killed then shows
as `RuntimeError: DataLoader worker (pid ...) is killed by signal: Killed` after a run that succeeded.
"""

from __future__ import annotations

from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

# torch's DataLoader default, which it sets only for a loader built with workers.
DEFAULT_PREFETCH_FACTOR = 2


def saved_worker_count(state: dict[str, Any]) -> int:
    """The number of loader processes that wrote a `StatefulDataLoader.state_dict()`."""
    snapshot = state.get("_snapshot")
    return 0 if snapshot is None else int(snapshot["_main_snapshot"]["_num_workers"])


def resume_with_saved_worker_count(loader: StatefulDataLoader, checkpoint: str, setting: str) -> str | None:
    """After the trainer has loaded `checkpoint`'s data loader state into `loader`: when that state was
    saved by another number of loader processes than `setting` asks for, the resumed epoch runs with the
    saved number and the next epochs with the configured one. Returns the line that says so, else None."""
    state = loader.next_iter_state
    saved = saved_worker_count(state) if state else loader.num_workers
    if saved == loader.num_workers:
        return None
    configured = loader.num_workers, loader.prefetch_factor
    loader.num_workers = saved
    loader.prefetch_factor = (loader.prefetch_factor or DEFAULT_PREFETCH_FACTOR) if saved else None
    get_iterator = loader._get_iterator

    def resumed_iterator():
        iterator = get_iterator()
        del loader._get_iterator
        loader.num_workers, loader.prefetch_factor = configured
        return iterator

    loader._get_iterator = resumed_iterator
    return (
        f"{checkpoint}: its data loader position was saved by {saved} loader process(es), so the resumed epoch "
        f"is read with {saved} and the next ones with {setting}={configured[0]}"
    )


def stop_loader_processes(loader: StatefulDataLoader) -> None:
    """Ends the worker processes of the epoch `loader` is reading, if it has any."""
    shutdown_workers = getattr(loader._iterator, "_shutdown_workers", None)
    if shutdown_workers is not None:
        shutdown_workers()

"""torchdata's StatefulDataLoader in the trainers: resumed with another number of loader processes than
saved it, and its processes stopped when training ends in the middle of an epoch."""

import os

import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

from mixed_r1_verl.verl_adapter.loader_processes import (
    resume_with_saved_worker_count,
    saved_worker_count,
    stop_loader_processes,
)

ROWS, BATCH, READ_BEFORE_SAVE = 24, 4, 2


def loader(workers: int) -> StatefulDataLoader:
    return StatefulDataLoader(list(range(ROWS)), batch_size=BATCH, num_workers=workers)


def saved_state(workers: int) -> dict:
    interrupted = loader(workers)
    batches = iter(interrupted)
    for _ in range(READ_BEFORE_SAVE):
        next(batches)
    return interrupted.state_dict()


@pytest.mark.parametrize(("saved", "configured"), [(0, 2), (2, 0), (2, 3)])
def test_the_resumed_epoch_goes_on_where_it_stopped_and_later_epochs_use_the_configured_workers(saved, configured):
    state = saved_state(saved)
    assert saved_worker_count(state) == saved
    unaided = loader(configured)
    unaided.load_state_dict(state)
    with pytest.raises(AssertionError):  # torchdata alone
        iter(unaided)

    resumed = loader(configured)
    resumed.load_state_dict(state)
    said = resume_with_saved_worker_count(resumed, "ckpt/global_step_2", "data.num_workers")
    assert said == (
        f"ckpt/global_step_2: its data loader position was saved by {saved} loader process(es), so the resumed "
        f"epoch is read with {saved} and the next ones with data.num_workers={configured}"
    )

    rest_of_epoch = [batch.tolist() for batch in resumed]
    expected = [list(range(start, start + BATCH)) for start in range(READ_BEFORE_SAVE * BATCH, ROWS, BATCH)]
    assert rest_of_epoch == expected
    next_epoch = iter(resumed)
    assert next_epoch._num_workers == configured
    assert [batch.tolist() for batch in next_epoch] == [list(range(s, s + BATCH)) for s in range(0, ROWS, BATCH)]
    assert saved_worker_count(resumed.state_dict()) == configured


def test_a_state_saved_by_as_many_workers_is_left_to_torchdata():
    resumed = loader(2)
    resumed.load_state_dict(saved_state(2))
    assert resume_with_saved_worker_count(resumed, "ckpt", "data.num_workers") is None
    assert "_get_iterator" not in vars(resumed)
    assert next(iter(resumed)).tolist() == list(range(READ_BEFORE_SAVE * BATCH, (READ_BEFORE_SAVE + 1) * BATCH))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_checkpoint_without_a_data_loader_state_starts_the_epoch_from_its_first_batch(workers):
    """verl only warns when a checkpoint holds no data.pt and leaves the loader as it was built."""
    fresh = loader(workers)
    assert resume_with_saved_worker_count(fresh, "ckpt/global_step_3", "data.num_workers") is None
    assert "_get_iterator" not in vars(fresh)
    assert [batch.tolist() for batch in fresh] == [list(range(s, s + BATCH)) for s in range(0, ROWS, BATCH)]


class LoaderProcessIds:
    """Rows that are the id of the process that read them."""

    def __len__(self):
        return ROWS

    def __getitem__(self, index):
        return os.getpid()


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_processes_of_an_unfinished_epoch_end_when_stopped_and_the_loader_reads_on():
    process_ids = StatefulDataLoader(LoaderProcessIds(), batch_size=BATCH, num_workers=2)
    batches = iter(process_ids)
    workers = {int(pid) for _ in range(READ_BEFORE_SAVE) for pid in next(batches)}
    assert len(workers) == 2 and os.getpid() not in workers
    assert all(is_running(pid) for pid in workers)

    stop_loader_processes(process_ids)
    assert not any(is_running(pid) for pid in workers)
    stop_loader_processes(process_ids)  # twice, as after a failed step
    assert len(list(process_ids)) == ROWS // BATCH


@pytest.mark.parametrize("read", [False, True])
def test_stopping_a_loader_without_processes_does_nothing(read):
    in_process = loader(0)
    if read:
        next(iter(in_process))
    stop_loader_processes(in_process)
    assert [batch.tolist() for batch in in_process][0] == list(range(BATCH))

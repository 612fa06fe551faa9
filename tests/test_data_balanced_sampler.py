"""Task-balanced batches through the project trainer's real data-loader set-up: verl's
`_init_dataloader` (create_rl_dataset with MixedR1Dataset, StatefulDataLoader, collate_fn) on the
converter's parquet of the synthetic four-task set, then `data.sampler` from the smoke recipe."""

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf, open_dict
from data_helpers import convert_synthetic
from test_train_config import compose_recipe

from mixed_r1_verl.data.balanced_sampler import (
    ORDER_SETTINGS_KEY, SamplerConfigError, balanced_order, batch_quota, check_resumed_sampler, configured_sampler,
)  # fmt: skip
from mixed_r1_verl.data.processor import load_image_text_processor
from mixed_r1_verl.verl_adapter.loader_processes import resume_with_saved_worker_count
from mixed_r1_verl.verl_adapter.trainer import MixedR1SyncTrainer

TASKS = {"matching", "chart", "grounding", "open_ended"}
ROWS_PER_TASK = 10
BATCH_SIZE = 8


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("balanced")
    convert_synthetic(
        root / "src", root / "out", rows_per_task=ROWS_PER_TASK, seed=3,
        synthetic={"image_size": (224, 224), "val_rows_per_task": 0}, model_path=str(tiny_model_dir), val_ratio=0.0,
    )  # fmt: skip
    return root / "out"


def smoke_config(data_dir, tiny_model_dir, *overrides):
    config = compose_recipe(
        "smoke",
        f"mixed_r1.data_dir={data_dir}",
        f"actor_rollout_ref.model.path={tiny_model_dir}",
        f"data.val_files={data_dir}/train.parquet",
        *overrides,
    )
    with open_dict(config):
        config.data.cache_dir = str(data_dir / "cache")
    return config


def trainer_with_dataloader(config, trainer_mode="sync"):
    """The project trainer with only its data loader initialised, by verl's own `_init_dataloader`."""
    trainer = MixedR1SyncTrainer.__new__(MixedR1SyncTrainer)
    trainer.config = config
    trainer.processor = load_image_text_processor(config.actor_rollout_ref.model.path)
    trainer.tokenizer = trainer.processor.tokenizer
    trainer.trainer_mode = trainer_mode
    trainer.parameter_sync_step = 1
    trainer._init_dataloader()
    return trainer


def read_then_checkpoint(config, batches: int):
    """The iterator of a data loader that has read `batches` batches, and the state a checkpoint saves."""
    loader = trainer_with_dataloader(config).train_dataloader
    iterator = iter(loader)
    for _ in range(batches):
        next(iterator)
    return iterator, loader.state_dict()


def batch_rows(batch) -> list[tuple[str, str]]:
    """(task, id) of every row of a collated batch."""
    return [(info["task"], info["id"]) for info in batch["extra_info"]]


@pytest.fixture(scope="module")
def config(data_dir, tiny_model_dir):
    return smoke_config(data_dir, tiny_model_dir)


def test_every_batch_holds_all_tasks_and_every_row_is_visited_once_per_epoch(config):
    loader = trainer_with_dataloader(config).train_dataloader
    epochs = []
    for _ in range(3):
        rows = []
        for batch in loader:
            assert len(batch["extra_info"]) == BATCH_SIZE
            assert Counter(task for task, _ in batch_rows(batch)) == {task: 2 for task in TASKS}
            rows.extend(batch_rows(batch))
        assert len(rows) == 4 * ROWS_PER_TASK - (4 * ROWS_PER_TASK) % BATCH_SIZE
        assert len({row_id for _, row_id in rows}) == len(rows)
        epochs.append(rows)
    assert epochs[0] != epochs[1] != epochs[2]


def test_prompts_fetched_one_at_a_time_still_come_in_balanced_batches(data_dir, tiny_model_dir):
    """Filtering (and any mode verl refills in) makes verl fetch single prompts (gen_batch_size=1)."""
    config = smoke_config(data_dir, tiny_model_dir, "filtering=on")
    loader = trainer_with_dataloader(config, trainer_mode="mixed_r1_sync").train_dataloader
    assert loader.batch_size == 1
    rows = [row for batch in loader for row in batch_rows(batch)]
    assert len(rows) == 4 * ROWS_PER_TASK
    for start in range(0, len(rows) - BATCH_SIZE + 1, BATCH_SIZE):
        assert {task for task, _ in rows[start : start + BATCH_SIZE]} == TASKS


def test_steps_fetched_one_prompt_at_a_time_stay_balanced_when_the_rows_fill_no_whole_batch(data_dir, tiny_model_dir):
    """40 rows in steps of 12: the 4 rows past the third step sit the epoch out. Handed out, they would start
    the next epoch's first step, and every later step would straddle two balanced batches."""
    config = smoke_config(data_dir, tiny_model_dir, "filtering=on", "data.train_batch_size=12")
    loader = trainer_with_dataloader(config, trainer_mode="mixed_r1_sync").train_dataloader
    assert (loader.batch_size, len(loader)) == (1, 36)
    iterator, steps = iter(loader), []
    for _ in range(3 * 3):  # three epochs, as verl's trainer fetches them: a new iterator when one ends
        step = []
        while len(step) < 12:
            try:
                step.extend(batch_rows(next(iterator)))
            except StopIteration:
                iterator = iter(loader)
        steps.append(step)
    for step in steps:
        assert Counter(task for task, _ in step) == {task: 3 for task in TASKS}
    for epoch in range(3):
        seen = [row_id for step in steps[3 * epoch : 3 * epoch + 3] for _, row_id in step]
        assert len(set(seen)) == 36


def test_prompts_fetched_one_at_a_time_by_loader_processes_do_not_hash_the_rows_tasks_again(
    data_dir, tiny_model_dir, monkeypatch
):
    """The loader saves the sampler's state on every fetch: hashing 500k rows' tasks each time took 6 s a step."""
    import hashlib

    config = smoke_config(data_dir, tiny_model_dir, "filtering=on")
    loader = trainer_with_dataloader(config, trainer_mode="mixed_r1_sync").train_dataloader
    assert (loader.batch_size, loader.num_workers) == (1, 2)
    tasks_text, sha256, hashed = "\n".join(loader.sampler.tasks).encode(), hashlib.sha256, []
    monkeypatch.setattr(hashlib, "sha256", lambda data=b"": hashed.append(data == tasks_text) or sha256(data))
    assert len(list(loader)) == 4 * ROWS_PER_TASK
    assert loader.state_dict()
    assert hashed.count(True) == 0, "the rows' tasks are hashed once, when the sampler is built"
    assert loader.sampler.order_settings()["digest of the rows' tasks"] == sha256(tasks_text).hexdigest()[:16]


def test_order_is_seeded(config, data_dir, tiny_model_dir):
    first = [batch_rows(batch) for batch in trainer_with_dataloader(config).train_dataloader]
    again = [batch_rows(batch) for batch in trainer_with_dataloader(config).train_dataloader]
    other_seed = smoke_config(data_dir, tiny_model_dir, "data.seed=1")
    other = [batch_rows(batch) for batch in trainer_with_dataloader(other_seed).train_dataloader]
    assert first == again
    assert first != other


@pytest.mark.parametrize("batches_before_checkpoint", [2, 7])
def test_resume_from_a_checkpointed_loader_continues_the_same_sequence(config, batches_before_checkpoint):
    """verl saves `train_dataloader.state_dict()` with each checkpoint and loads it into a fresh trainer."""
    loader = trainer_with_dataloader(config).train_dataloader
    iterator = iter(loader)
    for _ in range(batches_before_checkpoint):
        try:
            next(iterator)
        except StopIteration:  # epoch end, as verl's trainer handles it
            iterator = iter(loader)
            next(iterator)
    state = loader.state_dict()
    expected = [batch_rows(next(iterator)) for _ in range(2)]

    resumed = trainer_with_dataloader(config).train_dataloader
    resumed.load_state_dict(state)
    check_resumed_sampler(resumed, "checkpoint")
    assert [batch_rows(batch) for batch, _ in zip(resumed, range(2))] == expected


def epochs_of_batches(loader, epochs: int) -> list[list[list[tuple[str, str]]]]:
    return [[batch_rows(batch) for batch in loader] for _ in range(epochs)]


def test_the_order_of_every_epoch_is_the_same_with_and_without_loader_processes(config, data_dir, tiny_model_dir):
    assert config.data.dataloader_num_workers == 2
    in_process = smoke_config(data_dir, tiny_model_dir, "data.dataloader_num_workers=0")
    with_workers = epochs_of_batches(trainer_with_dataloader(config).train_dataloader, 3)
    assert epochs_of_batches(trainer_with_dataloader(in_process).train_dataloader, 3) == with_workers


def test_resumed_with_another_number_of_loader_processes_the_later_epochs_keep_their_order(
    config, data_dir, tiny_model_dir
):
    uninterrupted = epochs_of_batches(trainer_with_dataloader(config).train_dataloader, 3)
    interrupted = trainer_with_dataloader(config).train_dataloader
    batches = iter(interrupted)
    read = [batch_rows(next(batches)) for _ in range(2)]
    state = interrupted.state_dict()

    in_process = smoke_config(data_dir, tiny_model_dir, "data.dataloader_num_workers=0")
    resumed = trainer_with_dataloader(in_process).train_dataloader
    resumed.load_state_dict(state)
    resume_with_saved_worker_count(resumed, "checkpoint", "data.dataloader_num_workers")
    rest_of_epoch = [batch_rows(batch) for batch in resumed]
    assert [read + rest_of_epoch, *epochs_of_batches(resumed, 2)] == uninterrupted


@pytest.mark.parametrize("checkpointed_balanced", [True, False])
def test_resume_with_the_other_sampler_names_the_checkpoint_and_both_samplers(
    config, data_dir, tiny_model_dir, checkpointed_balanced
):
    shuffled = smoke_config(data_dir, tiny_model_dir, "data.sampler.class_path=null", "data.sampler.class_name=null")
    before, after = (config, shuffled) if checkpointed_balanced else (shuffled, config)
    _, state = read_then_checkpoint(before, batches=2)
    resumed = trainer_with_dataloader(after).train_dataloader
    resumed.load_state_dict(state)
    written, used = ("task-balanced", "verl's own") if checkpointed_balanced else ("verl's own", "task-balanced")
    message = rf"^ckpt/global_step_2: .*written with .*{written}.*this run uses .*{used}"
    with pytest.raises(SamplerConfigError, match=message):
        check_resumed_sampler(resumed, "ckpt/global_step_2")


def test_resume_with_settings_that_shape_the_order_changed_names_them(config, data_dir, tiny_model_dir):
    _, state = read_then_checkpoint(config, batches=2)

    other_batches = smoke_config(data_dir, tiny_model_dir, "data.train_batch_size=4", "data.seed=1")
    resumed = trainer_with_dataloader(other_batches).train_dataloader
    resumed.load_state_dict(state)
    message = r"^ckpt/global_step_2: .*data.train_batch_size: 8 then, 4 now; data.seed: 0 then, 1 now\)"
    with pytest.raises(SamplerConfigError, match=message):
        check_resumed_sampler(resumed, "ckpt/global_step_2")

    same = trainer_with_dataloader(config).train_dataloader
    same.load_state_dict(state)
    check_resumed_sampler(same, "ckpt/global_step_2")
    unrecorded = trainer_with_dataloader(other_batches).train_dataloader
    unrecorded.load_state_dict(state_without_order_settings(state))
    check_resumed_sampler(unrecorded, "ckpt/global_step_2")  # a checkpoint written before they were recorded


def state_without_order_settings(state):
    if not isinstance(state, dict):
        return state
    return {key: state_without_order_settings(value) for key, value in state.items() if key != ORDER_SETTINGS_KEY}


def test_resume_with_filtering_switched_on_continues_where_the_checkpoint_stopped(config, data_dir, tiny_model_dir):
    """A checkpoint of prompt batches (filtering off) restored into single-prompt fetches (filtering on)."""
    iterator, state = read_then_checkpoint(config, batches=3)
    expected = batch_rows(next(iterator))

    filtering = smoke_config(data_dir, tiny_model_dir, "filtering=on")
    resumed = trainer_with_dataloader(filtering, trainer_mode="mixed_r1_sync").train_dataloader
    resumed.load_state_dict(state)
    assert [row for batch, _ in zip(resumed, range(BATCH_SIZE)) for row in batch_rows(batch)] == expected


def test_unset_sampler_keeps_verl_default_and_half_set_sampler_is_an_error(config):
    unset = OmegaConf.merge(config.data, {"sampler": None})
    assert configured_sampler(unset, dataset=None) is None
    half = OmegaConf.merge(config.data, {"sampler": {"class_path": None}})
    with pytest.raises(SamplerConfigError, match="class_path and class_name"):
        configured_sampler(half, dataset=None)


def test_row_without_task_is_named(config):
    import datasets

    class Rows:
        dataframe = datasets.Dataset.from_list(
            [{"data_source": "a", "extra_info": {"id": "r0"}}, {"data_source": "", "extra_info": {"id": "r1"}}]
        )

    with pytest.raises(SamplerConfigError, match=r"row 1 \(id 'r1'\)"):
        configured_sampler(config.data, Rows())


def test_uneven_mix_is_proportional_and_every_batch_holds_every_task():
    tasks = ["matching"] * 150 + ["chart"] * 100 + ["grounding"] * 100 + ["open_ended"] * 30
    order = balanced_order(tasks, 16, np.random.default_rng(0))
    assert len(order) == len(tasks) - len(tasks) % 16 and len(set(order)) == len(order)
    for start in range(0, len(order), 16):
        counts = Counter(tasks[i] for i in order[start : start + 16])
        assert set(counts) == TASKS
        for task, total in Counter(tasks).items():
            assert abs(counts[task] - 16 * total / len(tasks)) < 2


def test_quota_with_more_tasks_than_slots_prefers_the_largest_tasks():
    quota = batch_quota({"a": 5, "b": 9, "c": 1}, 2, tie_order=["a", "b", "c"])
    assert quota == {"a": 1, "b": 1, "c": 0}


def test_a_task_with_under_one_row_per_batch_is_in_every_batch_while_its_rows_last():
    """4 rows in 100 are a third of a row per batch of 8; each batch still takes one until they run out."""
    mix = {"matching": 60, "chart": 30, "grounding": 6, "open_ended": 4}
    tasks = [task for task, count in mix.items() for _ in range(count)]
    order = balanced_order(tasks, BATCH_SIZE, np.random.default_rng(0))
    starts = range(0, len(order), BATCH_SIZE)
    batches = [Counter(tasks[i] for i in order[start : start + BATCH_SIZE]) for start in starts]
    for task in ("grounding", "open_ended"):
        assert [batch[task] for batch in batches] == [1] * mix[task] + [0] * (len(batches) - mix[task]), task


def test_rows_are_balanced_by_their_task_whatever_their_data_source(data_dir, tiny_model_dir, tmp_path):
    """Matching and chart rows share one data_source, grounding rows come from two: every batch still
    holds two rows of each task."""
    table = pq.read_table(data_dir / "train.parquet")
    sources = {"matching": ["vqa_mix"], "chart": ["vqa_mix"], "grounding": ["refcoco", "refcocog"],
               "open_ended": ["captions"]}  # fmt: skip
    tasks = [info["task"] for info in table.column("extra_info").to_pylist()]
    renamed = [sources[task][index % len(sources[task])] for index, task in enumerate(tasks)]
    table = table.set_column(table.column_names.index("data_source"), "data_source", pa.array(renamed))
    pq.write_table(table, tmp_path / "train.parquet")
    config = smoke_config(data_dir, tiny_model_dir, f"data.train_files={tmp_path}/train.parquet")
    batches = list(trainer_with_dataloader(config).train_dataloader)
    assert {source for batch in batches for source in batch["data_source"]} == set(renamed)
    for batch in batches:
        assert Counter(task for task, _ in batch_rows(batch)) == {task: 2 for task in TASKS}

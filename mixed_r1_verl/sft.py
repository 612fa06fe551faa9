"""Supervised fine-tuning entry (the cold start before GRPO), on verl's own SFT trainer.

    python -m mixed_r1_verl.sft recipe=learn [any verl SFT key=value ...]
    python -m mixed_r1_verl.sft recipe=learn --cfg job      # print the merged config, no GPU needed

The config is verl's `sft_trainer_engine` with `conf/sft/sft.yaml` and one `recipes/sft/<name>.yaml` on
top. It trains on the converter's `sft_train.parquet` (rows with a rationale; target
`<think>{rationale}</think><answer>{answer}</answer>`) with verl's multi-turn SFT dataset, which
resizes each image with the pixel bounds the converter wrote and masks the loss to the target.
One GPU runs in this process; more GPUs are started with torchrun. With `mixed_r1.stop_by` (a Unix
time) the run ends with its checkpoint at the last step that fits before it, as GRPO does.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from mixed_r1_verl.entry import run_recipe_entry
from mixed_r1_verl.main import (
    choose_attention,
    config_dir,
    data_files,
    exit_if_resuming_across_lora,
    exit_if_steps_outrun_the_epochs,
    exit_if_stop_by_is_not_ahead,
    exit_if_training_is_done,
    exit_unless_resume_settings_work,
    exit_unless_sizes_are_positive,
    fail,
    file_logger_env,
    file_logger_path,
    flash_attn_importable,
    log_recipe_rate_under_lora,
    logs_to_file,
    make_paths_absolute,
    max_samples,
    parquet_rows,
    pin_model_path,
    prepare_metrics_log,
    recipe_dir,
    sequence_parallel_mismatch,
    set_rows,
)
from mixed_r1_verl.settings import EXIT_USAGE

PRIMARY_CONFIG = "sft"
# model.path is pinned by pin_model_path: it may be a hub id.
PATH_KEYS = ("data.train_files", "data.val_files", "trainer.default_local_dir", "trainer.resume_from_path")
# The GPU counts and batch sizes the entry's own checks divide by.
SIZE_KEYS = ("trainer.nnodes", "trainer.n_gpus_per_node", "data.train_batch_size", "data.micro_batch_size_per_gpu")

NO_GPU_MESSAGE = """\
mixed_r1_verl.sft fine-tunes with verl's FSDP engine and needs at least one CUDA GPU visible to torch;
torch.cuda.is_available() is False on this machine.
What runs here without a GPU:
  - the SFT data:      python -m mixed_r1_verl.data.prepare ... (rows with a `rationale` go to sft_*.parquet)
  - the merged config: python -m mixed_r1_verl.sft recipe=<name> --cfg job
"""
# Added to the not-found message when the validation parquet is missing.
VAL_SPLIT_WITHOUT_RATIONALES = (
    "; a split without such rows has no SFT parquet: data.val_files=null trains without validation"
)


def sft_config_dir() -> Path:
    return config_dir() / "sft"


def sft_recipe_dir() -> Path:
    return recipe_dir() / "sft"


def missing_inputs(config: DictConfig) -> list[str]:
    """`key=path` for every data file the config names that is not there."""
    keys = ["data.train_files"] + (["data.val_files"] if config.data.val_files else [])
    missing = []
    for key in keys:
        value = OmegaConf.select(config, key)
        missing += [f"{key}={path}" for path in data_files(value) if not os.path.exists(path)]
    return missing


def picked_rows(config: DictConfig, key: str, total: int) -> list[int]:
    """The positions, among the `total` rows of data.<key>, of those verl's SFT dataset reads: the first
    max_samples, or with data.shuffle as many drawn with data.seed, as its MultiTurnSFTDataset draws them."""
    import numpy as np

    limit = max_samples(config, key)
    if not 0 < limit < total:
        return list(range(total))
    if not config.data.get("shuffle", False):
        return list(range(limit))
    seed = config.data.get("seed")
    return np.random.default_rng(*(() if seed is None else (seed,))).choice(total, size=limit, replace=False).tolist()


def pin_sample_seed(config: DictConfig) -> None:
    """With data.shuffle, verl's SFT dataset draws its max_samples rows with data.seed, and unseeded each rank
    and each resumed run would draw other rows: an unset data.seed becomes trainer.seed."""
    if config.data.get("shuffle", False) and config.data.get("seed") is None:
        with open_dict(config.data):
            config.data.seed = config.trainer.seed


def train_rows_within_max_length(config: DictConfig) -> int:
    """The training rows verl's SFT trainer reads that fit data.max_length by the converter's count
    (extra_info.sequence_length; a row without one is taken to fit): the dataset leaves out the others."""
    import pyarrow.parquet as pq

    lengths = []
    for path in data_files(config.data.train_files):
        if "extra_info" not in pq.read_schema(path).names:
            lengths += [None] * parquet_rows(path)
            continue
        lengths += [(info or {}).get("sequence_length") for info in pq.read_table(path, columns=["extra_info"])
                    .column("extra_info").to_pylist()]  # fmt: skip
    picked = [lengths[row] for row in picked_rows(config, "train_files", len(lengths))]
    return sum(length is None or length <= config.data.max_length for length in picked)


def parquet_set_rows(config: DictConfig) -> dict[str, int]:
    """Rows verl's SFT trainer reads of data.train_files and, when set, data.val_files, by key."""
    keys = ["train_files"] + (["val_files"] if config.data.val_files else [])
    return {key: set_rows(config, key) for key in keys}


def sets_short_of_a_batch(rows: dict[str, int], batch_size: int, counted: str = "") -> list[str]:
    """`data.<key> (<n> rows<counted>)` for the sets holding fewer rows than one batch: verl's SFT loaders
    yield whole batches only, so such a training set trains nothing and such a validation set logs
    val/loss as NaN."""
    return [f"data.{key} ({count} rows{counted})" for key, count in rows.items() if count < batch_size]


def data_parallel_ranks(config: DictConfig) -> int:
    """The data-parallel groups verl's FSDP engine splits each batch over (GPUs / sequence-parallel size)."""
    ranks = config.trainer.n_gpus_per_node * config.trainer.nnodes
    return ranks // config.engine.get("ulysses_sequence_parallel_size", 1)


def batch_split_error(config: DictConfig) -> str | None:
    """Why verl's FSDP engine could not split a batch over the data-parallel groups: a sequence-parallel size
    that does not divide the GPUs, or a batch of fewer rows than groups (each would take none)."""
    gpus = config.trainer.n_gpus_per_node * config.trainer.nnodes
    size = config.engine.get("ulysses_sequence_parallel_size", 1)
    if mismatch := sequence_parallel_mismatch(gpus, size, "engine.ulysses_sequence_parallel_size"):
        return mismatch
    ranks = data_parallel_ranks(config)
    if config.data.train_batch_size < ranks:
        return (
            f"data.train_batch_size={config.data.train_batch_size} is fewer rows than the {ranks} data-parallel "
            "groups a batch is split over: each takes data.train_batch_size / groups rows a step"
        )
    return None


def steps_per_epoch(config: DictConfig, train_rows: int) -> int:
    """Each rank's share of the training rows (verl drops the remainder) in whole batches of its share
    of data.train_batch_size."""
    ranks = data_parallel_ranks(config)
    return train_rows // ranks // (config.data.train_batch_size // ranks)


def micro_batch_mismatch(config: DictConfig) -> str | None:
    """Without dynamic batch sizes verl's FSDP engine splits each rank's share of a batch into micro-batches
    of data.micro_batch_size_per_gpu, and asserts that they divide it only at the first step."""
    data, ranks = config.data, data_parallel_ranks(config)
    per_rank = data.train_batch_size // ranks
    if data.use_dynamic_bsz or per_rank % data.micro_batch_size_per_gpu == 0:
        return None
    return (
        f"data.micro_batch_size_per_gpu={data.micro_batch_size_per_gpu} does not divide the {per_rank} rows of a "
        f"batch each data-parallel rank holds (data.train_batch_size={data.train_batch_size} / {ranks}): use a "
        "divisor, or data.use_dynamic_bsz=true. verl's FSDP engine would stop on it at the first step.\n"
    )


def token_budget_mismatch(config: DictConfig) -> str | None:
    """With dynamic batch sizes verl's FSDP engine packs micro-batches of at most data.max_token_len_per_gpu
    x engine.ulysses_sequence_parallel_size tokens, and asserts that a row fits only at the first batch
    holding one longer: data.max_length, the longest row kept, must fit."""
    data = config.data
    if not data.use_dynamic_bsz:
        return None
    parallel = config.engine.get("ulysses_sequence_parallel_size", 1)
    budget = data.max_token_len_per_gpu * parallel
    if data.max_length <= budget:
        return None
    return (
        f"data.max_length={data.max_length} is more than the {budget} tokens a micro-batch holds "
        f"(data.max_token_len_per_gpu={data.max_token_len_per_gpu} x engine.ulysses_sequence_parallel_size="
        f"{parallel}): lower data.max_length or raise data.max_token_len_per_gpu. verl's FSDP engine would stop "
        "at the first batch holding a row that long.\n"
    )


def exit_unless_rows_fill_the_run(config: DictConfig, rows: dict[str, int], counted: str = "") -> None:
    """The training and validation sets of `rows` must each hold a batch, and the training set the planned
    steps within trainer.total_epochs. `counted` says which rows were counted when not the parquet's."""
    short = sets_short_of_a_batch(rows, config.data.train_batch_size, counted)
    if short:
        fail(
            f"{' and '.join(short)}: fewer rows than one batch of data.train_batch_size="
            f"{config.data.train_batch_size}. verl's SFT trainer uses whole batches only, so it would train "
            f"nothing or log val/loss as NaN; lower data.train_batch_size, add rows"
            f"{', raise data.max_length' if counted else ''}, or set data.val_files=null.\n"
        )
    trainer_name = "verl's SFT trainer" + (f" (on the {rows['train_files']} training rows{counted})" if counted else "")
    exit_if_steps_outrun_the_epochs(config.trainer, steps_per_epoch(config, rows["train_files"]), trainer_name)


def planned_sft_steps(config: DictConfig, train_rows: int) -> tuple[int, str]:
    """The last step of this run and where it comes from, as verl's SFT trainer plans it."""
    if config.trainer.total_training_steps is not None:
        return config.trainer.total_training_steps, "trainer.total_training_steps"
    per_epoch = steps_per_epoch(config, train_rows)
    return per_epoch * config.trainer.total_epochs, f"{per_epoch} steps a epoch x trainer.total_epochs"


def torchrun_command(config: DictConfig, argv: list[str]) -> list[str]:
    """The same command under torchrun, one process per GPU of this node."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={config.trainer.n_gpus_per_node}", "-m", "mixed_r1_verl.sft", *argv,
    ]  # fmt: skip


def single_process_environment() -> dict[str, str]:
    """The torch.distributed variables of a one-process group on this host."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def train(config: DictConfig) -> None:
    import torch

    if not torch.cuda.is_available():
        fail(NO_GPU_MESSAGE)
    exit_unless_sizes_are_positive(config, SIZE_KEYS, ("engine.ulysses_sequence_parallel_size",))
    if error := process_count_error(config.trainer, torch.cuda.device_count(), os.environ):
        fail(f"{error}.\n", EXIT_USAGE)
    train_on_this_node(config)


def process_count_error(trainer: DictConfig, visible_gpus: int, env: Mapping[str, str]) -> str | None:
    """Why the processes that would train do not match trainer.n_gpus_per_node x trainer.nnodes, which
    the entry's checks split batches by: under torchrun its WORLD_SIZE; else this node's GPUs (the entry
    starts one process per GPU itself, on one node)."""
    gpus, nodes = trainer.n_gpus_per_node, trainer.nnodes
    if "WORLD_SIZE" in env:
        if int(env["WORLD_SIZE"]) != gpus * nodes:
            return (
                f"torchrun started {env['WORLD_SIZE']} processes, and trainer.n_gpus_per_node={gpus} x "
                f"trainer.nnodes={nodes} is {gpus * nodes}: set them to the processes per node and the nodes"
            )
        return None
    if nodes != 1:
        return (
            f"trainer.nnodes={nodes}: mixed_r1_verl.sft starts the processes of one node itself; for several, "
            f"start it on every node with torchrun --nnodes={nodes} --nproc_per_node={gpus}"
        )
    if gpus > visible_gpus:
        return f"trainer.n_gpus_per_node={gpus}, and torch sees {visible_gpus} CUDA GPU(s) here: set that many or fewer"
    return None


def train_on_this_node(config: DictConfig) -> None:
    """verl's SFT trainer on this node's devices: one process, or one per GPU under torchrun."""
    exit_unless_sizes_are_positive(config, SIZE_KEYS, ("engine.ulysses_sequence_parallel_size",))
    exit_if_stop_by_is_not_ahead(config.mixed_r1)
    make_paths_absolute(config, PATH_KEYS)
    try:
        config.model.path = pin_model_path(config.model.path)
    except FileNotFoundError as error:
        fail(f"model.path={config.model.path}: {error}. Give a local checkpoint directory or a Hugging Face hub id.\n")
    missing = missing_inputs(config)
    if missing:
        val_missing = any(entry.startswith("data.val_files=") for entry in missing)
        fail(
            "not found: " + ", ".join(missing) + "\n(the SFT parquet is written by mixed_r1_verl.data.prepare for "
            "rows with a `rationale`" + (VAL_SPLIT_WITHOUT_RATIONALES if val_missing else "") + ")\n"
        )
    if error := batch_split_error(config):
        fail(f"{error}.\n")
    pin_sample_seed(config)
    rows = parquet_set_rows(config)
    exit_unless_rows_fill_the_run(config, rows)
    mismatch = micro_batch_mismatch(config) or token_budget_mismatch(config)
    if mismatch:
        fail(mismatch)
    exit_unless_resume_settings_work(config.trainer, sft=True)
    exit_if_resuming_across_lora(config, "model", sft=True)
    exit_if_training_is_done(config.trainer, *planned_sft_steps(config, train_rows_within_max_length(config)), sft=True)
    if logs_to_file(config) and os.environ.get("RANK", "0") == "0":
        prepare_metrics_log(file_logger_path(config, file_logger_env(os.environ)))
    if "WORLD_SIZE" not in os.environ:
        if config.trainer.n_gpus_per_node > 1:
            os.execv(sys.executable, torchrun_command(config, sys.argv[1:]))
        os.environ.update(single_process_environment())

    from verl.utils.device import auto_set_device

    from mixed_r1_verl.verl_adapter.sft_trainer import run_sft

    auto_set_device(config)
    choose_attention(config, flash_attn_importable(), model_key="model")
    if os.environ.get("RANK", "0") == "0":
        log_recipe_rate_under_lora(config, sft_config_dir() / "lora" / "on.yaml", "optim.lr")
    run_sft(config)


def main() -> None:
    run_recipe_entry("mixed_r1_verl.sft", sft_recipe_dir(), sft_config_dir(), PRIMARY_CONFIG, train)


if __name__ == "__main__":
    main()

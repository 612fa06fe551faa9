"""A verl FSDP checkpoint's model shards written as a Hugging Face model's safetensors weights, one rank's
shard at a time: no weight is gathered from the ranks in memory.

verl saves the actor's weights as one file per rank (`model_world_size_W_rank_R.pt`), each holding its
slice of every weight's rows as a DTensor sharded along the first dimension (a hybrid-sharded run's
replicas hold the same slices again). Each rank's rows are written straight to their place in the output
file. A LoRA run's weights go by peft's names with each adapted weight's A and B beside them; W + s B A
has the rows of W and of B, so each rank's rows of W are merged with its rows of B and the whole A, the
only part gathered (the adapter rank x the layer's inputs, for each adapted layer).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from mixed_r1_verl.models.lora import (
    PEFT_ADAPTER_SUFFIXES,
    model_name,
    trained_lora_scaling,
    with_adapter,
)
from mixed_r1_verl.models.weight_files import (
    DTYPE_BYTES,
    FLOAT_DTYPES,
    MAX_FILE_BYTES,
    encoded_header,
    model_weight_shapes,
    safetensors_dtype,
    tensor_bytes,
    torch_dtype,
    write_index,
)

FSDP_CONFIG = "fsdp_config.json"
# The saved bytes read from one rank's file before it is loaded again: the pages of a loaded file stay in
# memory until every tensor read from it is gone.
READ_BYTES = 2**30


@dataclass
class OutputWeight:
    """A weight as the output holds it, and where its data comes from."""

    name: str
    saved: str
    shape: list[int]
    dtype: str
    file: int = 0
    offset: int = 0
    # Split by rows over the ranks; else each rank holds it whole, and the first one's copy is written.
    sharded: bool = True
    rows_written: int = 0
    # peft's name of the module whose adapter is merged into this weight.
    adapter: str | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.shape[0] if self.shape and self.shape[0] else 0


def load_rank(file: Path) -> dict:
    """A rank's shard file, its tensors mapped from the file rather than read."""
    import torch

    # Unpickling a device mesh outside a process group warns of torch.compile, which plays no part here.
    mesh_logger = logging.getLogger("torch.distributed.device_mesh")
    level = mesh_logger.level
    mesh_logger.setLevel(logging.ERROR)
    try:
        return torch.load(file, map_location="cpu", mmap=True, weights_only=False)
    finally:
        mesh_logger.setLevel(level)


def shard_files(shards_dir: Path) -> list[Path]:
    """The model shard files of the ranks of a verl FSDP checkpoint, in rank order."""
    config = shards_dir / FSDP_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"{shards_dir} holds no {FSDP_CONFIG}: it is no verl FSDP checkpoint")
    world_size = json.loads(config.read_text())["world_size"]
    files = [shards_dir / f"model_world_size_{world_size}_rank_{rank}.pt" for rank in range(world_size)]
    missing = [file.name for file in files if not file.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{shards_dir} lacks {len(missing)} of its {world_size} ranks' model shards ({', '.join(missing[:3])}); "
            "a checkpoint saved without `model` in save_contents holds none"
        )
    return files


def local_rows(value):
    """A rank's own part of a saved weight."""
    return value._local_tensor if hasattr(value, "placements") else value


def sharding(name: str, value, file: Path) -> tuple[bool, list[int] | None]:
    """Whether a saved weight is split by rows over ranks, and which ranks hold the parts, in order (None
    for a weight every rank holds whole)."""
    import torch

    if not hasattr(value, "placements"):
        if not isinstance(value, torch.Tensor) or hasattr(value, "local_shards"):
            raise ValueError(
                f"{file}: {name} is saved as a {type(value).__name__}; only tensors and FSDP's DTensors are read"
            )
        return False, None
    *replicas, last = value.placements
    if not all(placement.is_replicate() for placement in replicas) or not (
        last.is_replicate() or last.is_shard(0)
    ):
        raise ValueError(
            f"{file}: {name} is sharded as {tuple(value.placements)}; only FSDP's sharding along the first "
            "dimension (with replicas) is read"
        )
    if last.is_replicate():
        return False, None
    mesh = value.device_mesh.mesh
    return True, mesh.reshape(-1, mesh.shape[-1])[0].tolist()


def output_layout(
    shards_dir: Path, config_dir: Path, dtype: str | None, max_file_bytes: int
) -> tuple[list[OutputWeight], list[Path]]:
    """The weights the checkpoint's shards give, under the model's own names, in output files of at most
    `max_file_bytes` (but for a weight larger alone), and the shard files that hold their rows, in order."""
    files = shard_files(shards_dir)
    first = load_rank(files[0])
    expected, tied = model_weight_shapes(config_dir)
    weights, adapters, ranks = [], set(), None
    for saved, value in first.items():
        sharded, holders = sharding(saved, value, files[0])
        ranks = ranks or holders
        if ".lora_" in saved:
            if not saved.endswith(PEFT_ADAPTER_SUFFIXES):
                raise ValueError(f"{files[0]}: {saved} is not a LoRA A or B matrix of peft's default adapter")
            adapters.add(saved)
            continue
        name = model_name(saved)
        if name in tied:
            continue
        code = safetensors_dtype(value.dtype)
        if code is None:
            raise ValueError(f"{files[0]}: {saved} has the dtype {value.dtype}, which safetensors does not save")
        if dtype and code in FLOAT_DTYPES.values():
            code = FLOAT_DTYPES[dtype]
        weights.append(OutputWeight(name, saved, list(value.shape), code, sharded=sharded))
    del first
    names = {weight.name for weight in weights}
    missing, unexpected = [name for name in expected if name not in names], sorted(names - set(expected))
    reshaped = [f"{weight.name} {weight.shape} for {expected[weight.name]}" for weight in weights
                if weight.name in expected and weight.shape != expected[weight.name]]  # fmt: skip
    if missing or unexpected or reshaped:
        raise ValueError(
            f"the shards in {shards_dir} are not the weights of the model {config_dir / 'config.json'} describes: "
            f"{len(missing)} missing ({', '.join(missing[:3])}), {len(unexpected)} unexpected "
            f"({', '.join(unexpected[:3])}), {len(reshaped)} of another shape ({', '.join(reshaped[:3])}); "
            "a checkpoint saved with save_lora_only holds its adapters alone"
        )
    for weight in weights:
        module = weight.saved.removesuffix(".base_layer.weight")
        if module != weight.saved and f"{module}.lora_A.default.weight" in adapters:
            weight.adapter = module
    merged = {f"{weight.adapter}{suffix}" for weight in weights if weight.adapter for suffix in PEFT_ADAPTER_SUFFIXES}
    if adapters != merged:
        raise ValueError(f"{files[0]}: {', '.join(sorted(adapters ^ merged)[:3])} has no adapted weight or no "
                         "other half of its adapter")  # fmt: skip
    file, filled = 0, 0
    for weight in weights:
        if filled and filled + weight.nbytes > max_file_bytes:
            file, filled = file + 1, 0
        weight.file, weight.offset = file, filled
        filled += weight.nbytes
    return weights, [files[rank] for rank in ranks] if ranks else files[:1]


def gathered_adapter_inputs(rank_files: list[Path], weights: list[OutputWeight]) -> dict:
    """The whole A matrix of each adapted weight's adapter, from the rows every rank holds."""
    import torch

    parts = {weight.adapter: [] for weight in weights if weight.adapter}
    for file in rank_files:
        state = load_rank(file)
        for module, held in parts.items():
            held.append(local_rows(state[f"{module}.lora_A.default.weight"]).clone())
        del state
    return {module: torch.cat(held) for module, held in parts.items()}


def output_file_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{number:05d}-of-{count:05d}.safetensors" for number in range(1, count + 1)]


def write_fsdp_weights(
    shards_dir: Path, target_dir: Path, config_dir: Path, dtype: str | None = None, max_file_bytes=MAX_FILE_BYTES
) -> int:
    """Writes the model weights of a verl FSDP checkpoint's shards (`actor/`) to `target_dir` under the
    names the model of `config_dir`'s config saves them by, a LoRA run's adapters merged in, floating-point
    ones cast to `dtype` (torch's name) where given, in files of at most `max_file_bytes` with their index.
    Returns the number of adapters merged."""
    weights, rank_files = output_layout(shards_dir, config_dir, dtype, max_file_bytes)
    adapter_inputs, scaling = {}, None
    if any(weight.adapter for weight in weights):
        scaling = trained_lora_scaling(shards_dir, shards_dir)
        adapter_inputs = gathered_adapter_inputs(rank_files, weights)
    names = output_file_names(weights[-1].file + 1)
    target_dir.mkdir(parents=True, exist_ok=True)
    data_starts, descriptors = [], []
    for number, name in enumerate(names):
        held = [weight for weight in weights if weight.file == number]
        header = encoded_header({
            weight.name: {"dtype": weight.dtype, "shape": weight.shape,
                          "data_offsets": [weight.offset, weight.offset + weight.nbytes]}
            for weight in held
        })  # fmt: skip
        with open(target_dir / name, "wb") as file:
            file.write(header)
            file.truncate(len(header) + held[-1].offset + held[-1].nbytes)
        data_starts.append(len(header))
        descriptors.append(os.open(target_dir / name, os.O_WRONLY))
    try:
        for rank, file in enumerate(rank_files):
            state = rows = up = None
            read = 0
            for weight in weights:
                if not weight.sharded and rank:
                    continue
                if state is None or read >= READ_BYTES:
                    state = rows = up = None
                    state, read = load_rank(file), 0
                rows = local_rows(state[weight.saved])
                read += rows.nbytes
                check_rows(weight, rows, file)
                if weight.adapter:
                    up = local_rows(state[f"{weight.adapter}.lora_B.default.weight"])
                    if up.shape[0] != rows.shape[0]:
                        raise ValueError(f"{file}: {weight.adapter}'s B holds {up.shape[0]} rows of its weight's "
                                         f"{rows.shape[0]}")  # fmt: skip
                    rows = with_adapter(rows, adapter_inputs[weight.adapter], up, scaling)
                if safetensors_dtype(rows.dtype) != weight.dtype:
                    rows = rows.to(torch_dtype(weight.dtype))
                offset = data_starts[weight.file] + weight.offset + weight.rows_written * weight.row_bytes
                write_at(descriptors[weight.file], tensor_bytes(rows), offset)
                weight.rows_written += rows.shape[0] if weight.sharded else 1
            state = rows = up = None
    finally:
        for descriptor in descriptors:
            os.close(descriptor)
    short = [weight for weight in weights if weight.sharded and weight.rows_written != weight.shape[0]]
    if short:
        weight = short[0]
        raise ValueError(f"the ranks' shards in {shards_dir} hold {weight.rows_written} of the {weight.shape[0]} "
                         f"rows of {weight.saved}")  # fmt: skip
    if len(names) > 1:
        total = sum(weight.nbytes for weight in weights)
        write_index(target_dir, {weight.name: names[weight.file] for weight in weights}, total)
    return len(adapter_inputs)


def write_at(descriptor: int, data: memoryview, offset: int) -> None:
    # One write moves at most about 2 GB on Linux: a rank's rows of a large weight take several.
    while data:
        written = os.pwrite(descriptor, data, offset)
        data, offset = data[written:], offset + written


def check_rows(weight: OutputWeight, rows, file: Path) -> None:
    """Refuses a rank's part of a weight whose shape is not the weight's rows."""
    expected = weight.shape[1:] if weight.sharded else weight.shape
    shape = list(rows.shape[1:] if weight.sharded else rows.shape)
    if shape != expected or weight.sharded and weight.rows_written + rows.shape[0] > weight.shape[0]:
        raise ValueError(f"{file}: the part of {weight.saved} it holds, {list(rows.shape)}, does not fit the "
                         f"weight's {weight.shape}")  # fmt: skip

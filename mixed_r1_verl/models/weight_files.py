"""A model's safetensors weight files: read by their headers, written tensor by tensor (a directory's weights
rewritten renamed, some replaced, floating-point ones cast, holding only the tensor being changed in memory;
the others' bytes are copied as saved), and the names under which a model's architecture saves them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from mixed_r1_verl.data.model_files import WEIGHTS_INDEX

# The bytes copied at a time from a saved tensor that is written as it is.
COPY_CHUNK = 64 * 2**20
# safetensors' names of the floating-point dtypes a checkpoint's weights are cast between, by torch's name.
FLOAT_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}
# safetensors' names of the other dtypes a model's buffers may have, by torch's name.
OTHER_DTYPES = {"int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
# The bytes of one element of each of those dtypes, by safetensors' name.
DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "BF16": 2, "F16": 2, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
# The most bytes of one weight file, as transformers saves by default.
MAX_FILE_BYTES = 50 * 10**9


def is_weight_file(path: Path) -> bool:
    return path.is_file() and (path.suffix == ".safetensors" or path.name == WEIGHTS_INDEX)


def remove_weight_files(model_dir: Path) -> None:
    """Removes a model directory's weight files (none there is fine). verl saves a checkpoint step again into
    its folder without emptying it: its Hugging Face copy would keep the weights of an earlier run of that
    step where this save writes none (save_contents without hf_model), or fewer files."""
    if model_dir.is_dir():
        for path in model_dir.iterdir():
            if is_weight_file(path):
                path.unlink()


def saved_header(file: Path) -> tuple[dict, int]:
    """A safetensors file's header (each tensor's dtype, shape and byte range in the data) and where its data
    starts."""
    with open(file, "rb") as weights:
        length = int.from_bytes(weights.read(8), "little")
        header = json.loads(weights.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def saved_names(source_dir: Path) -> dict[Path, list[str]]:
    """The tensors each safetensors file of a directory holds, read from the headers."""
    return {file: list(saved_header(file)[0]) for file in sorted(source_dir.glob("*.safetensors"))}


def saved_dtypes(model_dir: Path) -> list[str]:
    """The dtypes (safetensors' names) of a model directory's weights."""
    headers = [saved_header(file)[0] for file in model_dir.glob("*.safetensors")]
    return sorted({entry["dtype"] for header in headers for entry in header.values()})


def torch_dtype(code: str):
    """The torch dtype of safetensors' name of a floating-point dtype."""
    import torch

    return getattr(torch, next(name for name, each in FLOAT_DTYPES.items() if each == code))


def safetensors_dtype(dtype) -> str | None:
    """safetensors' name of a torch dtype; None for one it does not save."""
    name = str(dtype).removeprefix("torch.")
    return FLOAT_DTYPES.get(name) or OTHER_DTYPES.get(name)


def encoded_header(entries: dict) -> bytes:
    """A safetensors file's header of `entries` (name: dtype, shape, data_offsets), length first; the data
    starts 8-byte aligned after it, as safetensors writes it."""
    encoded = json.dumps({"__metadata__": {"format": "pt"}, **entries}, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded


def write_index(target_dir: Path, weight_map: dict[str, str], total: int, saved_index: dict | None = None) -> None:
    """The index of a model's weight files (which file holds each tensor), over `saved_index`'s other keys."""
    index = {**(saved_index or {}), "metadata": {"total_size": total}, "weight_map": weight_map}
    (target_dir / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2))


def meta_model(model_dir):
    """The model a directory's config.json describes, built on the meta device: its modules and parameters
    without weights."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir))


def model_weight_shapes(model_dir) -> tuple[dict[str, list[int]], set[str]]:
    """The shape of each weight of the model of `model_dir`'s config, by the name it saves it under, and
    the names of the weights tied to others (an output layer sharing the input embeddings), which it saves
    once, under the other name."""
    model = meta_model(model_dir)
    first_names, tied = {}, set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if first_names.setdefault(id(parameter), name) != name:
            tied.add(name)
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items() if name not in tied}, tied


def read_tensor(file: Path, name: str):
    # Opened for each tensor: a file kept open keeps every tensor read from it mapped in memory.
    from safetensors import safe_open

    with safe_open(file, "pt") as weights:
        return weights.get_tensor(name)


def rewrite_weight_files(
    source_dir: Path,
    target_dir: Path,
    renamed: Callable[[str], str | None],
    replaced: Callable[[str], object | None] = lambda name: None,
    dtype: str | None = None,
) -> list[str]:
    """Writes the weights of `source_dir` to `target_dir`, in the same files (and index): each tensor under
    the name `renamed` gives its saved name (left out for None), as `replaced` gives it for its new name (a
    tensor of the same shape) or else as saved, cast to `dtype` (torch's name) where it is floating-point.
    Returns the files written."""
    cast = FLOAT_DTYPES[dtype] if dtype else None
    weight_map, total, files = {}, 0, []
    target_dir.mkdir(parents=True, exist_ok=True)
    for file in sorted(source_dir.glob("*.safetensors")):
        header, data_start = saved_header(file)
        entries, saved_as, end = {}, {}, 0
        for saved, entry in header.items():
            name = renamed(saved)
            if name is None:
                continue
            start, stop = entry["data_offsets"]
            written = cast if cast and entry["dtype"] in FLOAT_DTYPES.values() else entry["dtype"]
            size = stop - start
            if written != entry["dtype"]:
                size = math.prod(entry["shape"]) * DTYPE_BYTES[written]
            entries[name] = {"dtype": written, "shape": entry["shape"], "data_offsets": [end, end + size]}
            saved_as[name] = saved
            end += size
        if not entries:
            continue
        with open(file, "rb") as reading, open(target_dir / file.name, "wb") as writing:
            writing.write(encoded_header(entries))
            for name, entry in entries.items():
                saved = saved_as[name]
                tensor = replaced(name)
                if tensor is None and entry["dtype"] == header[saved]["dtype"]:
                    start, stop = header[saved]["data_offsets"]
                    copy_bytes(reading, writing, data_start + start, stop - start, f"{file}: {saved}")
                    continue
                if tensor is None:
                    tensor = read_tensor(file, saved)
                if entry["dtype"] != header[saved]["dtype"]:
                    tensor = tensor.to(torch_dtype(entry["dtype"]))
                writing.write(tensor_bytes(tensor))
        weight_map.update(dict.fromkeys(entries, file.name))
        total += end
        files.append(file.name)
    index = source_dir / WEIGHTS_INDEX
    if not index.is_file():
        return files
    write_index(target_dir, weight_map, total, json.loads(index.read_text()))
    return [*files, WEIGHTS_INDEX]


def tensor_bytes(tensor) -> memoryview:
    """A tensor's data as saved: its bytes in row-major order."""
    import torch

    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data


def copy_bytes(reading, writing, offset: int, count: int, what: str) -> None:
    reading.seek(offset)
    while count:
        chunk = reading.read(min(count, COPY_CHUNK))
        if not chunk:
            raise ValueError(f"{what}: the file ends inside the tensor")
        writing.write(chunk)
        count -= len(chunk)

"""Generations as JSONL lines ``{"id": ..., "response": ..., "truncated": ...}``: the resumable cache and
saved runs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mixed_r1_verl.data.model_files import PROCESSOR_FILES, file_stamps, resolve_model_dir
from mixed_r1_verl.models.lora import ADAPTER_DIR, adapter_settings_files
from mixed_r1_verl.settings import changed_entries

logger = logging.getLogger(__name__)

CACHE_FILE = "generations.jsonl"
MODEL_FILE = "model.json"


@dataclass(frozen=True)
class Completion:
    """One generated response, and whether it stopped at `max_new_tokens` before an end token (None:
    not recorded, as in generations written before it was)."""

    text: str
    truncated: bool | None = None


class GenerationFileError(ValueError):
    """A generations file line that is not ``{"id": str, "response": str}`` (and optionally ``"truncated": bool``)."""


def read_generations(path: str | Path) -> dict[str, Completion]:
    """Responses by id. An id on two lines is an error naming both, unless the later line answers
    another request than the earlier (the cache regenerated a record whose prompt or image changed): it wins."""
    responses: dict[str, Completion] = {}
    earlier: dict[str, tuple[int, str | None]] = {}
    for number, record_id, response, request in generation_lines(path):
        if record_id in earlier:
            first, first_request = earlier[record_id]
            if request is None or request == first_request:
                raise GenerationFileError(
                    f"{path}: id {record_id!r} has a response on line {first} and again on line {number}; "
                    "keep one line per id"
                )
        earlier[record_id] = (number, request)
        responses[record_id] = response
    return responses


def generation_lines(path: str | Path) -> Iterator[tuple[int, str, Completion, str | None]]:
    """(line number, id, response, request digest or None) of each line, in order."""
    with open(path, "rb") as lines:  # decoded line by line, so an error names its line
        for number, raw_line in enumerate(lines, start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise GenerationFileError(f"{path}: line {number}: not UTF-8 text ({error})") from None
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                yield number, str(entry["id"]), _completion(entry), entry.get("request")
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise GenerationFileError(
                    f'{path}: line {number}: expected {{"id": ..., "response": "..."}} ({error})'
                ) from None


def _completion(entry: dict) -> Completion:
    response, truncated = entry["response"], entry.get("truncated")
    if not isinstance(response, str):
        raise TypeError(f"response of id {entry['id']!r} is {type(response).__name__}, not a string")
    if truncated is not None and not isinstance(truncated, bool):
        raise TypeError(f"truncated of id {entry['id']!r} is {truncated!r}, not true, false or null")
    return Completion(response, truncated)


def drop_unfinished_last_line(path: Path) -> None:
    """An interrupted run may leave half a line at the end of an append-only JSONL file; it is cut, so that
    the next line appended starts a line of its own (and is read back)."""
    if not path.exists():
        return
    with open(path, "r+b") as lines:
        end = lines.seek(0, os.SEEK_END)
        if end == 0:
            return
        lines.seek(end - 1)
        if lines.read(1) == b"\n":
            return
        # Back from the end, a block at a time, to the last line's start (the file's start without one).
        keep = block_end = end
        while block_end > 0:
            block_start = max(0, block_end - (1 << 20))
            lines.seek(block_start)
            newline = lines.read(block_end - block_start).rfind(b"\n")
            if newline != -1:
                keep = block_start + newline + 1
                break
            keep = block_end = block_start
        logger.warning("%s: dropping an unfinished last line (%d bytes)", path, end - keep)
        lines.truncate(keep)


class GenerationCache:
    """Append-only JSONL of finished generations, each line with whether it was cut off at the token
    limit (`truncated`) and the digest of the request it answers (`request`: the prompt and its images);
    a rerun generates only the ids missing from it or asked differently since (a line without a digest
    counts as asked differently; one without `truncated` is reused, its truncation unknown)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_unfinished_last_line(self.path)
        self.responses: dict[str, Completion] = {}
        self.requests: dict[str, str | None] = {}
        if self.path.exists():
            for _, record_id, response, request in generation_lines(self.path):
                self.responses[record_id], self.requests[record_id] = response, request

    def missing(self, requests: Mapping[str, str]) -> list[str]:
        """The ids of `requests` (id -> request digest) that have no response to that same request."""
        return [record_id for record_id, digest in requests.items() if self.requests.get(record_id) != digest]

    def add(self, responses: Mapping[str, Completion], requests: Mapping[str, str]) -> None:
        """Append `responses` (by id), each with the digest of its request (`requests`, by id)."""
        with open(self.path, "a", encoding="utf-8") as sink:
            sink.writelines(
                json.dumps(
                    {
                        "id": record_id,
                        "response": response.text,
                        "truncated": response.truncated,
                        "request": requests[record_id],
                    },
                    ensure_ascii=False,
                )
                + "\n"
                for record_id, response in responses.items()
            )
        self.responses.update(responses)
        self.requests.update({record_id: requests[record_id] for record_id in responses})


def model_fingerprint(model: str) -> dict:
    """What a model answers with. A local directory: its path (links resolved) and the size and time of
    its weight files and its LoRA adapter's (lora_adapter/). A hub id: the id and the revision of its
    snapshot in the Hugging Face cache (which fixes its files; resolved as the generators resolve it),
    wherever the command runs. Both: the sha256 of each config, processor, tokenizer and chat template
    file, and of the files that set a LoRA adapter's rank and alpha (`adapter_settings_files`, by their
    path from the directory: `lora_adapter/adapter_config.json`), which decide the weights merged."""
    if Path(model).is_dir():
        directory = Path(model).resolve()
        weights = [*sorted(directory.glob("*.safetensors")), *sorted(directory.glob("*.bin")),
                   *sorted(directory.glob(f"{ADAPTER_DIR}/*.safetensors"))]  # fmt: skip
        identity = {"path": str(directory), "weights": file_stamps(directory, weights)}
        adapter = {os.path.relpath(path, directory): sha256(path) for path in adapter_settings_files(directory)}
    else:
        directory = resolve_model_dir(model)
        identity, adapter = {"hub_id": model, "revision": directory.name}, {}
    return {**identity, "files": {**processor_file_digests(directory), **adapter}}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def processor_file_digests(directory: Path) -> dict[str, str]:
    """sha256 by name of the files that shape the prompt and the decoding, not the weights (PROCESSOR_FILES)."""
    files = sorted({path for pattern in PROCESSOR_FILES for path in directory.glob(pattern) if path.is_file()})
    return {path.name: sha256(path) for path in files}


def discard_generations_made_otherwise(out_dir: Path, model: str, sampling: dict, generator: dict) -> None:
    """Cached generations are reused only for the model, the sampling settings and the generator
    (backend, device and dtype) that wrote them (`model.json` beside the cache records them): a
    checkpoint retrained at the same path, an edited chat template or processor config, another
    `max_new_tokens`, temperature, top_p or seed, or another backend or dtype is generated again, with a
    warning naming what changed; so is the cache beside a `model.json` that cannot be read."""
    record, cache = out_dir / MODEL_FILE, out_dir / CACHE_FILE
    made_with = {**model_fingerprint(model), "sampling": sampling, "generator": generator}
    if record.exists() and cache.exists():
        earlier = read_model_record(record)
        if earlier is None:
            logger.warning("%s: cannot be read, so what wrote %s is unknown; generating again", record, cache)
            cache.unlink()
        elif changed := changed_entries(earlier, made_with):
            differing = changed_entries(earlier, recorded_part(made_with, earlier))
            unrecorded = [key for key in changed if key not in differing]
            said = [f"another {', '.join(differing)}"] if differing else []
            if unrecorded:
                said.append(f"no record of {', '.join(unrecorded)} (an earlier version kept none)")
            logger.warning("%s: written with %s; generating again", cache, "; ".join(said))
            cache.unlink()
    partial = record.with_name(f".{record.name}.partial")
    partial.write_text(json.dumps(made_with, indent=2))
    partial.replace(record)


def read_model_record(path: Path) -> dict | None:
    """What `model.json` at `path` records; None where it cannot be read (an empty file, say, as a run
    killed while writing it left it before it was written whole at once)."""
    try:
        earlier = json.loads(path.read_bytes())
    except ValueError:  # not JSON, or not UTF-8 text
        return None
    return earlier if isinstance(earlier, dict) else None


def recorded_part(values: dict, earlier: dict) -> dict:
    """`values` without the keys (at any depth) that `earlier` lacks."""
    return {
        key: recorded_part(value, earlier[key]) if isinstance(value, dict) and isinstance(earlier[key], dict) else value
        for key, value in values.items()
        if key in earlier
    }


"""Generations as JSONL lines ``{"id": ..., "response": ...}``: the resumable cache and saved runs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from mixed_r1_verl.data.model_files import resolve_model_dir

logger = logging.getLogger(__name__)

CACHE_FILE = "generations.jsonl"
MODEL_FILE = "model.json"


class GenerationFileError(ValueError):
    """A generations file line that is not ``{"id": str, "response": str}``."""


def read_generations(path: str | Path) -> dict[str, str]:
    """Responses by id. An id on two lines is an error naming both, unless the later line answers
    another request than the earlier (the cache regenerated a record whose prompt or image changed): it wins."""
    responses: dict[str, str] = {}
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


def generation_lines(path: str | Path) -> Iterator[tuple[int, str, str, str | None]]:
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
                yield number, str(entry["id"]), _response_text(entry), entry.get("request")
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise GenerationFileError(
                    f'{path}: line {number}: expected {{"id": ..., "response": "..."}} ({error})'
                ) from None


def _response_text(entry: dict) -> str:
    response = entry["response"]
    if not isinstance(response, str):
        raise TypeError(f"response of id {entry['id']!r} is {type(response).__name__}, not a string")
    return response


class GenerationCache:
    """Append-only JSONL of finished generations, each line with the digest of the request it answers
    (`request`: the prompt and its images); a rerun generates only the ids missing from it or asked
    differently since (a line without a digest counts as asked differently)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_partial_last_line()
        self.responses: dict[str, str] = {}
        self.requests: dict[str, str | None] = {}
        if self.path.exists():
            for _, record_id, response, request in generation_lines(self.path):
                self.responses[record_id], self.requests[record_id] = response, request

    def _drop_partial_last_line(self) -> None:
        """An interrupted run may leave half a line; it is cut so appends stay valid JSONL."""
        if not self.path.exists():
            return
        content = self.path.read_bytes()
        if content and not content.endswith(b"\n"):
            keep = content.rfind(b"\n") + 1
            logger.warning("%s: dropping an unfinished last line (%d bytes)", self.path, len(content) - keep)
            self.path.write_bytes(content[:keep])

    def missing(self, requests: Mapping[str, str]) -> list[str]:
        """The ids of `requests` (id -> request digest) that have no response to that same request."""
        return [record_id for record_id, digest in requests.items() if self.requests.get(record_id) != digest]

    def add(self, responses: Mapping[str, str], requests: Mapping[str, str]) -> None:
        """Append `responses` (id -> text), each with the digest of its request (`requests`, by id)."""
        with open(self.path, "a", encoding="utf-8") as sink:
            sink.writelines(
                json.dumps({"id": record_id, "response": response, "request": requests[record_id]}, ensure_ascii=False)
                + "\n"
                for record_id, response in responses.items()
            )
        self.responses.update(responses)
        self.requests.update({record_id: requests[record_id] for record_id in responses})


def model_fingerprint(model: str) -> dict:
    """What a model answers with. A local directory: its path (links resolved) and the size and time of
    its weight files. A hub id: the id and the revision of its snapshot in the Hugging Face cache (which
    fixes its files; resolved as the generators resolve it), wherever the command runs."""
    if not Path(model).is_dir():
        return {"hub_id": model, "revision": resolve_model_dir(model).name}
    directory = Path(model).resolve()
    weights = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin"))
    sizes_and_times = [[file.name, file.stat().st_size, file.stat().st_mtime_ns] for file in weights]
    return {"path": str(directory), "weights": sizes_and_times}


def discard_generations_made_otherwise(out_dir: Path, model: str, sampling: dict) -> None:
    """Cached generations are reused only for the model and the sampling settings that wrote them
    (`model.json` beside the cache records both): a checkpoint retrained at the same path, or another
    `max_new_tokens`, temperature, top_p or seed, is generated again."""
    record, cache = out_dir / MODEL_FILE, out_dir / CACHE_FILE
    made_with = {**model_fingerprint(model), "sampling": sampling}
    if record.exists() and cache.exists():
        earlier = json.loads(record.read_text())
        changed = sorted(key for key in made_with.keys() | earlier.keys() if earlier.get(key) != made_with.get(key))
        if changed:
            logger.warning("%s: written with another %s; generating again", cache, " and ".join(changed))
            cache.unlink()
    record.write_text(json.dumps(made_with, indent=2))

"""Generations as JSONL lines ``{"id": ..., "response": ...}``: the resumable cache and saved runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_FILE = "generations.jsonl"
MODEL_FILE = "model.json"


class GenerationFileError(ValueError):
    """A generations file line that is not ``{"id": str, "response": str}``."""


def read_generations(path: str | Path) -> dict[str, str]:
    """Responses by id. A later line for the same id wins (a rerun that regenerated it)."""
    responses: dict[str, str] = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                responses[str(entry["id"])] = _response_text(entry)
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise GenerationFileError(
                    f'{path}: line {number}: expected {{"id": ..., "response": "..."}} ({error})'
                ) from None
    return responses


def _response_text(entry: dict) -> str:
    response = entry["response"]
    if not isinstance(response, str):
        raise TypeError(f"response of id {entry['id']!r} is {type(response).__name__}, not a string")
    return response


class GenerationCache:
    """Append-only JSONL of finished generations; a rerun skips the ids already in it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_partial_last_line()
        self.responses = read_generations(self.path) if self.path.exists() else {}

    def _drop_partial_last_line(self) -> None:
        """An interrupted run may leave half a line; it is cut so appends stay valid JSONL."""
        if not self.path.exists():
            return
        content = self.path.read_bytes()
        if content and not content.endswith(b"\n"):
            keep = content.rfind(b"\n") + 1
            logger.warning("%s: dropping an unfinished last line (%d bytes)", self.path, len(content) - keep)
            self.path.write_bytes(content[:keep])

    def missing(self, ids: list[str]) -> list[str]:
        return [record_id for record_id in ids if record_id not in self.responses]

    def add(self, responses: dict[str, str]) -> None:
        with open(self.path, "a", encoding="utf-8") as sink:
            sink.writelines(
                json.dumps({"id": record_id, "response": response}, ensure_ascii=False) + "\n"
                for record_id, response in responses.items()
            )
        self.responses.update(responses)


def model_fingerprint(model: str) -> dict:
    """The model directory (links resolved) and the size and time of its weight files."""
    directory = Path(model).resolve()
    weights = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin"))
    return {"path": str(directory), "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights]}


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

"""The data engine's resumable cache of sampled responses (generation itself is
`mixed_r1_verl.eval.generation`, shared with evaluation)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mixed_r1_verl.eval.cache import Completion, drop_unfinished_last_line


def request_key(
    record_id: str,
    prompt_text: str,
    image_digests: tuple[str, ...],
    pixel_bounds: tuple[int, int],
    model: str,
    settings,
) -> str:
    """Identifies prompt, images (their bytes and the (min, max) pixels they are resized within, which
    decide what the model sees), model and sampling settings in the cache."""
    payload = json.dumps(
        [record_id, prompt_text, image_digests, pixel_bounds, model, settings.__dict__], sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    """Append-only JSONL of {key, responses, truncated}; a rerun reads it back and samples only what is
    missing. A line without `truncated` (written before it was recorded) is reused, its truncation unknown."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, list[Completion]] = {}
        drop_unfinished_last_line(self.path)  # its prompt is sampled again
        if self.path.exists():
            with open(self.path, encoding="utf-8") as lines:
                for line in lines:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a cut line a cache written by an earlier version appended onto
                    self.entries[entry["key"]] = stored_completions(entry)

    def add(self, responses_by_key: dict[str, list[Completion]]) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            for key, responses in responses_by_key.items():
                texts = [response.text for response in responses]
                truncated = [response.truncated for response in responses]
                out.write(json.dumps({"key": key, "responses": texts, "truncated": truncated}) + "\n")
        self.entries.update(responses_by_key)


def stored_completions(entry: dict) -> list[Completion]:
    """A cache line's responses; their truncation unknown (None) where the line does not record one per response."""
    texts, truncated = entry["responses"], entry.get("truncated")
    if not isinstance(truncated, list) or len(truncated) != len(texts):
        truncated = [None] * len(texts)
    return [Completion(text, stopped) for text, stopped in zip(texts, truncated)]

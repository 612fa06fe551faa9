"""The data engine's resumable cache of sampled responses (generation itself is
`mixed_r1_verl.eval.generation`, shared with evaluation)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from mixed_r1_verl.eval.cache import Completion, drop_unfinished_last_line

logger = logging.getLogger(__name__)


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
    missing. A line without `truncated` (written before it was recorded) is reused, its truncation unknown.
    The responses stay in the file: the cache holds each key's line offset and reads a key's line when asked.
    A line that holds no entry of `responses_per_prompt` responses (cut short, or edited) is left out, with
    a warning naming the file, and its prompt sampled again."""

    def __init__(self, path: str | os.PathLike, responses_per_prompt: int):
        self.path = Path(path)
        self.offsets: dict[str, int] = {}
        drop_unfinished_last_line(self.path)  # its prompt is sampled again
        if not self.path.exists():
            return
        left_out = []
        with open(self.path, "rb") as lines:
            offset = 0
            for number, line in enumerate(lines, start=1):
                key = entry_key(line, responses_per_prompt)
                if key is None:
                    left_out.append(number)
                else:
                    self.offsets[key] = offset
                offset += len(line)
        if left_out:
            logger.warning(
                "%s: %d line(s) hold no entry of %d responses (line %d first): their prompts are sampled again",
                self.path, len(left_out), responses_per_prompt, left_out[0],
            )  # fmt: skip

    def __contains__(self, key: str) -> bool:
        return key in self.offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, responses_by_key: dict[str, list[Completion]]) -> None:
        with open(self.path, "ab") as out:
            for key, responses in responses_by_key.items():
                texts = [response.text for response in responses]
                truncated = [response.truncated for response in responses]
                self.offsets[key] = out.tell()
                out.write(json.dumps({"key": key, "responses": texts, "truncated": truncated}).encode() + b"\n")

    def responses(self, key: str) -> list[Completion]:
        with open(self.path, "rb") as lines:
            lines.seek(self.offsets[key])
            return stored_completions(json.loads(lines.readline()))


def entry_key(line: bytes, responses_per_prompt: int) -> str | None:
    """The key of a cache line that holds `responses_per_prompt` responses, else None."""
    try:
        entry = json.loads(line)
    except ValueError:  # not JSON (a cut line an earlier version appended onto), or not UTF-8
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        return None
    texts = entry.get("responses")
    if not isinstance(texts, list) or len(texts) != responses_per_prompt:
        return None
    return entry["key"] if all(isinstance(text, str) for text in texts) else None


def stored_completions(entry: dict) -> list[Completion]:
    """A cache line's responses; their truncation unknown (None) where the line does not record one per response."""
    texts, truncated = entry["responses"], entry.get("truncated")
    if not isinstance(truncated, list) or len(truncated) != len(texts):
        truncated = [None] * len(texts)
    return [Completion(text, stopped) for text, stopped in zip(texts, truncated)]

"""The canonical record, its validation, and column mappings that read other layouts into it.

Canonical record (one JSON object per line):

    {"id": str (optional), "task": "matching" | "chart" | "grounding" | "open_ended" | an installed task,
     "data_source": str, "images": [relative image paths], "problem": str, "answer": str,
     "options": [str] (optional), "split": "train" | "val" (optional), "rationale": str (optional),
     "reward_info": {field: value} (optional; an installed task's declared reward fields)}

A row without an `id` is given one derived from its content (`generated_id`).

`problem` holds one `<image>` placeholder per image, or none (then they are prepended). A grounding
`answer` is "[x1, y1, x2, y2]" in original image pixels (0-1 fractions with box_units=normalized, the
0-1000 grid with box_units=norm1000). A matching answer with `options` is an option's letter, or its text
(then written as its letter), or with the mapping's answer_index_base the option's index. Options that all
begin with their own letter ("A. red", "(B) blue") lose it: the prompt letters them. `split` pins the row
to a split (else the converter's seeded hash decides); `rationale` is the reasoning a careful annotator
would write before the answer, the `<think>` part of the supervised fine-tuning target. A blank `split`
or `rationale` counts as absent; a source answer that is one `<answer>...</answer>` block is its content.
`reward_info` gives what an installed task's accuracy reads besides the answer, each field of the type the
task declares (`Task.reward_fields`).
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from mixed_r1_verl.rewards.answer import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from mixed_r1_verl.rewards.matching import (
    OPTION_LETTERS,
    matching_accuracy,
    option_text_letters,
    options_without_their_letters,
)
from mixed_r1_verl.rewards.tasks import reward_field_value_error, reward_fields, task_names

IMAGE_PLACEHOLDER = "<image>"
# The Qwen2-VL family's image token: the processor expands each one in a prompt into an image's patches.
IMAGE_PAD = "<|image_pad|>"
# The image tokens of the families Mixed-R1 trains (InternVL's expands into an image's tiles).
MODEL_IMAGE_TOKENS = (IMAGE_PAD, "<IMG_CONTEXT>")
# The chat templates' turn tokens of those families: in a row's text one would end a turn where the text
# stands (an SFT target taught to stop before its answer, a prompt with a turn of its own).
CHAT_TURN_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
# The tags verl's dataset splits a prompt on besides `<image>`, each the place of one of the row's videos or
# audio clips: the converter writes images only, so a prompt holding one fails when its batch is drawn.
MEDIA_TAGS = ("<video>", "<audio>")
SPLITS = ("train", "val")
CANONICAL_FIELDS = (
    "id", "task", "data_source", "images", "problem", "answer", "options", "split", "rationale", "reward_info"
)  # fmt: skip

# Reject reasons, as they appear in rejects.jsonl and summary.json.
BAD_RECORD = "bad_record"
UNKNOWN_TASK = "unknown_task"
EMPTY_ANSWER = "empty_answer"
DUPLICATE_ID = "duplicate_id"
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_OUTSIDE_ROOT = "image_outside_root"
UNSUPPORTED_IMAGE_SIZE = "unsupported_image_size"
BAD_BOX = "bad_box"
DEGENERATE_BOX = "degenerate_box"
BOX_OUTSIDE_IMAGE = "box_outside_image"
GROUNDING_IMAGE_COUNT = "grounding_needs_one_image"
ANSWER_NOT_AN_OPTION = "answer_not_an_option"
NON_FINITE_ANSWER = "non_finite_answer"
PROMPT_TOO_LONG = "prompt_too_long"
IMAGE_TOKEN_IN_TEXT = "image_token_in_text"
CHAT_TOKEN_IN_TEXT = "chat_token_in_text"
MEDIA_TAG_IN_TEXT = "media_tag_in_text"
FORMAT_TAG_IN_TEXT = "format_tag_in_text"
BOX_LOOKS_NORMALIZED = "box_looks_normalized"
BAD_REWARD_INFO = "bad_reward_info"

# Units of the source's grounding boxes, each with the value that spans a whole side of the image: pixels of
# the original image (None: the side's own length), 0-1 fractions of its width and height (LLaVA, Shikra), or
# the 0-1000 grid (Qwen2-VL, Qwen3-VL and InternVL data).
BOX_UNITS = {"pixels": None, "normalized": 1, "norm1000": 1000}

_NUMBER = r"\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*"
_BOX_PATTERN = re.compile(r"^\[" + ",".join([_NUMBER] * 4) + r"\]$")
# The tags of the response format: the SFT target `<think>{rationale}</think><answer>{answer}</answer>`.
FORMAT_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
# A source answer that is one answer block, as R1-V, Video-R1 and ms-swift data give solutions.
ANSWER_BLOCK = re.compile(rf"\s*{re.escape(ANSWER_OPEN)}(.*){re.escape(ANSWER_CLOSE)}\s*", re.DOTALL)
# An answer naming an option by its letter: "B", "(B)", "B.", "B:", "B)".
OPTION_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:)]?")


class RecordError(ValueError):
    """A row that cannot be used; `reason` is one of the reject reasons above."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SpilledBytes:
    """Bytes written to a file at `offset`, read back on demand."""

    file: Path
    offset: int
    length: int

    def read(self) -> bytes:
        with open(self.file, "rb") as source:
            return os.pread(source.fileno(), self.length, self.offset)


@dataclass(frozen=True)
class EmbeddedImage:
    """An image a row holds as bytes, as a Hugging Face dataset's parquet stores its images ({bytes, path}),
    rather than as a file under the image root."""

    # The image file's bytes, or where they were put on disk (the data engine keeps the images it reads there).
    data: bytes | SpilledBytes = field(repr=False)
    # The source's `path`: the file the image was read from, kept for messages and the output's `path`.
    name: str | None = None

    def read(self) -> bytes:
        return self.data if isinstance(self.data, bytes) else self.data.read()


def image_label(image: str | EmbeddedImage) -> str:
    """An image as messages name it: a file by its path, an embedded image by its source's path."""
    if isinstance(image, EmbeddedImage):
        return f"embedded image {image.name!r}" if image.name else "an embedded image"
    return f"image {image!r}"


@dataclass(frozen=True)
class CanonicalRecord:
    id: str | None  # None when the source gives none, until the converter derives it (`generated_id`)
    task: str
    data_source: str
    # Paths under the image root, or images the row holds as bytes.
    images: tuple[str | EmbeddedImage, ...]
    problem: str
    answer: str
    options: tuple[str, ...] | None = None
    split: str | None = None
    rationale: str | None = None
    # The task's reward fields the row gives (never empty: None for none).
    reward_info: dict[str, Any] | None = None


def box_numbers(value: Any) -> tuple[float, float, float, float]:
    """The four finite numbers of a "[a, b, c, d]" string or a list of 4 numbers (or number strings, as
    CSV exports give them), in either box format."""
    if isinstance(value, str):
        match = _BOX_PATTERN.match(value.strip())
        if not match:
            raise RecordError(BAD_BOX, f"expected '[x1, y1, x2, y2]', got {value!r}")
        box = tuple(float(v) for v in match.groups())
    elif isinstance(value, (list, tuple)) and len(value) == 4 and all(map(_is_coordinate, value)):
        try:
            box = tuple(float(v) for v in value)
        except OverflowError:  # an integer beyond any float
            box = (math.inf,)
    else:
        raise RecordError(BAD_BOX, f"expected 4 numbers, got {value!r}")
    if not all(math.isfinite(v) for v in box):
        raise RecordError(BAD_BOX, f"box {value!r} has a coordinate that is not a finite number")
    return box


def parse_box(value: Any) -> tuple[float, float, float, float]:
    """[x1, y1, x2, y2] from a "[x1, y1, x2, y2]" string or a 4-number list; x2 > x1 and y2 > y1."""
    box = box_numbers(value)
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise RecordError(DEGENERATE_BOX, f"box {list(box)} has no area")
    return box


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_blank(value: Any) -> bool:
    return value is None or isinstance(value, str) and not value.strip()


def _is_coordinate(value: Any) -> bool:
    return _is_number(value) or (isinstance(value, str) and re.fullmatch(_NUMBER, value) is not None)


def normalise_problem(problem: str, image_count: int) -> str:
    """The problem with exactly one `<image>` per image: prepended when it has none."""
    placeholders = problem.count(IMAGE_PLACEHOLDER)
    if placeholders == image_count:
        return problem
    if placeholders == 0:
        return IMAGE_PLACEHOLDER * image_count + problem
    raise RecordError(PLACEHOLDER_MISMATCH, f"{placeholders} <image> placeholders for {image_count} images")


def option_index(answer: str) -> int | None:
    """The 0-based option an answer names by its letter, or None when it is not a bare letter."""
    letter = OPTION_LETTER.fullmatch(answer.strip())
    return ord(letter.group(1).upper()) - ord("A") if letter else None


def is_non_finite_number(answer: str) -> bool:
    """True for answers that read as NaN or an infinity ("nan", "inf", "-Infinity", "1e999"): the chart
    reward, which reads answers as numbers, cannot score against them."""
    try:
        return not math.isfinite(float(answer))
    except ValueError:
        return False


def written_letter(letter: str, options: Sequence) -> str:
    """An option's letter as the answer written for it: in parentheses where the bare letter is also an
    option's text, which `option_answer` would find ambiguous when the row is read again."""
    return f"({letter})" if any(isinstance(option, str) and option.strip() == letter for option in options) else letter


def option_answer(answer: str, options: tuple[str, ...]) -> str:
    """The answer of a row with options as the prompt asks for it, by letter: a letter in range is kept;
    another answer becomes the letter of the one option the matching reward reads it as naming ("blue",
    "(B) blue" or "Option B" with options "A. red", "B. blue"). Options may be letters themselves (a
    diagram's labels): a bare letter past the options that is one option's text becomes its letter ("F" of
    [K, F, E] is B), and one in range that is the text of another option is a reject, either being meant.
    A letter written for an answer is in parentheses where it is an option's text (`written_letter`)."""
    letters = f"A-{OPTION_LETTERS[len(options) - 1]}"
    index = option_index(answer)
    if index is not None:
        text_of = [letter for letter, option in zip(OPTION_LETTERS, options) if option == answer]
        if index < len(options):
            if set(text_of) <= {OPTION_LETTERS[index]}:
                return answer
            detail = (
                f"answer {answer!r} is ambiguous: it is the letter of option {OPTION_LETTERS[index]} (text "
                f"{options[index]!r}) and the text of option {', '.join(text_of)}; write the letter meant in "
                f"parentheses ('({OPTION_LETTERS[index]})' or '({text_of[0]})'), or give the option's index "
                "with answer_index_base"
            )
            raise RecordError(ANSWER_NOT_AN_OPTION, detail)
        if len(text_of) == 1:
            return written_letter(text_of[0], options)
        detail = f"answer {answer!r} names an option the row lacks: it has {len(options)} options ({letters})"
        if text_of:
            detail = f"answer {answer!r} is the text of options {', '.join(text_of)}"
        raise RecordError(ANSWER_NOT_AN_OPTION, detail)
    named = [letter for letter in OPTION_LETTERS[: len(options)] if matching_accuracy(answer, letter, options)]
    if len(named) == 1:
        return written_letter(named[0], options)
    same_text = sorted(option_text_letters(answer, options))
    if len(same_text) > 1:
        raise RecordError(ANSWER_NOT_AN_OPTION, f"answer {answer!r} is the text of options {', '.join(same_text)}")
    detail = (
        f"answer {answer!r} is neither an option letter nor an option's text: the row has {len(options)} options "
        f"({letters})"
    )
    if answer.isascii() and answer.isdigit():
        detail += "; where answers give the right option's index, set answer_index_base (0 or 1, where they count from)"
    raise RecordError(ANSWER_NOT_AN_OPTION, detail)


def scorable_answer(task: str, answer: str, options: tuple[str, ...] | None) -> str:
    """The answer as the task's reward scores it; a reject when the reward could not score it. Only
    chart answers are read as numbers: a word like "Infinity" is a fine matching or open-ended answer."""
    if task == "chart" and is_non_finite_number(answer):
        raise RecordError(NON_FINITE_ANSWER, f"answer {answer!r} is not a finite number")
    if task == "matching" and options:
        return option_answer(answer, options)
    return answer


def _field_strings(raw: dict) -> Iterator[tuple[str, str]]:
    """(field, string) for each string a canonical row holds, list items and reward fields included."""
    fields = [(name, raw.get(name)) for name in CANONICAL_FIELDS]
    if isinstance(raw.get("reward_info"), dict):
        fields += [(f"reward_info.{name}", value) for name, value in raw["reward_info"].items()]
    for name, value in fields:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                yield name, item
            elif isinstance(item, dict):  # an image given as {"bytes", "path"}
                yield from ((f"{name}.{key}", text) for key, text in item.items() if isinstance(text, str))


def check_strings_are_unicode(raw: dict) -> None:
    """A lone surrogate (JSON's "\\ud800") is no Unicode text: parquet cannot store it."""
    for name, text in _field_strings(raw):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RecordError(
                BAD_RECORD, f"field {name!r} holds a lone surrogate {text[error.start]!r} at character {error.start}"
            ) from None


def _option_texts(options: tuple[str, ...] | None) -> Iterator[tuple[str, str]]:
    for letter, option in zip(OPTION_LETTERS, options or ()):
        yield f"option {letter}", option


def _texts_besides_problem(
    answer: str, options: tuple[str, ...] | None, rationale: str | None
) -> Iterator[tuple[str, str]]:
    yield "answer", answer
    yield from _option_texts(options)
    if rationale is not None:
        yield "rationale", rationale


def check_image_tokens(problem: str, answer: str, options: tuple[str, ...] | None, rationale: str | None) -> None:
    """Images are placed by the problem's `<image>` placeholders alone: one elsewhere, or the model's
    own image token anywhere, would give the prompt or the SFT target more image slots than images."""
    for name, text in _texts_besides_problem(answer, options, rationale):
        if IMAGE_PLACEHOLDER in text:
            detail = f"{name} holds {IMAGE_PLACEHOLDER!r}: only the problem places images"
            raise RecordError(IMAGE_TOKEN_IN_TEXT, detail)
    for name, text in (("problem", problem), *_texts_besides_problem(answer, options, rationale)):
        for token in MODEL_IMAGE_TOKENS:
            if token in text:
                raise RecordError(IMAGE_TOKEN_IN_TEXT, f"{name} holds the model's image token {token!r}")


def check_chat_tokens(problem: str, answer: str, options: tuple[str, ...] | None, rationale: str | None) -> None:
    for name, text in (("problem", problem), *_texts_besides_problem(answer, options, rationale)):
        for token in CHAT_TURN_TOKENS:
            if token in text:
                raise RecordError(CHAT_TOKEN_IN_TEXT, f"{name} holds the chat template's turn token {token!r}")


def media_tag_reason(tag: str) -> str:
    return f"verl's dataset reads {tag!r} as the place of one of a row's {tag.strip('<>')}s; converted rows have none"


def check_media_tags(problem: str, options: tuple[str, ...] | None) -> None:
    """The prompt (the problem and options) holds no `<video>` or `<audio>` (MEDIA_TAGS)."""
    for name, text in (("problem", problem), *_option_texts(options)):
        for tag in MEDIA_TAGS:
            if tag in text:
                raise RecordError(MEDIA_TAG_IN_TEXT, f"{name} holds {tag!r}: {media_tag_reason(tag)}")


def check_format_tags(answer: str, rationale: str | None) -> None:
    """The answer and rationale go between the response format's tags (the SFT target
    `<think>{rationale}</think><answer>{answer}</answer>`; the answer the rewards extract): a tag inside
    them would break that format."""
    for name, text in (("answer", answer), ("rationale", rationale or "")):
        for tag in FORMAT_TAGS:
            if tag in text:
                raise RecordError(FORMAT_TAG_IN_TEXT, f"{name} holds the response format's tag {tag!r}")


def _require_str(raw: dict, key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise RecordError(BAD_RECORD, f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _optional_id(raw: dict) -> str | None:
    record_id = raw.get("id")
    if record_id is None:
        return None
    if not isinstance(record_id, str):
        raise RecordError(
            BAD_RECORD, f"field 'id' must be a string or a whole number, got {type(record_id).__name__} {record_id!r}"
        )
    if not record_id.strip():
        raise RecordError(BAD_RECORD, "field 'id' is empty")
    return record_id


def _optional_text(raw: dict, key: str) -> Any:
    """A field that may be absent; blank text counts as absent (a table's empty cells: pandas' fillna(""))."""
    value = raw.get(key)
    return None if is_blank(value) else value


def _optional_split(raw: dict) -> str | None:
    split = _optional_text(raw, "split")
    if split is not None and split not in SPLITS:
        raise RecordError(BAD_RECORD, f"field 'split' must be one of {', '.join(SPLITS)} or absent, got {split!r}")
    return split


def _optional_rationale(raw: dict) -> str | None:
    rationale = _optional_text(raw, "rationale")
    if rationale is None:
        return None
    if not isinstance(rationale, str):
        raise RecordError(BAD_RECORD, "field 'rationale' must be a non-empty string or absent")
    return rationale.strip()


def _optional_reward_info(raw: dict, task: str) -> dict[str, Any] | None:
    """The reward fields the row gives, each of the type its task declares; a null field counts as not given."""
    info = raw.get("reward_info")
    if info is None:
        return None
    declared = reward_fields(task)
    fields = ", ".join(declared) or "none"
    if not isinstance(info, dict):
        detail = f"field 'reward_info' must be an object of the reward fields of task {task!r} ({fields}), got {info!r}"
        raise RecordError(BAD_REWARD_INFO, detail)
    given = {name: value for name, value in info.items() if value is not None}
    for name, value in given.items():
        if name not in declared:
            raise RecordError(BAD_REWARD_INFO, f"reward_info.{name}: task {task!r} has no such reward field ({fields})")
        if error := reward_field_value_error(declared[name], value):
            raise RecordError(BAD_REWARD_INFO, f"reward_info.{name}: {error}")
    return given or None


def record_image(image: Any, number: int) -> str | EmbeddedImage:
    """The row's `number`th image: a path under the image root, or an image struct {bytes, path} as Hugging
    Face datasets write them, whose bytes are the image (with bytes null, its path is read like a path)."""
    if isinstance(image, dict) and image and image.keys() <= {"bytes", "path"}:
        data, name = image.get("bytes"), image.get("path")
        if name is not None and not isinstance(name, str):
            raise RecordError(BAD_RECORD, f"image {number}: 'path' must be a string, got {type(name).__name__}")
        if data is None:
            image = name
        elif isinstance(data, bytes) and data:
            return EmbeddedImage(data, name or None)
        else:
            raise RecordError(
                BAD_RECORD,
                f"image {number}: 'bytes' must hold the image file's bytes (a binary parquet column), got "
                f"{'no bytes' if data == b'' else type(data).__name__}; a JSON row gives a path instead",
            )
    if not isinstance(image, str) or not image:
        raise RecordError(
            BAD_RECORD, f"image {number}: expected a path or an image struct {{bytes, path}}, got {image!r:.60}"
        )
    if "\0" in image:
        raise RecordError(BAD_RECORD, f"image path {image!r} holds a NUL byte")
    return image


def parse_record(raw: dict) -> CanonicalRecord:
    """Validate a canonical row (images not opened yet) and normalise its problem."""
    if not isinstance(raw, dict):
        raise RecordError(BAD_RECORD, f"expected a JSON object, got {type(raw).__name__}")
    check_strings_are_unicode(raw)
    record_id = _optional_id(raw)
    task = raw.get("task")
    if task not in task_names():
        raise RecordError(UNKNOWN_TASK, f"task {task!r} is not one of {', '.join(task_names())}")
    images = raw.get("images")
    if not isinstance(images, list) or not images:
        raise RecordError(BAD_RECORD, "field 'images' must be a non-empty list of paths or of embedded images")
    images = [record_image(image, number) for number, image in enumerate(images, start=1)]
    answer = raw.get("answer")
    if answer is None:
        raise RecordError(EMPTY_ANSWER, "answer is missing")
    if isinstance(answer, str) and not answer.strip():
        raise RecordError(EMPTY_ANSWER, "answer is empty")
    answer = _require_str(raw, "answer").strip()
    options = raw.get("options")
    if options is not None:
        if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
            raise RecordError(BAD_RECORD, "field 'options' must be a list of non-empty strings")
        if len(options) > len(OPTION_LETTERS):
            raise RecordError(
                BAD_RECORD, f"{len(options)} options, more than the {len(OPTION_LETTERS)} letters A-Z can name"
            )
        options = options_without_their_letters(tuple(o.strip() for o in options)) or None
    answer = scorable_answer(task, answer, options)
    if task == "grounding":
        if len(images) != 1:
            raise RecordError(GROUNDING_IMAGE_COUNT, f"grounding rows need exactly one image, got {len(images)}")
        parse_box(answer)
    problem = normalise_problem(_require_str(raw, "problem"), len(images))
    rationale = _optional_rationale(raw)
    check_image_tokens(problem, answer, options, rationale)
    check_chat_tokens(problem, answer, options, rationale)
    check_media_tags(problem, options)
    check_format_tags(answer, rationale)
    return CanonicalRecord(
        id=record_id,
        task=task,
        data_source=_require_str(raw, "data_source"),
        images=tuple(images),
        problem=problem,
        answer=answer,
        options=options,
        split=_optional_split(raw),
        rationale=rationale,
        reward_info=_optional_reward_info(raw, task),
    )


# The mark between the data_source and the content digest of a generated id.
GENERATED_ID_MARK = "-auto-"


def generated_id(record: CanonicalRecord, image_digests: Sequence[str]) -> str:
    """The id of a row whose source gives none: `<data_source>-auto-<16 hex digits>`, a digest of the
    task, the images' bytes (their SHA-256 digests), problem, options, answer and rationale. It is the
    same in every run and at any row position (so is the split hashed from it); rows with the same content
    share it. Reward fields count as content where a row gives them."""
    content = [
        record.task, list(image_digests), record.problem, list(record.options or ()), record.answer, record.rationale
    ]  # fmt: skip
    if record.reward_info:
        content.append(sorted(record.reward_info.items()))
    digest = hashlib.blake2b(json.dumps(content).encode(), digest_size=8).hexdigest()
    return f"{record.data_source}{GENERATED_ID_MARK}{digest}"


# What a mapped column is: a dotted path, or for options a list of them, for reward_info reward fields' paths.
Column = str | list[str] | dict[str, str]
COLUMN_FORMS = {
    "options": "a dotted path, or a list of them, one per option",
    "reward_info": "a dotted path, or reward fields to paths",
}


def is_column(name: str, column: Any) -> bool:
    if name == "options" and isinstance(column, list):
        return bool(column) and all(isinstance(path, str) and path for path in column)
    if name == "reward_info" and isinstance(column, dict):
        return all(isinstance(path, str) for path in column.values())
    return isinstance(column, str)


@dataclass(frozen=True)
class ColumnMapping:
    """How to read a source row into a canonical one.

    `columns` maps a canonical field to a dotted path in the source row ("conversations.0.value"; `*`
    takes every item of a list: "answers.*.answer"), `options` also to a list of paths, one per option
    (MMBench's ["A", "B", "C", "D"]), and `reward_info` also field by field to paths
    ({"answers": "annotations.*.text"}); `constants` gives fields a fixed value (e.g. task=chart), and
    `reward_info` fields a value added to those read for every row; `box_format` is "xyxy" or "xywh" (COCO),
    for a box given as a 4-number list or a "[a, b, c, d]" string alike; `box_units` is "pixels",
    "normalized" (0-1) or "norm1000" (0-1000), the last two scaled to the image's pixels when it is opened;
    `problem_template` wraps the mapped problem ("{problem}"); `answer_index_base`, 0 or 1, reads the answer
    of a row with options as the index of the right option counting from it (None: a letter or an option's text).
    """

    columns: dict[str, Column] = field(default_factory=lambda: {f: f for f in CANONICAL_FIELDS})
    constants: dict[str, Any] = field(default_factory=dict)
    box_format: str = "xyxy"
    box_units: str = "pixels"
    problem_template: str = "{problem}"
    answer_index_base: int | None = None

    def __post_init__(self):
        unknown = (set(self.columns) | set(self.constants)) - set(CANONICAL_FIELDS)
        if unknown:
            raise ValueError(f"unknown canonical fields in column mapping: {sorted(unknown)}")
        for name, column in self.columns.items():
            if not is_column(name, column):
                raise ValueError(f"columns.{name} must be {COLUMN_FORMS.get(name, 'a dotted path')}, got {column!r}")
        reward_constants = self.constants.get("reward_info", {})
        if not isinstance(reward_constants, dict):
            raise ValueError(f"constants.reward_info must be an object of reward fields, got {reward_constants!r}")
        if self.box_format not in ("xyxy", "xywh"):
            raise ValueError(f"box_format must be 'xyxy' or 'xywh', got {self.box_format!r}")
        if self.box_units not in BOX_UNITS:
            raise ValueError(f"box_units must be one of {', '.join(BOX_UNITS)}, got {self.box_units!r}")
        base = self.answer_index_base
        if base is not None and (type(base) is not int or base not in (0, 1)):
            raise ValueError(
                f"answer_index_base must be 0 or 1 (where the answers' option indices count from) or unset, got "
                f"{base!r}"
            )


LAYOUTS = {
    "canonical": ColumnMapping(),
    # LLaVA-style: {"id", "image", "conversations": [{"from": "human", "value"}, {"from": "gpt", "value"}]};
    # the task is not in the data, so give it as a constant (constants.task=...).
    "llava": ColumnMapping(
        columns={"id": "id", "images": "image", "problem": "conversations.0.value", "answer": "conversations.1.value"},
        constants={"data_source": "llava"},
    ),
    # ChartQA: {"imgname", "query", "label"}.
    "chartqa": ColumnMapping(
        columns={"images": "imgname", "problem": "query", "answer": "label"},
        constants={"task": "chart", "data_source": "chartqa"},
    ),
    # RefCOCO, one row per referring expression: {"sent_id", "file_name", "sent", "bbox": [x, y, w, h]}. An
    # object has several expressions, each scored in published figures: its ref_id names none of them.
    "refcoco": ColumnMapping(
        columns={"id": "sent_id", "images": "file_name", "problem": "sent", "answer": "bbox"},
        constants={"task": "grounding", "data_source": "refcoco"},
        box_format="xywh",
        problem_template="Locate the object described as: {problem}",
    ),
}


def build_mapping(layout: str, columns: dict | None = None, constants: dict | None = None, **options) -> ColumnMapping:
    """A preset layout with user overrides merged in."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    preset = LAYOUTS[layout]
    return ColumnMapping(
        columns={**preset.columns, **(columns or {})},
        constants={**preset.constants, **(constants or {})},
        box_format=options.get("box_format") or preset.box_format,
        box_units=options.get("box_units") or preset.box_units,
        problem_template=options.get("problem_template") or preset.problem_template,
        answer_index_base=options.get("answer_index_base"),
    )


def lookup(row: Any, dotted: str) -> Any:
    """The value at a dotted path in a source row, None where there is none; a `*` part takes the rest of
    the path from every item of a list."""
    value = row
    parts = dotted.split(".")
    for position, part in enumerate(parts):
        if part == "*" and isinstance(value, list):
            rest = ".".join(parts[position + 1 :])
            return [lookup(item, rest) for item in value] if rest else value
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def column_sources(column: Column) -> list[tuple[str, ...]]:
    """The sources a mapped column reads, each as its paths: a path, the paths of options mapped one per
    option (one source: the options), or each reward field's path."""
    if isinstance(column, dict):
        return [(path,) for path in column.values()]
    return [tuple(column)] if isinstance(column, list) else [(column,)]


def column_paths(column: Column) -> list[str]:
    """Every source path a mapped column reads."""
    return [path for paths in column_sources(column) for path in paths]


def options_at(row: dict, paths: list[str]) -> list | None:
    """The options at a list of paths, one per option (MMBench's A, B, C, D columns), in order: the first
    missing, None or blank value ends them (rows with fewer options); a value after it is a bad record."""
    values = [lookup(row, path) for path in paths]
    count = next((position for position, value in enumerate(values) if is_blank(value)), len(values))
    late = next((path for path, value in zip(paths[count:], values[count:]) if not is_blank(value)), None)
    if late is not None:
        detail = f"option column {late!r} holds a value, but {paths[count]!r} before it holds none"
        raise RecordError(BAD_RECORD, detail)
    return values[:count] or None


def read_column(row: dict, path: Column) -> Any:
    """A canonical field's value in a source row: at a dotted path, the options at a list of paths
    (`options_at`), or for reward fields mapped one by one, the object of those the row has."""
    if isinstance(path, str):
        return lookup(row, path)
    if isinstance(path, list):
        return options_at(row, path)
    found = {name: lookup(row, field_path) for name, field_path in path.items()}
    return {name: value for name, value in found.items() if value is not None} or None


def exact_number(value: int | float) -> str:
    """A number as text without rounding: an integral float as an integer (below 2**53, where floats
    still count every integer), another float in Python's shortest form that reads back the same."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def answer_block_content(value: Any) -> str | None:
    """The content of a source answer that is exactly one `<answer>...</answer>` block (whitespace around it
    allowed; a one-item list as an answer column may give it), or None for any other value."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    block = ANSWER_BLOCK.fullmatch(value) if isinstance(value, str) else None
    if block is None or any(tag in block.group(1) for tag in FORMAT_TAGS):
        return None
    return block.group(1)


def _single_answer(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not _is_number(value):
        return value
    if isinstance(value, float) and not math.isfinite(value):  # a JSON NaN or a float column's missing value
        raise RecordError(NON_FINITE_ANSWER, f"answer {value!r} is not a finite number")
    return exact_number(value)


def indexed_option(answer: Any, options: list, base: int) -> Any:
    """The letter of the option a whole-number answer names, counting from `base` (answer_index_base), as
    `written_letter` writes it; an empty answer is left for `parse_record` to reject."""
    if is_blank(answer):
        return answer
    text = answer.strip() if isinstance(answer, str) else ""
    if not (text.isascii() and text.isdigit()):
        raise RecordError(ANSWER_NOT_AN_OPTION, f"answer {answer!r} is no option index (answer_index_base={base})")
    index = int(text) - base
    if not 0 <= index < min(len(options), len(OPTION_LETTERS)):
        raise RecordError(
            ANSWER_NOT_AN_OPTION,
            f"answer index {text} names no option, counting from {base} (answer_index_base): the row has "
            f"{len(options)} options",
        )
    return written_letter(OPTION_LETTERS[index], options)


def source_box(value: Any, box_format: str) -> Any:
    """A grounding answer, given as a string or a list in `box_format`, as "[x1, y1, x2, y2]" with exact
    numbers; an empty answer is left for `parse_record` to reject."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if is_blank(value):
        return value
    x, y, a, b = box_numbers(value)
    box = (x, y, x + a, y + b) if box_format == "xywh" else (x, y, a, b)
    return "[" + ", ".join(exact_number(v) for v in box) + "]"


def apply_mapping(row: dict, mapping: ColumnMapping) -> dict:
    """The canonical dict for a source row (still to be checked by `parse_record`); `id` stays None when
    the source has none."""
    if not isinstance(row, dict):
        raise RecordError(BAD_RECORD, f"expected a JSON object, got {type(row).__name__}")
    record = {name: read_column(row, path) for name, path in mapping.columns.items()}
    for name, value in mapping.constants.items():
        read = record.get(name)
        if name != "reward_info" or read is None:
            record[name] = value
        elif isinstance(read, dict):
            record[name] = {**read, **value}
        # else: reward_info that is no object stays, for `parse_record` to reject
    if isinstance(record.get("id"), int) and not isinstance(record["id"], bool):
        record["id"] = str(record["id"])  # a source's numeric ids (RefCOCO's ref_id); other kinds are refused
    if isinstance(record.get("images"), (str, dict)):
        record["images"] = [record["images"]]
    if isinstance(record.get("problem"), str):
        record["problem"] = mapping.problem_template.format(problem=record["problem"])
    answer = record.get("answer")
    if (content := answer_block_content(answer)) is not None:
        answer = content
    if record.get("task") == "grounding":
        record["answer"] = source_box(answer, mapping.box_format)
    else:
        record["answer"] = _single_answer(answer)
    options = record.get("options")
    if mapping.answer_index_base is not None and isinstance(options, list) and options:
        record["answer"] = indexed_option(record["answer"], options, mapping.answer_index_base)
    return record


# Rows read from a parquet input at a time: few, as a Hub dataset's rows hold their images' bytes, and
# each batch is held twice (Arrow's buffers and its rows as Python values) while it is converted.
PARQUET_BATCH_ROWS = 64


# The files of a Hub dataset, as huggingface_hub's file system, pandas and DuckDB name them.
HUB_DATASET_FILES = re.compile(r"hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<revision>[^/]+))?/(?P<pattern>.+)")


def hub_dataset_files(url: str) -> list[Path]:
    """The files of a Hub dataset that `hf://datasets/<org>/<name>[@<revision>]/<file or pattern>` names, in
    name order: from the Hugging Face cache, those missing there downloaded (those alone; with
    HF_HUB_OFFLINE=1 nothing is)."""
    from huggingface_hub import constants, snapshot_download

    found = HUB_DATASET_FILES.fullmatch(url)
    if not found:
        raise ValueError(
            f"input={url}: name a Hub dataset's files as hf://datasets/<org>/<name>[@<revision>]/<pattern>"
        )
    repo, revision, pattern = found.group("repo", "revision", "pattern")

    def matching(download: bool) -> list[Path]:
        snapshot = snapshot_download(
            repo, repo_type="dataset", revision=revision, allow_patterns=[pattern], local_files_only=not download
        )
        return sorted(path for path in Path(snapshot).glob(pattern) if path.is_file())

    try:
        cached = matching(download=False)
    except Exception:  # not in the cache: huggingface_hub raises one of several errors
        cached = []
    if cached or constants.HF_HUB_OFFLINE:
        if not cached:
            raise FileNotFoundError(
                f"input={url}: no file of the Hugging Face cache ({constants.HF_HUB_CACHE}) matches, and "
                f"HF_HUB_OFFLINE is set, so nothing is downloaded: run `hf download {repo} --repo-type dataset "
                f"--include '{pattern}'` where the network is reachable"
            )
        return cached
    downloaded = matching(download=True)
    if not downloaded:
        raise FileNotFoundError(f"input={url}: no file of dataset {repo} matches {pattern!r}")
    return downloaded


def input_files(given: Any, source_rows: bool = False, setting: str = "input") -> list[Path]:
    """The files an `input` setting (named `setting` in errors) names, in order: a path, a glob pattern
    (`shards/train-*.parquet`, its files in name order), a Hub dataset's files (`hub_dataset_files`) or a list
    of them; a file named twice is read once, and an existing file is that file even where its name holds a
    glob character (`[`). With `source_rows`, a directory or a file of a format rows are not read from
    (`SOURCE_READERS`) is refused."""
    files: list[Path] = []
    for pattern in [given] if isinstance(given, (str, Path)) else list(given or ()):
        pattern = str(pattern)
        if pattern.startswith("hf://"):
            matched = hub_dataset_files(pattern)
        elif any(char in pattern for char in "*?[") and not Path(pattern).is_file():
            matched = sorted(glob.glob(pattern))
        else:
            matched = [pattern]
        if not matched:
            raise FileNotFoundError(f"{setting}={pattern}: the pattern matches no file")
        for path in map(Path, matched):
            if source_rows and path.exists() and source_reader(path) is None:
                raise ValueError(unsupported_input_format(path))
            if not path.is_file():
                raise FileNotFoundError(f"{setting}={path}: no such file")
            if path.resolve() not in {file.resolve() for file in files}:
                files.append(path)
    if not files:
        raise ValueError(f"{setting} names no file: give a path, a glob pattern or a list of them")
    return files


def iter_input_rows(files: Sequence[Path]) -> Iterator[tuple[Path, int, Any]]:
    """(file, row number in the file, parsed row) for each row of the files, in order (`iter_source_rows`)."""
    for file in files:
        for number, row in iter_source_rows(file):
            yield file, number, row


def iter_source_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(row number, parsed row) for each row of a JSONL, JSON (a list) or parquet file, by its suffix in any
    case, streamed where the format allows; a JSONL line that is not UTF-8 JSON yields a RecordError
    instead. A UTF-8 byte order mark at the start of a text file (as some Windows editors write) is skipped."""
    path = Path(path)
    reader = source_reader(path)
    if reader is None:
        raise ValueError(unsupported_input_format(path))
    yield from reader(path)


def holds_narrow_floats(kind: Any) -> bool:
    """Whether an arrow type holds float32 or float16 values, itself or in lists and structs."""
    import pyarrow as pa

    if pa.types.is_float32(kind) or pa.types.is_float16(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return holds_narrow_floats(kind.value_type)
    return pa.types.is_struct(kind) and any(holds_narrow_floats(field.type) for field in kind)


def floats_as_written(array: Any) -> Any:
    """An arrow array with each float32 and float16 value (also in lists and structs) as the float64 of its
    shortest decimal form: 0.3, where a float32 0.3 reads as 0.30000001192092896. The forms are written and
    read a whole array at once: float32's by arrow (7x numpy's speed), float16's by numpy (arrow writes a
    float16's exact binary value)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind, nulls = array.type, array.is_null()
    if pa.types.is_float32(kind):
        return pc.cast(pc.cast(array, pa.string()), pa.float64())
    if pa.types.is_float16(kind):
        written = array.to_numpy(zero_copy_only=False).astype(str).astype(np.float64)
        return pa.array(written, mask=nulls.to_numpy(zero_copy_only=False))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return type(array).from_arrays(array.offsets, floats_as_written(array.values), mask=nulls)
    if pa.types.is_fixed_size_list(kind):
        size = kind.list_size
        values = array.values.slice(array.offset * size, len(array) * size)
        return pa.FixedSizeListArray.from_arrays(floats_as_written(values), size, mask=nulls)
    if pa.types.is_struct(kind) and holds_narrow_floats(kind):
        fields = [array.field(index) for index in range(kind.num_fields)]
        return pa.StructArray.from_arrays(
            [floats_as_written(field) for field in fields], names=[field.name for field in kind], mask=nulls
        )
    return array


def parquet_rows(path: str | Path, batch_rows: int = PARQUET_BATCH_ROWS) -> Iterator[dict]:
    """A parquet file's rows, read `batch_rows` at a time, float32 and float16 values as written
    (`floats_as_written`). Not pre-buffered: pyarrow would read ahead across the row groups (877 MB held
    for a 765 MB file of 20 row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_rows):
        if any(holds_narrow_floats(field.type) for field in batch.schema):
            columns = [
                floats_as_written(column) if holds_narrow_floats(field.type) else column
                for field, column in zip(batch.schema, batch.columns)
            ]
            batch = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
        yield from batch.to_pylist()


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    yield from enumerate(parquet_rows(path), start=1)


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as error:  # invalid UTF-8 or JSON: the file as a whole cannot be read
        raise ValueError(f"{path}: not a UTF-8 JSON file: {error}") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: a .json input must hold a list of rows")
    yield from enumerate(rows, start=1)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if number == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            if line.strip():
                yield number, _jsonl_row(number, line)


# The input formats rows are read from, by file suffix.
SOURCE_READERS = {".jsonl": _jsonl_rows, ".json": _json_rows, ".parquet": _parquet_rows}


def source_reader(path: Path):
    """The reader of a file's rows by its suffix, in any case; None for a directory or another format."""
    return None if path.is_dir() else SOURCE_READERS.get(path.suffix.lower())


def unsupported_input_format(path: Path) -> str:
    """Why rows are not read from `path`, and how to give them; a datasets.save_to_disk directory and its
    .arrow files are told how to become parquet that keeps their images' bytes."""
    what = "a directory" if path.is_dir() else f"a {path.suffix!r} file" if path.suffix else "a file without a suffix"
    message = (
        f"input={path}: unsupported input format: {what}; rows are read from {', '.join(SOURCE_READERS)} files "
        "(a .json file holds a list of rows)"
    )
    if path.is_dir() or path.suffix.lower() == ".arrow":
        message += (
            "; a datasets.save_to_disk directory converts once written as parquet, which keeps its images' "
            "bytes: python -c \"import datasets; datasets.load_from_disk('<directory>').to_parquet('train.parquet')\" "
            "(of a DatasetDict, load_from_disk('<directory>')['train'])"
        )
    return message


def _jsonl_row(number: int, line: bytes) -> Any:
    """The row a JSONL line holds, or a RecordError naming the line."""
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        return RecordError(
            BAD_RECORD, f"line {number} is not valid UTF-8: byte {line[error.start]:#04x} at column {error.start + 1}"
        )
    except json.JSONDecodeError as error:
        return RecordError(BAD_RECORD, f"line {number} is not valid JSON: {error.msg}")

"""Convert canonical records (or another layout through a column mapping) to verl's multimodal parquet.

    python -m mixed_r1_verl.data.prepare input=data.jsonl image_root=images/ output_dir=out/ \\
        model_family=qwen2_5_vl [val_ratio=0.02 seed=0 model_path=<HF dir> layout=chartqa ...]

model_family: qwen2_5_vl, qwen2_vl, qwen3_vl or internvl (the frame of the grounding boxes and the
image token size).

`input` is a file, a glob pattern, a Hub dataset's files (hf://datasets/<org>/<name>/<pattern>, from the
Hugging Face cache) or a list of them, read in order with one column mapping (a dataset's shards, say).
Writes train.parquet, val.parquet, rejects.jsonl (one line per rejected row: id, input file, row number
in it, reason, detail) and summary.json (counts per task and split, rejects by reason, source fields the
mapping does not read with a "did you mean" for likely typos, the rows whose answer was an <answer> block
read as its content). Every input row is either written or rejected. Outputs appear under their final
names only once complete. Rows with a `rationale` also go, as chat turns ending in the supervised target
`<think>{rationale}</think><answer>{answer}</answer>`, to sft_train.parquet / sft_val.parquet.

A split that training reads is never written empty: the conversion stops instead. `val_ratio=0`
with no row pinned to val (`"split": "val"`) asks for no validation split: val.parquet is not written.
`val_ratio=1` converts an evaluation set: every row not pinned to train goes to val.parquet, and
train.parquet is written only for pinned rows.
A conversion whose rows are all rejected stops with the count of each reason, and one where a path given
in `columns` holds a value in no row stops naming it; rejects.jsonl is kept whenever rows were rejected.
`max_prompt_length` left unset is the model family's training budget: 2048 tokens for the Qwen-VL
families, 4096 for InternVL.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mixed_r1_verl.data.frames import (
    MODEL_FAMILIES,
    area_outside_reason,
    box_to_frame,
    family_of_model_type,
    format_box,
    model_frame_size,
    smart_resize,
)
from mixed_r1_verl.data.images import ImageStore, refuse_a_missing_image_root
from mixed_r1_verl.data.model_files import (
    checkpoint_model_type,
    processor_pixel_bounds,
    required_image_processor_settings,
    resolve_model_dir,
    vision_geometry,
)
from mixed_r1_verl.data.prompts import DEFAULT_TEMPLATE, PromptTokenCounter, render_prompt, template_error
from mixed_r1_verl.data.records import (
    BOX_LOOKS_NORMALIZED,
    BOX_OUTSIDE_IMAGE,
    BOX_UNITS,
    DEGENERATE_BOX,
    DUPLICATE_ID,
    IMAGE_PLACEHOLDER,
    LAYOUTS,
    MEDIA_TAGS,
    MODEL_IMAGE_TOKENS,
    PROMPT_TOO_LONG,
    CanonicalRecord,
    ColumnMapping,
    UNSUPPORTED_IMAGE_SIZE,
    SPLITS,
    RecordError,
    answer_block_content,
    apply_mapping,
    build_mapping,
    column_paths,
    column_sources,
    generated_id,
    input_files,
    iter_input_rows,
    lookup,
    parse_box,
    media_tag_reason,
    parse_record,
    read_column,
)
from mixed_r1_verl.rewards.tasks import all_reward_fields, task_names
from mixed_r1_verl.settings import run_settings_cli

# Each model family's training prompt budget (data.max_prompt_length: conf/mixed_r1.yaml, and
# recipes/internvl3_8b.yaml for InternVL) and the image budget that fits in it: at most 1280 image tokens
# (1280 merged 28x28 patches, about 1 MP, for Qwen2.5-VL; 32x32, 1.3 MP, for Qwen3-VL) leave 768 tokens
# for the chat template, question, options and instructions. InternVL3 tiles the same image into up to
# 12 tiles and a thumbnail of 256 tokens each.
DEFAULT_MAX_PROMPT_LENGTH = {"qwen2_5_vl": 2048, "qwen2_vl": 2048, "qwen3_vl": 2048, "internvl": 4096}
DEFAULT_MAX_IMAGE_TOKENS = 1280
# Boxes may overhang the image by this many pixels (annotation rounding); they are clipped.
BOX_EDGE_TOLERANCE = 1.0


@dataclass
class PrepareConfig:
    # A .jsonl, .json or .parquet file (by its suffix, in any case), a glob pattern (`chartqa/train-*.parquet`),
    # a Hub dataset's files (`hf://datasets/<org>/<name>/<pattern>`) or a list of them, read in order with one
    # column mapping.
    input: Any = "???"
    # The directory the rows' image paths are relative to; not needed where rows embed their images.
    image_root: str | None = None
    output_dir: str = "???"
    model_family: str = "qwen2_5_vl"
    # Source layout: canonical, llava, chartqa, refcoco; `columns`/`constants` override the preset.
    layout: str = "canonical"
    columns: dict = field(default_factory=dict)
    constants: dict = field(default_factory=dict)
    box_format: str | None = None
    # Grounding boxes in `pixels` of the original image, `normalized`: 0-1 fractions of its width and height
    # (LLaVA, Shikra), or `norm1000`: the 0-1000 grid (Qwen2-VL, Qwen3-VL and InternVL data), the last two
    # scaled to its pixels. With pixels, a box within 0-1 on a larger image is rejected.
    box_units: str | None = None
    problem_template: str | None = None
    # 0 or 1: the answer of a row with options is the index of the right option, counting from it (ScienceQA,
    # A-OKVQA), written as its letter; unset, it is the option's letter or text.
    answer_index_base: int | None = None
    # Fraction of rows for val.parquet, chosen by a seeded hash of the row id (stable under reordering; a
    # generated id comes from the row's content), among rows without a `split` field. 0 with no row pinned
    # to val: no val.parquet at all.
    val_ratio: float = 0.02
    seed: int = 0
    prompt_template: str = DEFAULT_TEMPLATE
    system_prompt: str | None = None
    # Pixel bounds of the resize. min_pixels: model_path's preprocessor_config.json (a directory or a
    # hub id in the Hugging Face cache), else the model family's released processors' (3136; Qwen3-VL
    # 65536). max_pixels: the image budget (1280 tokens: 1003520 pixels; Qwen3-VL 1310720), or the
    # model's own bound when smaller.
    model_path: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    # Must equal the training data.max_prompt_length; default the model family's recipes'. With
    # model_path, each row's prompt tokens are counted, written to extra_info.prompt_length, and longer
    # rows are rejected.
    max_prompt_length: int | None = None
    row_group_size: int = 256
    progress: bool = True


def image_token_side(model_family: str, model_dir: Path | None) -> int:
    """The side in pixels of the model's image tokens, which images are resized to multiples of:
    `model_dir`'s patch x merge size, else the model family's."""
    if model_dir is None:
        return MODEL_FAMILIES[model_family].resize_factor
    patch_size, merge_size = vision_geometry(model_dir)
    return patch_size * merge_size


def pixel_bounds(config: PrepareConfig, model_dir: Path | None) -> tuple[int, int]:
    """(min_pixels, max_pixels): explicit values first; else the model's min_pixels and the smaller of
    its max_pixels and the image budget (in the model's tokens); else the model family's."""
    model_min, model_max = None, None
    if model_dir is not None:
        settings = required_image_processor_settings(model_dir)
        model_min, model_max = processor_pixel_bounds(settings)
    image_budget = DEFAULT_MAX_IMAGE_TOKENS * image_token_side(config.model_family, model_dir) ** 2
    min_pixels = config.min_pixels
    if min_pixels is None:
        min_pixels = model_min or MODEL_FAMILIES[config.model_family].min_pixels
    max_pixels = config.max_pixels
    if max_pixels is None:
        max_pixels = min(model_max or image_budget, image_budget)
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} exceeds max_pixels {max_pixels}")
    return int(min_pixels), int(max_pixels)


def split_of(record_id: str, seed: int, val_ratio: float) -> str:
    digest = hashlib.blake2b(f"{seed}:{record_id}".encode(), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "big") / 2**64 < val_ratio else "train"


def within_first_pixel(box: tuple[float, ...], image_size: tuple[int, int]) -> bool:
    """Every coordinate of a pixel box within 0-1, on an image larger than 2x2 pixels."""
    return min(image_size) > 2 and all(0 <= value <= 1 for value in box)


def box_in_pixels(answer: str, image_size: tuple[int, int], box_units: str) -> tuple[float, float, float, float]:
    """The answer's box in pixels of the original image: a `normalized` (0-1) or `norm1000` (0-1000) box
    scaled by the image size; a `pixels` box within 0-1 on an image larger than 2x2 pixels is taken for a
    normalized one and rejected. A scaled box that lies within 0-1 pixels is rejected as degenerate: it
    covers less than the image's first pixel, and in pixels (a selection with embedded images writes them
    so) it would read as a normalized box."""
    box = parse_box(answer)
    width, height = image_size
    span = BOX_UNITS[box_units]
    if span is not None:
        x1, y1, x2, y2 = box
        box = x1 * width / span, y1 * height / span, x2 * width / span, y2 * height / span
        if within_first_pixel(box, image_size):
            raise RecordError(
                DEGENERATE_BOX, f"box {answer} covers less than the first pixel of the {width}x{height} image"
            )
        return box
    if within_first_pixel(box, image_size):
        raise RecordError(
            BOX_LOOKS_NORMALIZED,
            f"box {answer} lies within 0-1 on the {width}x{height} image: boxes are read as pixels (box_units=pixels); "
            "set box_units=normalized when the source's boxes are 0-1 fractions of the image size",
        )
    return box


def grounding_truth(answer: str, image_size: tuple[int, int], frame_size: tuple[int, int], box_units: str) -> str:
    """The ground-truth box moved from original pixels (or the `box_units` scaled to them) into the model's frame."""
    x1, y1, x2, y2 = box_in_pixels(answer, image_size, box_units)
    width, height = image_size
    tolerance = BOX_EDGE_TOLERANCE
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise RecordError(BOX_OUTSIDE_IMAGE, f"box {answer} lies outside the {width}x{height} image")
    clipped = (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
    box = box_to_frame(clipped, image_size, frame_size)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise RecordError(DEGENERATE_BOX, f"box {answer} has no area in the {frame_size[0]}x{frame_size[1]} frame")
    return format_box(box)


OUTPUT_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        (
            "images",
            pa.list_(
                pa.struct(
                    [
                        ("bytes", pa.binary()),
                        ("path", pa.string()),
                        ("min_pixels", pa.int64()),
                        ("max_pixels", pa.int64()),
                    ]
                )
            ),
        ),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("task", pa.string()),
                    ("id", pa.string()),
                    ("index", pa.int64()),
                    ("split", pa.string()),
                    ("box_frame", pa.string()),
                    ("frame_size", pa.list_(pa.int64())),
                    ("image_size", pa.list_(pa.int64())),
                    ("options", pa.list_(pa.string())),
                    ("prompt_length", pa.int64()),
                ]
            ),
        ),
    ]
)


# The parquet type of each reward field type (mixed_r1_verl.rewards.tasks.REWARD_FIELD_TYPES).
REWARD_FIELD_ARROW_TYPES = {
    str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_(),
    list[str]: pa.list_(pa.string()), list[float]: pa.list_(pa.float64()), list[int]: pa.list_(pa.int64()),
}  # fmt: skip


def output_schema(reward_fields: dict[str, type]) -> pa.Schema:
    """The training parquet's schema; with installed tasks' reward fields, `extra_info.reward_info` holds
    each as a typed column (null in rows that do not give it)."""
    if not reward_fields:
        return OUTPUT_SCHEMA
    reward_info = pa.struct([(name, REWARD_FIELD_ARROW_TYPES[kind]) for name, kind in reward_fields.items()])
    extra_info = OUTPUT_SCHEMA.field("extra_info").type
    fields = [*(extra_info.field(i) for i in range(extra_info.num_fields)), pa.field("reward_info", reward_info)]
    index = OUTPUT_SCHEMA.get_field_index("extra_info")
    return OUTPUT_SCHEMA.set(index, pa.field("extra_info", pa.struct(fields)))


# The layout of verl's multi-turn SFT dataset: `messages` (the prompt turns, then the assistant's
# target) with `<image>` placeholders, and `images`.
# Every file a conversion writes to its output_dir.
CONVERSION_OUTPUTS = (
    "train.parquet", "val.parquet", "sft_train.parquet", "sft_val.parquet", "rejects.jsonl", "summary.json"
)  # fmt: skip
SFT_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("messages", OUTPUT_SCHEMA.field("prompt").type),
        ("images", OUTPUT_SCHEMA.field("images").type),
        (
            "extra_info",
            pa.struct(
                [("task", pa.string()), ("id", pa.string()), ("index", pa.int64()), ("split", pa.string()),
                 ("box_frame", pa.string()), ("sequence_length", pa.int64())]
            ),  # fmt: skip
        ),
    ]
)


def sft_target(rationale: str, answer: str) -> str:
    """The assistant turn supervised fine-tuning teaches: the reasoning, then the answer in the model's frame."""
    return f"<think>{rationale}</think><answer>{answer}</answer>"


def sft_row(row: dict, rationale: str) -> dict:
    """The SFT row of a converted row: its prompt turns followed by the target answer (its tokens not counted)."""
    target = {"role": "assistant", "content": sft_target(rationale, row["reward_model"]["ground_truth"])}
    info = row["extra_info"]
    return {
        "data_source": row["data_source"],
        "messages": [*row["prompt"], target],
        "images": row["images"],
        "extra_info": {
            "task": info["task"], "id": info["id"], "index": -1, "split": info["split"], "box_frame": info["box_frame"],
            "sequence_length": None,
        },  # fmt: skip
    }


def refuse_another_model_family(model_family: str, model_dir: Path) -> None:
    """Raises ValueError when the checkpoint's config.json names a model family other than
    `model_family`: its grounding answers would be in another box frame than the data's."""
    model_type = checkpoint_model_type(model_dir)
    checkpoint_family = family_of_model_type(model_type)
    if checkpoint_family not in (None, model_family):
        raise ValueError(
            f"model_path {model_dir} holds a {model_type} checkpoint, but model_family={model_family}: its boxes are "
            f"in the {MODEL_FAMILIES[checkpoint_family].box_frame} frame and its images resize to multiples of "
            f"{MODEL_FAMILIES[checkpoint_family].resize_factor} pixels, the data's would be in the "
            f"{MODEL_FAMILIES[model_family].box_frame} frame, resized to multiples of "
            f"{MODEL_FAMILIES[model_family].resize_factor}; set model_family={checkpoint_family}"
        )


def refuse_a_val_ratio_that_is_no_fraction(config: PrepareConfig) -> None:
    if not 0 <= config.val_ratio <= 1:
        raise ValueError(
            f"val_ratio={config.val_ratio}: expected the fraction of rows for val.parquet, from 0 (no validation "
            "split) to 1 (an evaluation set: every row to val.parquet)"
        )


def refuse_pixel_bounds_that_are_not_positive(config: PrepareConfig) -> None:
    for setting in ("min_pixels", "max_pixels"):
        value = getattr(config, setting)
        if value is not None and value <= 0:
            raise ValueError(f"{setting}={value}: expected a positive number of pixels")


def refuse_prompt_settings_that_miscount_images(config: PrepareConfig, problem_template: str) -> None:
    """Raises ValueError when system_prompt or prompt_template holds an image placeholder or token or a
    `<video>` or `<audio>` tag (MEDIA_TAGS), or either template (`problem_template`, the column mapping's)
    does not place the problem exactly once or uses another field: every row's prompt would have slots
    for other images or media than the row has, or no prompt could be written."""
    for name in ("system_prompt", "prompt_template"):
        text = getattr(config, name) or ""
        for token in (IMAGE_PLACEHOLDER, *MODEL_IMAGE_TOKENS):
            if token in text:
                raise ValueError(f"{name} holds {token!r}: only each row's problem places images")
        for tag in MEDIA_TAGS:
            if tag in text:
                raise ValueError(f"{name} holds {tag!r}: {media_tag_reason(tag)}")
    error = template_error("prompt_template", config.prompt_template) or template_error(
        "problem_template", problem_template, ("problem",)
    )
    if error:
        raise ValueError(error)


def row_place(file: Path, number: int, several_inputs: bool) -> str:
    """A row as messages name it: by its number, and its file where the input has several."""
    return f"row {number} of {file}" if several_inputs else f"row {number}"


def duplicate_id_detail(record_id: str, first_row: str, given_id: bool) -> str:
    if given_id:
        return f"id {record_id!r} appeared earlier in the input, at {first_row}"
    return (
        f"same content as {first_row} (task, images, problem, options and answer): "
        f"both get the generated id {record_id!r}"
    )


class RowConverter:
    """Turns one source row into a verl row (or raises RecordError): the converter's checks, shared
    with the data engine's validation stage."""

    def __init__(self, config: PrepareConfig, mapping: ColumnMapping | None = None):
        if config.model_family not in MODEL_FAMILIES:
            raise ValueError(f"unknown model_family {config.model_family!r}; known: {', '.join(MODEL_FAMILIES)}")
        refuse_a_val_ratio_that_is_no_fraction(config)
        refuse_pixel_bounds_that_are_not_positive(config)
        self.config = config
        self.mapping = mapping or build_mapping(
            config.layout,
            dict(config.columns),
            dict(config.constants),
            box_format=config.box_format,
            box_units=config.box_units,
            problem_template=config.problem_template,
            answer_index_base=config.answer_index_base,
        )
        refuse_prompt_settings_that_miscount_images(config, self.mapping.problem_template)
        self.box_frame = MODEL_FAMILIES[config.model_family].box_frame
        self.reward_fields = all_reward_fields()
        self.schema = output_schema(self.reward_fields)
        model_dir = resolve_model_dir(config.model_path) if config.model_path else None
        if model_dir is not None:
            refuse_another_model_family(config.model_family, model_dir)
        self.resize_factor = image_token_side(config.model_family, model_dir)
        self.min_pixels, self.max_pixels = pixel_bounds(config, model_dir)
        # Where model_path does not say within what the model's processor resizes, it is taken to resize within
        # the bounds the images are converted with.
        self.processor_bounds = (
            processor_pixel_bounds(required_image_processor_settings(model_dir))
            if model_dir is not None
            else (self.min_pixels, self.max_pixels)
        )
        self.prompt_counter = PromptTokenCounter(model_dir) if model_dir is not None else None
        self.max_prompt_length = config.max_prompt_length or DEFAULT_MAX_PROMPT_LENGTH[config.model_family]
        self.store = ImageStore(config.image_root)
        self.inputs = input_files(config.input, source_rows=True)
        self.row_by_id: dict[str, tuple[Path, int]] = {}
        # Source fields the mapping reads; rows' other fields are counted in `ignored_fields`, for the summary.
        self.read_fields = {
            path.split(".")[0] for _, paths in self.read_sources(self.mapping.columns) for path in paths
        }
        # The sources of the columns the user or the layout's preset mapped that no row read so far holds a value
        # at (`holds_nothing`). A preset's id is not required: a row without one gets an id from its content.
        preset = LAYOUTS[config.layout].columns if config.layout != "canonical" else {}
        required = [*config.columns, *(name for name in preset if name != "id")]
        self.unfound_sources = self.read_sources(dict.fromkeys(required))
        # Lists the mapping reads items of by position ("conversations.0.value": a LLaVA row's first turn), and
        # the last item read: rows with items past it count in `ignored_fields` as "conversations.2+".
        self.read_list_items: dict[str, int] = {}
        for column in self.mapping.columns.values():
            for path in column_paths(column):
                parts = path.split(".")
                for position, part in enumerate(parts[1:], start=1):
                    if part.isdigit():
                        prefix = ".".join(parts[:position])
                        self.read_list_items[prefix] = max(int(part), self.read_list_items.get(prefix, 0))
        self.ignored_fields: Counter = Counter()
        # Rows read whose answer is one <answer>...</answer> block, taken as its content.
        self.answers_unwrapped = 0
        # Pixel boxes on images wider or taller than 1000 px, and those of them within 0-1000 on both axes.
        self.large_image_boxes = self.large_image_boxes_within_grid = 0

    def read_sources(self, fields) -> list[tuple[str, tuple[str, ...]]]:
        """(field, paths) of each source the mapping reads for `fields` (`column_sources`; a field given by a
        constant is not read, but for reward_info, which constants add to)."""
        return [
            (name, paths)
            for name in fields
            if name not in self.mapping.constants or name == "reward_info"
            for paths in column_sources(self.mapping.columns[name])
        ]

    def count_ignored(self, raw: dict) -> None:
        self.ignored_fields.update(name for name in raw if name not in self.read_fields)
        for prefix, last in self.read_list_items.items():
            items = lookup(raw, prefix)
            if isinstance(items, list) and len(items) > last + 1:
                self.ignored_fields[f"{prefix}.{last + 1}+"] += 1

    def source_value(self, raw: Any, name: str) -> Any:
        """A canonical field read from a source row through the mapping, without validation."""
        if name in self.mapping.constants:
            return self.mapping.constants[name]
        return read_column(raw, self.mapping.columns.get(name, name)) if isinstance(raw, dict) else None

    def source_task(self, raw: Any) -> str:
        """The task a rejected row is counted under: its mapped task when known, else "unknown"."""
        task = self.source_value(raw, "task")
        return task if task in task_names() else "unknown"

    def source_id(self, number: int, raw: Any) -> str:
        """The id a rejected row is reported under: its mapped id, else its row number (`row-N`: a rejected
        row may lack the content its id would be derived from)."""
        record_id = self.source_value(raw, "id")
        return str(record_id) if record_id is not None else f"row-{number}"

    def row_place(self, file: Path, number: int) -> str:
        """The row by its number, and its file where this input has several or the file is another's (the
        data engine's sources share their ids)."""
        return row_place(file, number, len(self.inputs) > 1 or file not in self.inputs)

    def record(self, file: Path, number: int, raw: Any) -> CanonicalRecord:
        if isinstance(raw, RecordError):
            raise raw
        if isinstance(raw, dict):
            self.count_ignored(raw)
            if self.unfound_sources:
                self.unfound_sources = [
                    (name, paths)
                    for name, paths in self.unfound_sources
                    if all(holds_nothing(lookup(raw, path)) for path in paths)
                ]
            if answer_block_content(self.source_value(raw, "answer")) is not None:
                self.answers_unwrapped += 1
        record = parse_record(apply_mapping(raw, self.mapping))
        given_id = record.id is not None
        if not given_id:
            record = replace(record, id=self.content_id(record))
        first = self.row_by_id.get(record.id, (file, number))
        if first != (file, number):
            raise RecordError(DUPLICATE_ID, duplicate_id_detail(record.id, self.row_place(*first), given_id))
        return record

    def converted(self, file: Path, number: int, raw: Any) -> tuple[CanonicalRecord, dict]:
        """The row's record and its verl row (`record`, `convert`). Only then is its id taken: a later row
        with that id is a duplicate of this one, while a rejected row's id is left to a later row."""
        record = self.record(file, number, raw)
        row = self.convert(record)
        self.row_by_id[record.id] = (file, number)
        return record, row

    def content_id(self, record: CanonicalRecord) -> str:
        """The id derived from the row's content, for a row whose source gives none."""
        digests = [hashlib.sha256(self.store.load(image).data).hexdigest() for image in record.images]
        return generated_id(record, digests)

    def convert(self, record: CanonicalRecord) -> dict:
        """The verl row for a validated record, without split or index (see `assign`)."""
        images = [self.store.load(image) for image in record.images]
        image_size = images[0].size
        resized_sizes = [self.resized_size(image) for image in images]
        frame_size = model_frame_size(image_size, self.box_frame, self.min_pixels, self.max_pixels)
        ground_truth = record.answer
        if record.task == "grounding":
            ground_truth = grounding_truth(record.answer, image_size, frame_size, self.mapping.box_units)
            self.count_grid_like_box(record.answer, image_size)
        prompt = [
            {
                "role": "user",
                "content": render_prompt(
                    record.problem, record.task, record.options, self.box_frame, frame_size, self.config.prompt_template
                ),
            }
        ]
        if self.config.system_prompt:
            prompt.insert(0, {"role": "system", "content": self.config.system_prompt})
        prompt_length = self.prompt_length(prompt, resized_sizes)
        return {
            "data_source": record.data_source,
            "prompt": prompt,
            "images": [
                {"bytes": image.data, "path": image.path, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
                for image in images
            ],
            "ability": record.task,
            "reward_model": {"style": "rule", "ground_truth": ground_truth},
            "extra_info": {
                "task": record.task,
                "id": record.id,
                "index": -1,
                "split": "",
                "box_frame": self.box_frame,
                "frame_size": list(frame_size),
                "image_size": list(image_size),
                "options": list(record.options) if record.options else None,
                "prompt_length": prompt_length,
            }
            | self.reward_info(record),
        }

    def count_grid_like_box(self, answer: str, image_size: tuple[int, int]) -> None:
        """Counts a written pixel box on an image larger than 1000 px, and whether it lies within 0-1000:
        boxes on Qwen2-VL's 0-1000 grid read as pixels fit such images, wrongly (`grid_like_boxes_warning`)."""
        if self.mapping.box_units == "pixels" and max(image_size) > NORM1000_SPAN:
            self.large_image_boxes += 1
            self.large_image_boxes_within_grid += max(parse_box(answer)) <= NORM1000_SPAN

    def reward_info(self, record: CanonicalRecord) -> dict:
        """`extra_info.reward_info`: every installed task's reward fields, those the record gives set."""
        if not self.reward_fields:
            return {}
        given = record.reward_info or {}
        return {"reward_info": {name: given.get(name) for name in self.reward_fields}}

    def sft_row(self, row: dict, record: CanonicalRecord) -> dict:
        """The SFT row of a converted row, with the tokens of its whole chat where model_path is given."""
        sft = sft_row(row, record.rationale)
        if self.prompt_counter is not None:
            sizes = [self.resized_size(self.store.load(image)) for image in record.images]
            length = self.prompt_counter.count(sft["messages"], sizes, add_generation_prompt=False)
            sft["extra_info"]["sequence_length"] = length
        return sft

    def resized_size(self, image) -> tuple[int, int]:
        """(width, height) the model resizes the image to: multiples of its patch x merge size."""
        width, height = image.size
        try:
            resized_h, resized_w = smart_resize(
                height, width, factor=self.resize_factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
            )
        except ValueError as error:
            raise RecordError(UNSUPPORTED_IMAGE_SIZE, f"{image.label}: {error}") from None
        # Only a resize rounded out of its own bounds: images converted for wider bounds than the model's
        # processor has are meant for data.mm_processor_kwargs (the datasets check them at load).
        rounded_out = area_outside_reason(resized_w, resized_h, (self.min_pixels, self.max_pixels))
        resized_again = rounded_out and area_outside_reason(resized_w, resized_h, self.processor_bounds)
        if resized_again:
            raise RecordError(
                UNSUPPORTED_IMAGE_SIZE,
                f"{image.label}: {width}x{height} resizes to {resized_again}: set min_pixels and max_pixels further "
                "apart" + ("" if self.config.model_path else ", or model_path to the model, whose bounds may be wider"),
            )
        return resized_w, resized_h

    def prompt_length(self, prompt: list[dict], resized_sizes: list[tuple[int, int]]) -> int | None:
        """The row's prompt tokens (None without model_path); over the budget is a reject."""
        if self.prompt_counter is None:
            return None
        try:
            length = self.prompt_counter.count(prompt, resized_sizes)
        except ValueError as error:
            raise ValueError(f"model_path {self.config.model_path!r} cannot count prompt tokens: {error}") from error
        if length > self.max_prompt_length:
            image_tokens = sum(self.prompt_counter.image_tokens(size) for size in resized_sizes)
            raise RecordError(
                PROMPT_TOO_LONG,
                f"prompt is {length} tokens ({image_tokens} for images), over max_prompt_length="
                f"{self.max_prompt_length}",
            )
        return length


class SplitWriter:
    """Row-group-buffered parquet writer that writes to a temporary name and renames on `commit`."""

    def __init__(
        self, path: Path, row_group_size: int, schema: pa.Schema = OUTPUT_SCHEMA, row_group_bytes: int = 128 << 20
    ):
        self.path = path
        self.temporary = path.with_name(f".{path.name}.partial")
        # A row group ends at `row_group_size` rows, or sooner at `row_group_bytes` of image bytes.
        self.row_group_size, self.row_group_bytes = row_group_size, row_group_bytes
        self.schema = schema
        self.buffer: list[dict] = []
        self.buffered_bytes = 0
        self.rows = 0
        self.writer = pq.ParquetWriter(self.temporary, schema)

    def write(self, row: dict) -> None:
        row["extra_info"]["index"] = self.rows
        self.buffer.append(row)
        self.buffered_bytes += sum(len(image["bytes"]) for image in row["images"])
        self.rows += 1
        if len(self.buffer) >= self.row_group_size or self.buffered_bytes >= self.row_group_bytes:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=self.schema))
            self.buffer, self.buffered_bytes = [], 0

    def commit(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.temporary, self.path)

    def abort(self) -> None:
        self.writer.close()
        self.temporary.unlink(missing_ok=True)

    def commit_or_remove(self) -> None:
        """Commit when rows were written; else write nothing and remove a file left by an earlier run."""
        if self.rows:
            self.commit()
        else:
            self.abort()
            self.path.unlink(missing_ok=True)


class EmptySplitError(ValueError):
    """A split that training reads would be written without rows."""


class NoRowsWrittenError(ValueError):
    """The input holds no row that could be converted."""


def named_input(config: PrepareConfig) -> str:
    """The input setting as messages name it: the file or pattern given, or the list."""
    return str(config.input) if isinstance(config.input, (str, Path)) else str([str(path) for path in config.input])


def check_some_rows_written(rows_in: int, rejects: RejectsWriter, config: PrepareConfig, converter: RowConverter):
    """A conversion that would write no row stops, with the count of each reject reason and the first
    rejected row (a wrong column mapping or image_root reads as such)."""
    if rows_in == 0:
        raise NoRowsWrittenError(f"{named_input(config)} holds no rows")
    if rejects.rows < rows_in:
        return
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(rejects.count_by_reason().items()))
    first = rejects.first
    raise NoRowsWrittenError(
        f"{named_input(config)}: all {rows_in} rows were rejected ({reasons}); the first, "
        f"{converter.row_place(Path(first['input']), first['row'])} (id {first['id']!r}): {first['reason']}: "
        f"{first['detail']}; each row's reason is in {rejects.path}"
    )


class MappedColumnNotFoundError(ValueError):
    """A column the user mapped found nothing in any row: a typo in its path, say."""


def holds_nothing(value) -> bool:
    """No value at a path: None, or a list of nothing (a `*` path whose items lack the rest of it)."""
    return value is None or isinstance(value, list) and bool(value) and all(map(holds_nothing, value))


def check_mapped_columns_found(rows_in: int, converter: RowConverter, place: str) -> None:
    """Every source of the columns the user mapped (a path; options mapped one per option: any of their
    paths) holds a value in some row of the `rows_in` the converter read; one that never does (a typo)
    stops the conversion (or the data engine's validation), naming the input (`place`) and the source key
    closest to it among those the mapping does not read."""
    if not rows_in or not converter.unfound_sources:
        return
    unread_keys = [key for key in converter.ignored_fields if not key.endswith("+")]
    problems = []
    for name, paths in converter.unfound_sources:
        read = paths[0] if len(paths) == 1 else list(paths)
        mapped = "" if name in converter.config.columns else f" (layout={converter.config.layout})"
        problem = f"columns.{name}{mapped} reads {read!r}, which none of the {rows_in} rows holds"
        hint = did_you_mean(paths[0].split(".")[0], unread_keys)
        if hint is None and unread_keys:
            hint = f"the keys of the rows the mapping does not read: {', '.join(sorted(unread_keys))}"
        problems.append(f"{problem}; {hint}" if hint else problem)
    raise MappedColumnNotFoundError(f"{place}: {'; '.join(problems)}")


def check_splits_not_empty(rows_per_split: dict[str, int], config: PrepareConfig) -> None:
    """train.parquet is read by training unless the user asked for an evaluation set (val_ratio=1),
    val.parquet unless the user asked for no validation split (val_ratio=0 and no row pinned to val);
    neither may be empty."""
    written = sum(rows_per_split.values())
    if rows_per_split["train"] == 0 and config.val_ratio < 1:
        raise EmptySplitError(
            f"{named_input(config)}: train.parquet would be empty ({written} rows written, all to val); "
            "pin rows with \"split\": \"train\", lower val_ratio, or set val_ratio=1 to convert an evaluation "
            "set (every row to val.parquet, no train.parquet)"
        )
    if rows_per_split["val"] == 0 and config.val_ratio > 0:
        raise EmptySplitError(
            f"{named_input(config)}: val.parquet would be empty: val_ratio={config.val_ratio} chose none of the "
            f"{written} rows, and training reads val.parquet (verl builds the validation set even with "
            "trainer.test_freq=-1). Give rows \"split\": \"val\", raise val_ratio, or set val_ratio=0 to "
            "ask for no validation split (no val.parquet is written)"
        )


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


class RejectsWriter:
    """rejects.jsonl, one line per rejected row, written to a temporary name and renamed on `commit`;
    counts the rejects by (task, reason)."""

    def __init__(self, path: Path):
        self.path = path
        self.temporary = path.with_name(f".{path.name}.partial")
        self.file = open(self.temporary, "w", encoding="utf-8")
        self.by_task_and_reason: Counter = Counter()
        self.first: dict | None = None

    @property
    def rows(self) -> int:
        return sum(self.by_task_and_reason.values())

    def count_by_reason(self) -> Counter:
        by_reason: Counter = Counter()
        for (_, reason), count in self.by_task_and_reason.items():
            by_reason[reason] += count
        return by_reason

    def write(self, task: str, record_id: str, file: Path, number: int, error: RecordError) -> None:
        line = {"id": record_id, "input": str(file), "row": number, "reason": error.reason, "detail": error.detail}
        self.file.write(json.dumps(line) + "\n")
        self.by_task_and_reason[(task, error.reason)] += 1
        self.first = self.first or line

    def commit(self) -> None:
        self.file.close()
        os.replace(self.temporary, self.path)

    def abort(self) -> None:
        self.file.close()
        self.temporary.unlink(missing_ok=True)


def refuse_inputs_among_outputs(inputs: list[Path], output_dir: Path) -> None:
    """An input that is one of the files the conversion writes (raw records in data/train.parquet converted
    into data/) would be replaced by the output, or removed when a check stops the conversion."""
    outputs = {(output_dir / name).resolve(): name for name in CONVERSION_OUTPUTS}
    for path in inputs:
        if path.resolve() in outputs:
            raise ValueError(
                f"input {path} is the {outputs[path.resolve()]} this conversion writes in output_dir={output_dir}: "
                "give another output_dir"
            )


STOPPING_CHECKS = (MappedColumnNotFoundError, NoRowsWrittenError, EmptySplitError)


def remove_an_earlier_conversion(writers: list[SplitWriter], rejects: RejectsWriter, output_dir: Path) -> list[str]:
    """A check stopped the conversion after this run's rejects.jsonl was written: the parquet files and
    summary.json an earlier run left are removed too, so that output_dir never pairs this run's rejects with
    another input's rows (nor training with them). Returns the names of the files removed."""
    for writer in writers:
        writer.abort()
    rejects.abort()
    earlier = [writer.path for writer in writers] + [output_dir / "summary.json"]
    if not rejects.rows:
        earlier.append(rejects.path)
    removed = sorted(path.name for path in earlier if path.exists())
    for path in earlier:
        path.unlink(missing_ok=True)
    return removed


def convert_rows(config: PrepareConfig, converter: RowConverter, writers, sft_writers, rejects: RejectsWriter):
    """Every input row written to its split or to rejects; (rows in, rows written by (split, task))."""
    written: Counter = Counter()
    rows_in = 0
    rows = iter_input_rows(converter.inputs)
    for file, number, raw in tqdm(rows, desc="Converting", unit=" rows", disable=not config.progress):
        rows_in += 1
        try:
            record, row = converter.converted(file, number, raw)
        except RecordError as error:
            rejects.write(converter.source_task(raw), converter.source_id(number, raw), file, number, error)
            continue
        split = record.split or split_of(record.id, config.seed, config.val_ratio)
        row["extra_info"]["split"] = split
        if record.rationale:
            sft_writers[split].write(converter.sft_row(row, record))
        writers[split].write(row)
        written[(split, record.task)] += 1
    return rows_in, written


def prepare(config: PrepareConfig) -> dict:
    """Run the conversion and return the summary (also written to summary.json)."""
    started = time.perf_counter()
    converter = RowConverter(config)
    refuse_a_missing_image_root(config.image_root)
    output_dir = Path(config.output_dir)
    refuse_inputs_among_outputs(converter.inputs, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    writers = {
        split: SplitWriter(output_dir / f"{split}.parquet", config.row_group_size, converter.schema) for split in SPLITS
    }
    sft_writers = {
        split: SplitWriter(output_dir / f"sft_{split}.parquet", config.row_group_size, SFT_SCHEMA) for split in SPLITS
    }
    rejects = RejectsWriter(output_dir / "rejects.jsonl")
    try:
        rows_in, written = convert_rows(config, converter, writers, sft_writers, rejects)
        if rejects.rows:
            rejects.commit()  # each rejected row's reason is kept even when a check below stops the conversion
        check_mapped_columns_found(rows_in, converter, named_input(config))
        check_some_rows_written(rows_in, rejects, config, converter)
        check_splits_not_empty({split: writer.rows for split, writer in writers.items()}, config)
        writers["train"].commit_or_remove()
        writers["val"].commit_or_remove()
        for writer in sft_writers.values():
            writer.commit_or_remove()
        if not rejects.rows:
            rejects.commit()
    except STOPPING_CHECKS as error:
        removed = remove_an_earlier_conversion([*writers.values(), *sft_writers.values()], rejects, output_dir)
        if removed:
            raise type(error)(
                f"{error}; the outputs of an earlier conversion in {output_dir} ({', '.join(removed)}) were "
                "removed, as they are not this input's"
            ) from None
        raise
    except BaseException:
        for writer in (*writers.values(), *sft_writers.values()):
            writer.abort()
        rejects.abort()
        raise
    seconds = time.perf_counter() - started
    summary = build_summary(config, converter, rows_in, written, rejects.by_task_and_reason, seconds)
    summary["sft_rows"] = {split: writer.rows for split, writer in sft_writers.items()}
    _atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def ignored_fields_summary(ignored: Counter, read_fields: set[str]) -> dict[str, dict]:
    """Each source field the mapping does not read, with the rows holding it and, when its name is close
    to one the mapping reads (a typo such as "option"), that name."""
    summary = {}
    for name, rows in sorted(ignored.items(), key=lambda item: (-item[1], item[0])):
        summary[name] = {"rows": rows}
        hint = not name.endswith("+") and did_you_mean(name, read_fields)
        if hint:
            summary[name]["hint"] = hint
    return summary


def did_you_mean(name: str, names) -> str | None:
    """The hint "did you mean ...?" naming the one of `names` closest to `name`, or None when none is close."""
    close = difflib.get_close_matches(name, sorted(names), n=1)
    return f"did you mean {close[0]!r}?" if close else None


NORM1000_SPAN = BOX_UNITS["norm1000"]
# Pixel boxes on larger images, none past 1000 px: how many make the data look like 0-1000 grid boxes.
GRID_LIKE_BOXES_WARNED_FROM = 20


def grid_like_boxes_warning(converter: RowConverter) -> str | None:
    """Every box read as pixels on images larger than 1000 px lies within 0-1000, and there are enough of
    them that true pixel boxes would have passed 1000 somewhere: the source's boxes are likely on the
    0-1000 grid, and were written scaled wrongly."""
    count = converter.large_image_boxes
    if count < GRID_LIKE_BOXES_WARNED_FROM or converter.large_image_boxes_within_grid < count:
        return None
    return (
        f"all {count} grounding boxes on images larger than 1000 px lie within 0-1000, as boxes on the 0-1000 "
        "grid do (Qwen2-VL, Qwen3-VL, InternVL data); they were read as pixels (box_units=pixels): if they are "
        "on the grid, convert again with box_units=norm1000"
    )


def by_reason_and_by_task(counts: Counter) -> tuple[Counter, dict[str, dict[str, int]]]:
    """Rows counted by (task, reason) as counts by reason, and by reason within each task."""
    by_reason: Counter = Counter()
    by_task: dict[str, dict[str, int]] = {}
    for (task, reason), count in sorted(counts.items()):
        by_reason[reason] += count
        by_task.setdefault(task, {})[reason] = count
    return by_reason, by_task


def build_summary(config, converter, rows_in, written: Counter, rejected: Counter, seconds: float) -> dict:
    rows_written = sum(written.values())
    by_reason, by_task = by_reason_and_by_task(rejected)
    if rows_in != rows_written + sum(rejected.values()):
        raise RuntimeError(
            f"row accounting broken: {rows_in} in, {rows_written} written, {sum(rejected.values())} rejected"
        )
    per_task: dict[str, dict[str, int]] = {}
    inputs = [str(path) for path in converter.inputs]
    for (split, task), count in sorted(written.items()):
        per_task.setdefault(task, {s: 0 for s in SPLITS})[split] = count
    return {
        "input": inputs if len(inputs) > 1 else inputs[0],
        "rows_in": rows_in,
        "rows_written": rows_written,
        "rows_rejected": sum(rejected.values()),
        "per_split": {split: sum(c for (s, _), c in written.items() if s == split) for split in SPLITS},
        "per_task": per_task,
        "rejects_by_reason": dict(sorted(by_reason.items())),
        "rejects_by_task": by_task,
        "model_family": config.model_family,
        "box_frame": converter.box_frame,
        "min_pixels": converter.min_pixels,
        "max_pixels": converter.max_pixels,
        "max_prompt_length": converter.max_prompt_length,
        "prompt_lengths_counted": converter.prompt_counter is not None,
        "ignored_fields": ignored_fields_summary(converter.ignored_fields, converter.read_fields),
        "answers_unwrapped": converter.answers_unwrapped,
        "warnings": [warning for warning in (grid_like_boxes_warning(converter),) if warning],
        "seconds": round(seconds, 3),
    }


def print_conversion(config: PrepareConfig) -> None:
    """Convert and print the summary, then its warnings on stderr."""
    summary = prepare(config)
    print(json.dumps(summary, indent=2))
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    run_settings_cli(
        __doc__,
        PrepareConfig,
        sys.argv[1:] if argv is None else argv,
        print_conversion,
    )


if __name__ == "__main__":
    main()

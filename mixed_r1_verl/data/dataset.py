"""The training dataset: verl's RLHFDataset with image loading that needs only PIL, and no row that
vanishes silently.

Select it in the trainer config:

    data.custom_cls.path=pkg://mixed_r1_verl.data.dataset data.custom_cls.name=MixedR1Dataset

RLHFDataset resizes images through qwen_vl_utils (which needs torchvision) and, when preparing a
row fails for any reason, counts it as over-long and drops it. This class resizes with PIL to the
exact size qwen_vl_utils and the Qwen2.5-VL processor produce (honouring per-image min/max pixels
written by the converter), raises an error naming the row when one cannot be prepared, when its
prompt's `<image>` placeholders do not match its images in number (or its `<video>` or `<audio>` tags its
videos or audio clips, which verl would take one of for each), when its reward_model.ground_truth
is absent, null or blank (the reward could not score it), when it was converted for another model
family's box frame (extra_info.box_frame), when an image's pixel bounds cannot bound a resize, when
the model's processor would resize its images again (out of the frame its boxes are in) or when
verl loaded no processor at all (the images would be left out of training), and logs every row the
length filter removes, counted per task. The filter reads each row's prompt size from
extra_info.prompt_length where the converter wrote it, and measures only the other rows.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.utils.tokenizer import build_multimodal_processor_inputs, normalize_token_ids

from mixed_r1_verl.data.frames import (
    BOX_FRAME_ABS,
    area_outside_reason,
    other_family_frame_reason,
    pixel_bounds_error,
    resized_again_reason,
    stated_bounds,
)
from mixed_r1_verl.data.model_files import processor_pixel_bounds
from mixed_r1_verl.data.model_images import model_input_image
from mixed_r1_verl.data.processor import autoprocessor_failure, processor_model_family
from mixed_r1_verl.data.records import IMAGE_PLACEHOLDER
from mixed_r1_verl.rewards.scoring import known_task, missing_ground_truth

logger = logging.getLogger(__name__)


class DatasetRowError(ValueError):
    """A dataset row that cannot be turned into model inputs."""


class NamesRowsThatFail:
    """Mixin for a verl dataset class: an item that cannot be prepared raises DatasetRowError naming
    the row (the class's `_describe_row(index)`) and the reason."""

    def __getitem__(self, item):
        try:
            return super().__getitem__(item)
        except Exception as error:
            raise DatasetRowError(f"{self._describe_row(item)} cannot be prepared: {error}") from error


def _content_items(messages: list[dict]):
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            yield from (item for item in content if isinstance(item, dict))


class MixedR1Dataset(NamesRowsThatFail, RLHFDataset):
    @classmethod
    def _process_multi_modal_info(cls, messages, image_patch_size, config):
        items = list(_content_items(messages))
        if any(item.get("type") == "video" for item in items):
            raise DatasetRowError(f"{cls.__name__} handles images only, the prompt holds a video")
        images = [model_input_image(item, image_patch_size) for item in items if item.get("type") == "image"]
        return images or None, None, cls._extract_audio_info(messages)

    def _describe_doc(self, doc: dict, index: int) -> str:
        extra_info = doc.get("extra_info") or {}
        return f"row {index} (id {extra_info.get('id')!r}, data_source {doc.get('data_source')!r})"

    def _describe_row(self, index: int) -> str:
        return self._describe_doc(self.dataframe[index], index)

    def prompt_length(self, doc: dict, index: int) -> int:
        """Token count of a row's prompt with its images expanded; raises DatasetRowError naming
        the row when it cannot be built."""
        try:
            messages = self._build_messages(copy.deepcopy(doc), key=self.prompt_key)
            apply_kwargs = dict(self.apply_chat_template_kwargs)
            if self.tool_schemas is not None:
                apply_kwargs["tools"] = self.tool_schemas
            if self.processor is None:
                for key in ("tokenize", "return_dict", "return_tensors"):
                    apply_kwargs.pop(key, None)
                tokens = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, **apply_kwargs
                )
                return len(normalize_token_ids(tokens))
            raw_prompt = self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False, **apply_kwargs
            )
            images, videos, audios = self._process_multi_modal_info(messages, self.image_patch_size, self.config)
            if images is None and videos is None and audios is None:
                return len(self.processor.tokenizer(text=raw_prompt, add_special_tokens=False)["input_ids"])
            inputs = build_multimodal_processor_inputs(
                self.processor,
                text=[raw_prompt],
                images=images,
                videos=videos,
                audio=audios,
                mm_processor_kwargs=self.mm_processor_kwargs,
            )
            return len(inputs["input_ids"][0])
        except Exception as error:
            raise DatasetRowError(f"{self._describe_doc(doc, index)} cannot be prepared: {error}") from error

    def measure_prompt_lengths(self, dataframe: datasets.Dataset, rows: list[int]) -> list[int]:
        """Prompt tokens of the given rows, built with the processor (rows are named by position)."""
        subset = dataframe.select(rows)
        return subset.map(
            lambda doc, index: {"prompt_length": self.prompt_length(doc, rows[index])},
            with_indices=True,
            remove_columns=subset.column_names,
            num_proc=self.num_workers if self.num_workers and self.num_workers > 1 else None,
            desc="Measuring prompt lengths",
        )["prompt_length"]

    def prompt_lengths(self, dataframe: datasets.Dataset) -> list[int]:
        """Each row's prompt tokens: the converter's count from extra_info.prompt_length where present
        (checked against this processor on the first such row), measured for the other rows."""
        return counted_or_measured(
            extra_info_column(dataframe, "prompt_length"),
            lambda row: self.prompt_length(dataframe[row], row),
            lambda rows: self.measure_prompt_lengths(dataframe, rows),
            lambda row: self._describe_doc(dataframe[row], row),
            "prompt tokens",
        )

    def maybe_filter_out_long_prompts(self, dataframe: datasets.Dataset = None):
        # verl calls this on every load, before anything is built with the processor.
        def describe_row(row):
            return self._describe_doc(dataframe[row], row)

        columns = dataframe.with_format("arrow")

        def column(key):
            return columns[key] if key in dataframe.column_names else None

        images = column(self.image_key)
        refuse_placeholder_image_mismatch(columns[self.prompt_key], images, describe_row)
        media = {"<video>": column(self.video_key), "<audio>": column(self.audio_key)}
        refuse_media_tag_mismatch(columns[self.prompt_key], images, media, describe_row)
        refuse_missing_ground_truth(columns, describe_row)
        box_frames = extra_info_column(dataframe, "box_frame")
        sources = column("data_source").to_pylist() if column("data_source") is not None else [None] * len(columns)
        row_tasks = extra_info_column(dataframe, "task")
        tasks = [known_task(source, {"task": task}) for source, task in zip(sources, row_tasks)]
        family = processor_model_family(self.processor)
        refuse_box_frame_of_another_family(family, box_frames, [task == "grounding" for task in tasks], describe_row)
        if images is not None:
            refuse_images_without_processor(self.processor, self.tokenizer.name_or_path, images, describe_row)
            refuse_invalid_pixel_bounds(images, describe_row)
            refuse_images_resized_again(self.processor, images, describe_row, self.mm_processor_kwargs)
            frame_sizes = [
                frame if task == "grounding" and box_frame == BOX_FRAME_ABS else None
                for frame, task, box_frame in zip(extra_info_column(dataframe, "frame_size"), tasks, box_frames)
            ]
            refuse_frames_resized_again(self.processor, frame_sizes, describe_row, self.mm_processor_kwargs)
        if not self.filter_overlong_prompts:
            return dataframe
        lengths = self.prompt_lengths(dataframe)
        keep = [i for i, length in enumerate(lengths) if length <= self.max_prompt_length]
        dropped = [i for i, length in enumerate(lengths) if length > self.max_prompt_length]
        tasks = extra_info_column(dataframe, "task")
        self.rows_over_prompt_length = Counter(tasks[i] for i in dropped)
        if dropped:
            logger.warning(
                "%d of %d rows exceed max_prompt_length=%d and are left out; %s",
                len(dropped),
                len(lengths),
                self.max_prompt_length,
                dropped_per_task(tasks, dropped, extra_info_column(dataframe.select(dropped[:20]), "id")),
            )
        return dataframe.select(keep) if dropped else dataframe


def counted_or_measured(counts: list, measure_row, measure_rows, describe_row, what: str) -> list[int]:
    """Each row's tokens (`what` they count): `counts` (the converter's; None where it wrote none),
    checked on the first counted row against `measure_row(row)`, the processor's; all rows measured
    (`measure_rows(rows)`) when they differ (another model or chat template), else only those without one."""
    counted = [row for row, count in enumerate(counts) if count is not None]
    if counted:
        first = counted[0]
        measured = measure_row(first)
        if measured != counts[first]:
            logger.warning(
                "%s: the converter counted %d %s, this processor builds %d (another model or chat template?); "
                "measuring every row",
                describe_row(first),
                counts[first],
                what,
                measured,
            )
            counts = [None] * len(counts)
    lengths = list(counts)
    missing = [row for row, count in enumerate(counts) if count is None]
    if missing:
        for row, length in zip(missing, measure_rows(missing), strict=True):
            lengths[row] = length
    return lengths


def dropped_per_task(tasks: list, dropped: list[int], first_ids: list) -> str:
    """What a length filter left out, for its warning: dropped/rows per task, and the first ids."""
    dropped_tasks, rows_per_task = Counter(tasks[row] for row in dropped), Counter(tasks)
    per_task = ", ".join(
        f"{task} {dropped_tasks[task]}/{rows_per_task[task]}" for task in sorted(rows_per_task, key=str)
    )
    return f"per task (dropped/rows): {per_task} (first ids: {first_ids})"


def extra_info_column(dataframe: datasets.Dataset, name: str) -> list:
    """One extra_info field of every row, read from the arrow column without decoding rows; None for
    rows (or files) without it."""
    if "extra_info" not in dataframe.column_names:
        return [None] * len(dataframe)
    column = dataframe.with_format("arrow")["extra_info"]
    if name not in {field.name for field in column.type}:
        return [None] * len(dataframe)
    return pc.struct_field(column, name).to_pylist()


def tag_counts(prompts, tag: str) -> list[int]:
    """Number of `tag`s (`<image>` placeholders, say) in each row's text message contents, for an arrow column
    of chat messages (rows whose contents are not text count 0: verl expands placeholders in text only)."""
    counts = [0] * len(prompts)
    if not (pa.types.is_list(prompts.type) and pa.types.is_struct(prompts.type.value_type)):
        return counts
    content = prompts.type.value_type.field("content") if "content" in prompts.type.value_type.names else None
    if content is None or not (pa.types.is_string(content.type) or pa.types.is_large_string(content.type)):
        return counts
    contents = pc.struct_field(pc.list_flatten(prompts), "content")
    per_message = pc.count_substring(contents, tag).to_pylist()
    for row, count in zip(pc.list_parent_indices(prompts).to_pylist(), per_message, strict=True):
        counts[row] += count or 0
    return counts


def refuse_placeholder_image_mismatch(prompts, images_column, describe_row) -> None:
    """Raises DatasetRowError, naming the row by `describe_row(index)`, for the first row whose prompt
    holds another number of `<image>` placeholders than it has images (the arrow `images_column`; None
    when the file has none): verl would fail on it mid-training, or with no images train on the bare text."""
    placeholders = tag_counts(prompts, IMAGE_PLACEHOLDER)
    images = item_counts(images_column, len(placeholders))
    for row, (placeholder_count, image_count) in enumerate(zip(placeholders, images, strict=True)):
        if placeholder_count != image_count:
            raise DatasetRowError(
                f"{describe_row(row)}: its prompt holds {placeholder_count} {IMAGE_PLACEHOLDER} placeholder(s) "
                f"for {image_count} image(s)"
            )


def item_counts(column, rows: int) -> list[int]:
    """Items in each of the `rows` rows of an arrow list column; 0 in every row without one (None)."""
    if column is None or not pa.types.is_list(column.type):
        return [0] * rows
    return pc.fill_null(pc.list_value_length(column), 0).to_pylist()


def refuse_media_tag_mismatch(prompts, images_column, media_columns: dict, describe_row) -> None:
    """Raises DatasetRowError, naming the row by `describe_row(index)`, for the first row with images, videos
    or audio clips whose prompt holds another number of `<video>` or `<audio>` tags than it has videos or
    audio clips (`media_columns`: each tag's arrow list column, or None): verl takes one for each tag, and
    would fail on the row when its batch is drawn (a row without any it leaves as it is)."""
    rows = len(prompts)
    tags = {tag: tag_counts(prompts, tag) for tag in media_columns}
    items = {tag: item_counts(column, rows) for tag, column in media_columns.items()}
    images = item_counts(images_column, rows)
    for row in range(rows):
        if not images[row] and not any(counts[row] for counts in items.values()):
            continue
        for tag, counts in tags.items():
            if counts[row] != items[tag][row]:
                kind = tag.strip("<>")
                raise DatasetRowError(
                    f"{describe_row(row)}: its prompt holds {counts[row]} {tag} tag(s) for {items[tag][row]} "
                    f"{kind}(s); verl takes one of the row's {kind}s for each"
                )


def refuse_missing_ground_truth(columns, describe_row) -> None:
    """Raises DatasetRowError, naming the row by `describe_row(index)`, for the first row of the arrow
    `columns` (a table, or a dataset in arrow format) whose reward_model.ground_truth is absent, null or
    blank: the reward would fail on it mid-training."""
    if len(columns) == 0:
        return
    column = columns["reward_model"] if "reward_model" in columns.column_names else None
    if column is None or not pa.types.is_struct(column.type) or column.type.get_field_index("ground_truth") < 0:
        raise DatasetRowError(f"{describe_row(0)}: the data has no reward_model.ground_truth column")
    for row, ground_truth in enumerate(pc.struct_field(column, "ground_truth").to_pylist()):
        reason = missing_ground_truth(ground_truth)
        if reason:
            raise DatasetRowError(f"{describe_row(row)}: {reason} (reward_model.ground_truth); no reward can score it")


def refuse_box_frame_of_another_family(model_family: str | None, box_frames: list, grounding: list, describe_row):
    """Raises DatasetRowError, naming the row by `describe_row(index)`, for the first row whose
    extra_info.box_frame (in `box_frames`) is not the frame a `model_family` model answers in, or a
    grounding row (`grounding`) without one for a model answering on the 0-1000 grid: its grounding
    answers would be taught or scored against ground truths in another frame."""
    for row, (box_frame, is_grounding) in enumerate(zip(box_frames, grounding)):
        reason = other_family_frame_reason(box_frame, model_family, is_grounding)
        if reason:
            raise DatasetRowError(f"{describe_row(row)}: {reason}")


def refuse_images_without_processor(processor, model_dir: str, images_column, describe_row) -> None:
    """Raises DatasetRowError, naming the first row of the arrow `images_column` that holds images, when
    verl loaded no processor: its AutoProcessor call failed, which verl only warns about, and every
    image would then be left out of the prompts and rollouts."""
    if processor is None and pa.types.is_list(images_column.type):
        counts = pc.list_value_length(images_column).to_pylist()
        first = next((row for row, count in enumerate(counts) if count), None)
        if first is not None:
            reason = autoprocessor_failure(model_dir) or "verl's hf_processor returned None"
            raise DatasetRowError(
                f"{describe_row(first)} holds images, but verl loaded no processor for {model_dir} ({reason}); "
                "without it the model would train on the text alone"
            )


def lone_pixel_bound_error(mm_processor_kwargs) -> str | None:
    """Why `data.mm_processor_kwargs` would not bound the images as it says: it sets min_pixels or max_pixels
    without the other, and transformers' Qwen2-VL image processor takes them only together (one alone is
    ignored, so the images would keep the model's bounds); None where it does not."""
    given = [key for key in ("min_pixels", "max_pixels") if (mm_processor_kwargs or {}).get(key) is not None]
    if len(given) != 1:
        return None
    other = "max_pixels" if given == ["min_pixels"] else "min_pixels"
    return (
        f"data.mm_processor_kwargs sets {given[0]} without {other}: the image processor takes the two only "
        f"together and ignores one alone; set both"
    )


def processor_call_bounds(model_bounds: tuple, mm_processor_kwargs) -> tuple:
    """(min_pixels, max_pixels) the image processor resizes within when verl calls it with
    `mm_processor_kwargs`: min_pixels and max_pixels given together, else a size of shortest_edge and
    longest_edge, else the model's bounds. A lone min_pixels or max_pixels is refused (ValueError)."""
    error = lone_pixel_bound_error(mm_processor_kwargs)
    if error:
        raise ValueError(error)
    overrides = mm_processor_kwargs or {}
    if overrides.get("min_pixels") is not None:
        return overrides["min_pixels"], overrides["max_pixels"]
    size = overrides.get("size") or {}
    if size.get("shortest_edge") and size.get("longest_edge"):
        return size["shortest_edge"], size["longest_edge"]
    return model_bounds


def refuse_images_resized_again(processor, images_column, describe_row, mm_processor_kwargs=None) -> None:
    """Raises DatasetRowError, naming the row by `describe_row(index)`, for the first row of the arrow
    `images_column` whose images the processor (its bounds, or mm_processor_kwargs') would resize again."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return
    model_bounds = processor_call_bounds(processor_pixel_bounds(image_processor.to_dict()), mm_processor_kwargs)
    for bounds, row in first_row_per_image_bounds(images_column).items():
        reason = resized_again_reason(bounds, model_bounds)
        if reason:
            raise DatasetRowError(f"{describe_row(row)}: {reason}")


def refuse_frames_resized_again(processor, frame_sizes: list, describe_row, mm_processor_kwargs=None) -> None:
    """Raises DatasetRowError, naming the row by `describe_row(index)`, for the first row whose boxes' pixel
    frame (`frame_sizes`: a grounding row's extra_info.frame_size, the image as resized for the model; None
    for rows without one) has an area outside the bounds the image processor resizes within: a resize rounds
    its sides, so with min_pixels close to max_pixels the frame may leave the bounds it was resized within,
    and the processor would resize the image once more."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return
    bounds = processor_call_bounds(processor_pixel_bounds(image_processor.to_dict()), mm_processor_kwargs)
    for row, frame in enumerate(frame_sizes):
        reason = area_outside_reason(*frame, bounds) if frame is not None else None
        if reason:
            raise DatasetRowError(
                f"{describe_row(row)}: its boxes are in the frame {reason}, out of that frame: prepare the data "
                "with min_pixels and max_pixels further apart"
            )


def refuse_invalid_pixel_bounds(images_column, describe_row) -> None:
    """Raises DatasetRowError, naming the row by `describe_row(index)`, for the first row of the arrow
    `images_column` holding an image whose min/max pixels cannot bound a resize."""
    for (low, high), row in first_row_per_image_bounds(images_column).items():
        error = pixel_bounds_error(*stated_bounds(low, high))
        if error:
            raise DatasetRowError(f"{describe_row(row)}: an image's pixel bounds are unusable: {error}")


def first_row_per_image_bounds(column) -> dict[tuple, int]:
    """Each distinct (min_pixels, max_pixels) of the image items in an arrow list column (None where
    an item states none) with the first row holding it, read without decoding images."""
    if not pa.types.is_list(column.type) or not pa.types.is_struct(column.type.value_type):
        return {}
    items = pc.list_flatten(column)
    names = {field.name for field in column.type.value_type}

    def bound(name):
        return pc.struct_field(items, name).to_pylist() if name in names else [None] * len(items)

    first: dict[tuple, int] = {}
    for row, low, high in zip(pc.list_parent_indices(column).to_pylist(), bound("min_pixels"), bound("max_pixels")):
        first.setdefault((low, high), row)
    return first

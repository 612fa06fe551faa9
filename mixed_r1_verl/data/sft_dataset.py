"""The SFT dataset: verl's multi-turn SFT dataset reading the converter's sft_*.parquet, with the
project's image path.

Select it in the SFT config (conf/sft/sft.yaml does):

    data.custom_cls.path=pkg://mixed_r1_verl.data.sft_dataset data.custom_cls.name=MixedR1SFTDataset

verl's dataset resizes images through qwen_vl_utils (which needs torchvision); this class resizes them
exactly as the GRPO dataset does (`model_input_image`: PIL only, the per-image min/max pixels the
converter wrote), so SFT, GRPO and the converter's grounding frame agree; data converted for a
frame the model's processor would resize again, or for another model family's box frame, is refused,
as in GRPO. Where verl loaded no processor
(AutoProcessor fails without torchvision), the project's image-and-text processor takes its place.
Rows longer than `data.max_length` (images expanded) are left out at load, with one warning counting them
per task, instead of stopping training when a batch reaches them (`data.truncation=error`, conf/sft/sft.yaml)
or being cut: with `pad_mode=no_padding` verl cuts a row's end whatever `truncation` says, which is the
target's `<answer>`. The length is the converter's count (extra_info.sequence_length) where it wrote one.
Everything else (per-turn tokenisation, loss mask on the assistant turn only, M-RoPE positions,
padding) is verl's. A row that cannot be prepared raises an error naming it.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pyarrow as pa
from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset
from verl.utils.py_functional import convert_nested_value_to_list_recursive

from mixed_r1_verl.data.dataset import (
    DatasetRowError,
    NamesRowsThatFail,
    counted_or_measured,
    dropped_per_task,
    refuse_box_frame_of_another_family,
    refuse_images_resized_again,
    refuse_invalid_pixel_bounds,
)
from mixed_r1_verl.data.model_files import DEFAULT_PATCH_SIZE, image_processor_settings
from mixed_r1_verl.data.model_images import model_input_image
from mixed_r1_verl.data.processor import load_image_text_processor, processor_model_family
from mixed_r1_verl.data.prompts import chat_with_image_items
from mixed_r1_verl.data.records import IMAGE_PLACEHOLDER
from mixed_r1_verl.rewards.scoring import known_task

logger = logging.getLogger(__name__)


class MixedR1SFTDataset(NamesRowsThatFail, MultiTurnSFTDataset):
    def __init__(self, parquet_files, tokenizer, config, processor=None, max_samples: int = -1):
        model_dir = Path(tokenizer.name_or_path)
        if processor is None and image_processor_settings(model_dir):
            # verl only warns when AutoProcessor fails (as it does without torchvision); images would
            # then reach the model as bare placeholders.
            processor = load_image_text_processor(model_dir)
            logger.warning("verl loaded no processor for %s; using the image-and-text processor", model_dir)
        # verl reads its default image patch size from the image processor before it reads the config,
        # and InternVL's names none: the processor is set once verl's set-up is done.
        super().__init__(parquet_files, tokenizer, config, processor=None, max_samples=max_samples)
        self.processor = processor
        if self.image_patch_size is None and processor is not None:
            self.image_patch_size = getattr(processor.image_processor, "patch_size", DEFAULT_PATCH_SIZE)
        if "extra_info" in self.dataframe.columns:
            infos = [info or {} for info in self.dataframe["extra_info"]]
            sources = self.dataframe["data_source"] if "data_source" in self.dataframe.columns else [None] * len(infos)
            grounding = [known_task(source, info) == "grounding" for source, info in zip(sources, infos)]
            box_frames = [info.get("box_frame") for info in infos]
            family = processor_model_family(processor)
            refuse_box_frame_of_another_family(family, box_frames, grounding, self._describe_row)
        if self.image_key in self.dataframe.columns:
            images = pa.array(self.dataframe[self.image_key])
            refuse_invalid_pixel_bounds(images, self._describe_row)
            refuse_images_resized_again(self.processor, images, self._describe_row)
        self.leave_out_rows_over_max_length()

    def extra_info_field(self, name: str) -> list:
        if "extra_info" not in self.dataframe.columns:
            return [None] * len(self.dataframe)
        return [(info or {}).get(name) for info in self.dataframe["extra_info"]]

    def sequence_length(self, item: int) -> int:
        """Tokens of the row's whole chat, images expanded, as the processor builds it."""
        try:
            turns = self._build_messages(self.dataframe.iloc[item].to_dict())
            if self.processor is None:
                return len(self.tokenizer.apply_chat_template(turns, tokenize=True, **self.apply_chat_template_kwargs))
            inputs = self.processor.apply_chat_template(
                turns, tokenize=True, return_dict=True, **self.apply_chat_template_kwargs
            )
            return len(inputs["input_ids"][0])
        except Exception as error:
            raise DatasetRowError(f"{self._describe_row(item)} cannot be prepared: {error}") from error

    def leave_out_rows_over_max_length(self) -> None:
        """Leaves out the rows longer than max_length (verl would stop training at the first), with one
        warning counting them per task."""
        lengths = counted_or_measured(
            self.extra_info_field("sequence_length"),
            self.sequence_length,
            lambda rows: [self.sequence_length(row) for row in rows],
            self._describe_row,
            "SFT tokens",
        )
        keep = [row for row, length in enumerate(lengths) if length <= self.max_length]
        dropped = [row for row, length in enumerate(lengths) if length > self.max_length]
        tasks = self.extra_info_field("task")
        self.rows_over_max_length = Counter(tasks[row] for row in dropped)
        if not dropped:
            return
        ids = [self.extra_info_field("id")[row] for row in dropped[:20]]
        logger.warning(
            "%d of %d SFT rows of %s exceed data.max_length=%d and are left out; %s",
            len(dropped),
            len(lengths),
            self.parquet_files,
            self.max_length,
            dropped_per_task(tasks, dropped, ids),
        )
        self.dataframe = self.dataframe.iloc[keep]
        self.messages = [self.messages[row] for row in keep]
        if self.tools is not None:
            self.tools = [self.tools[row] for row in keep]
        if self.enable_thinking is not None:
            self.enable_thinking = [self.enable_thinking[row] for row in keep]

    def _describe_row(self, item: int) -> str:
        extra_info = self.dataframe.iloc[item].get("extra_info") or {}
        return f"SFT row {item} (id {extra_info.get('id')!r}) of {self.parquet_files}"

    def _build_messages(self, example: dict) -> list[dict]:
        """The row's chat turns as content items, each `<image>` an image item holding its resized image."""
        turns = chat_with_image_items(convert_nested_value_to_list_recursive(example[self.messages_key]))
        images = convert_nested_value_to_list_recursive(example.get(self.image_key)) or []
        if example.get(self.video_key) is not None:
            raise DatasetRowError(f"{type(self).__name__} handles images only, the row holds videos")
        slots = []
        for turn in turns:
            if isinstance(turn["content"], str):
                turn["content"] = [{"type": "text", "text": turn["content"]}] if turn["content"] else []
            slots += [item for item in turn["content"] if item["type"] == "image"]
        if len(slots) != len(images):
            raise DatasetRowError(f"{len(slots)} {IMAGE_PLACEHOLDER} placeholder(s) for {len(images)} image(s)")
        for slot, image in zip(slots, images):
            slot["image"] = model_input_image(image, self.image_patch_size)
        return turns

"""The prompt each task's rows are asked with: the problem, its options, a per-task instruction and
the reasoning format the format reward checks."""

from __future__ import annotations

import os
import re
import string

from mixed_r1_verl.data.frames import BOX_FRAME_ABS
from mixed_r1_verl.data.model_files import vision_geometry
from mixed_r1_verl.data.processor import load_image_text_processor, processor_model_family
from mixed_r1_verl.data.records import IMAGE_PLACEHOLDER, OPTION_LETTERS
from mixed_r1_verl.rewards.tasks import plugin_tasks

FORMAT_INSTRUCTION = (
    "First think through the problem step by step inside <think> </think> tags, "
    "then give the final answer inside <answer> </answer> tags."
)
DEFAULT_TEMPLATE = "{problem}\n{options}{instruction} {format_instruction}"

TASK_INSTRUCTIONS = {
    "matching": "Answer with a single word or phrase.",
    "matching_options": "Answer with the letter of the correct option.",
    "chart": "Answer with a single number or a short phrase.",
    "grounding_abs": (
        "Give the bounding box as [x1, y1, x2, y2] in absolute pixel coordinates of the {width}x{height} image."
    ),
    "grounding_norm1000": "Give the bounding box as [x1, y1, x2, y2] with coordinates normalised to 0-1000.",
    "open_ended": "Answer in one or two sentences.",
}


def task_instruction(task: str, has_options: bool, box_frame: str, frame_size: tuple[int, int]) -> str:
    if task == "grounding":
        key = "grounding_abs" if box_frame == BOX_FRAME_ABS else "grounding_norm1000"
        return TASK_INSTRUCTIONS[key].format(width=frame_size[0], height=frame_size[1])
    if task == "matching" and has_options:
        return TASK_INSTRUCTIONS["matching_options"]
    installed = plugin_tasks().get(task)
    return TASK_INSTRUCTIONS[task] if installed is None else installed.instruction


def options_block(options: tuple[str, ...] | None) -> str:
    if not options:
        return ""
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"at most {len(OPTION_LETTERS)} options are supported, got {len(options)}")
    return "Options:\n" + "".join(f"{OPTION_LETTERS[i]}. {text}\n" for i, text in enumerate(options))


TEMPLATE_FIELDS = ("problem", "options", "instruction", "format_instruction")


def template_error(setting: str, template: str, fields: tuple[str, ...] = TEMPLATE_FIELDS) -> str | None:
    """Why `template`, the `setting` that wraps a row's problem, cannot ask a row, or None: it must place
    the problem (which holds the row's `<image>` placeholders) exactly once, and use no field but `fields`
    (literal braces are written doubled)."""
    try:
        used = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        return f"{setting} {template!r} is no format string: {error} (write a literal brace as {{{{ or }}}})"
    unknown = sorted({field for field in used if field not in fields})
    if unknown:
        return (
            f"{setting} uses {', '.join('{' + field + '}' for field in unknown)}; its "
            f"{'fields are' if len(fields) > 1 else 'field is'} {', '.join('{' + field + '}' for field in fields)} "
            "(write a literal brace as {{ or }})"
        )
    if used.count("problem") != 1:
        return (
            f"{setting} places {{problem}} {used.count('problem')} times: once, since it holds the row's <image> "
            "placeholders, one per image"
        )
    return None


def render_prompt(
    problem: str,
    task: str,
    options: tuple[str, ...] | None,
    box_frame: str,
    frame_size: tuple[int, int],
    template: str = DEFAULT_TEMPLATE,
) -> str:
    """The user turn's text; `template` may use {problem}, {options}, {instruction} and
    {format_instruction}."""
    return template.format(
        problem=problem,
        options=options_block(options),
        instruction=task_instruction(task, bool(options), box_frame, frame_size),
        format_instruction=FORMAT_INSTRUCTION,
    )


def chat_with_image_items(messages: list[dict]) -> list[dict]:
    """The chat with each turn's `<image>` placeholders turned into image content items, as chat
    templates expect (and as verl's dataset builds them): "<image>What?" becomes
    [{"type": "image"}, {"type": "text", "text": "What?"}]. Turns without placeholders are kept."""
    structured = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or IMAGE_PLACEHOLDER not in content:
            structured.append(dict(message))
            continue
        parts = [part for part in re.split(f"({re.escape(IMAGE_PLACEHOLDER)})", content) if part]
        items = [{"type": "image"} if part == IMAGE_PLACEHOLDER else {"type": "text", "text": part} for part in parts]
        structured.append({**message, "content": items})
    return structured


def chat_template_text(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The model's chat-template text for a verl-layout chat, one vision block per image, ready for the
    model's answer (or, without the generation prompt, ending with the chat's last turn)."""
    return tokenizer.apply_chat_template(
        chat_with_image_items(messages), add_generation_prompt=add_generation_prompt, tokenize=False
    )


class PromptTokenCounter:
    """Tokens of a prompt as the model family's processor builds it: the chat template's text with each
    image's token expanded as the processor expands it for the resized image (the Qwen2-VL family: one
    pad per merged patch; InternVL: `<img>`, `image_seq_length` tokens per tile of its dynamic tiling,
    `</img>`). Only the tokenizer and the image processor's settings are loaded; no image is decoded."""

    def __init__(self, model_dir: str | os.PathLike):
        self.processor = load_image_text_processor(model_dir)
        self.tokenizer = self.processor.tokenizer
        patch_size, merge_size = vision_geometry(model_dir)
        self.tile = patch_size * merge_size

    def image_tokens(self, resized_size: tuple[int, int]) -> int:
        width, height = resized_size
        if processor_model_family(self.processor) == "internvl":
            # InternVL tiles the image it is given, whatever its size: the processor's own count.
            return self.processor._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_tokens[0]
        return (width // self.tile) * (height // self.tile)

    def count(
        self, messages: list[dict], resized_sizes: list[tuple[int, int]], add_generation_prompt: bool = True
    ) -> int:
        """Tokens of the chat ready for the model's answer, or as a whole (an SFT row) without the generation prompt."""
        text = chat_template_text(self.tokenizer, messages, add_generation_prompt)
        image_tokens = text.count(self.processor.image_token)
        if image_tokens != len(resized_sizes):
            raise ValueError(
                f"the chat template rendered {image_tokens} image token(s) for {len(resized_sizes)} image(s)"
            )
        text_tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return text_tokens + sum(self.image_tokens(size) - 1 for size in resized_sizes)

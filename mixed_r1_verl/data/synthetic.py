"""A small mixed dataset in the canonical record layout, drawn on the spot with PIL.

Every task is represented: grounding (coloured shapes, the ground-truth box in original pixels),
chart (bar charts with labelled bars), matching (yes/no and multiple choice with options) and
open-ended (a caption of the drawn scene). Every row carries a short, correct rationale (the bars
read off, the colour found, the shape located) for supervised fine-tuning, and a pinned split so
that every task is in val. Used by tests, the `smoke` and `learn` recipes and the benchmarks.

    python -m mixed_r1_verl.data.synthetic out_dir=DIR rows_per_task=N [val_rows_per_task=M seed=0 ...]
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mixed_r1_verl.rewards.tasks import BUILTIN_TASKS as TASKS
from mixed_r1_verl.settings import run_settings_cli

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 170),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
BAR_LABELS = "ABCDE"
LETTERS = "ABCD"
# image_format's values, in any case: each file's suffix and the format PIL writes.
IMAGE_FORMATS = {"png": ("png", "PNG"), "jpeg": ("jpg", "JPEG"), "jpg": ("jpg", "JPEG")}


def _noise_tile(seed: int, size: tuple[int, int], texture: float) -> np.ndarray:
    """Pixel noise twice the image size; each background crops it at a random offset, which is
    far cheaper than drawing fresh noise per image."""
    width, height = size
    return np.random.default_rng(seed).normal(0, texture, size=(2 * height, 2 * width, 3)).astype(np.int16)


def _background(rng: random.Random, size: tuple[int, int], noise: np.ndarray) -> Image.Image:
    """A pale, near-grey background with pixel noise, so encoded sizes resemble photographs rather than flat
    art; a clear tint could pass for a colour that a question asks about."""
    width, height = size
    top, left = rng.randrange(height), rng.randrange(width)
    grey = rng.randint(200, 250)
    base = np.array([grey + rng.randint(-8, 8) for _ in range(3)], dtype=np.int16)
    pixels = base + noise[top : top + height, left : left + width]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: list[int], colour: tuple[int, int, int]) -> None:
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x1 + x2) // 2, y1), (x2, y2), (x1, y2)], fill=colour)


def _random_box(rng: random.Random, size: tuple[int, int], taken: list[list[int]]) -> list[int]:
    width, height = size
    side_max = max(8, min(width, height) // 3)
    for _ in range(100):
        side = rng.randint(max(4, side_max // 2), side_max)
        x1 = rng.randint(0, width - side - 1)
        y1 = rng.randint(0, height - side - 1)
        box = [x1, y1, x1 + side, y1 + side]
        if all(box[2] <= t[0] or box[0] >= t[2] or box[3] <= t[1] or box[1] >= t[3] for t in taken):
            return box
    return box


def _shape_scene(rng: random.Random, size: tuple[int, int], noise: np.ndarray) -> tuple[Image.Image, list[dict]]:
    """An image with 2-3 shapes of distinct colours; returns the image and the shapes drawn."""
    image = _background(rng, size, noise)
    draw = ImageDraw.Draw(image)
    colours = rng.sample(sorted(COLOURS), rng.randint(2, 3))
    shapes = []
    for colour in colours:
        box = _random_box(rng, size, [s["box"] for s in shapes])
        shape = rng.choice(SHAPES)
        _draw_shape(draw, shape, box, COLOURS[colour])
        shapes.append({"colour": colour, "shape": shape, "box": box})
    return image, shapes


def _bar_chart(rng: random.Random, size: tuple[int, int], noise: np.ndarray) -> tuple[Image.Image, dict[str, int]]:
    image = _background(rng, size, noise)
    draw = ImageDraw.Draw(image)
    width, height = size
    labels = BAR_LABELS[: rng.randint(3, len(BAR_LABELS))]
    # Distinct values, so "the largest bar" has one answer.
    values = dict(zip(labels, rng.sample(range(1, 100), len(labels))))
    left, bottom, top = width // 10, height - height // 8, height // 10
    # Text scales with the chart, so it stays as legible as the bars once the model's processor resizes it.
    font = ImageFont.load_default(size=max(10, height // 22))
    gap = max(2, height // 120)
    draw.line([(left, top), (left, bottom), (width - left // 2, bottom)], fill=(0, 0, 0), width=2)
    slot = (width - left * 2) // len(labels)
    for i, label in enumerate(labels):
        bar_height = (bottom - top) * values[label] // 100
        x1 = left + i * slot + slot // 5
        x2 = left + (i + 1) * slot - slot // 5
        draw.rectangle([x1, bottom - bar_height, x2, bottom], fill=COLOURS["blue"])
        centre = (x1 + x2) // 2
        draw.text((centre, bottom - bar_height - gap), str(values[label]), fill=(0, 0, 0), font=font, anchor="md")
        draw.text((centre, bottom + gap), label, fill=(0, 0, 0), font=font, anchor="mt")
    return image, values


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _describe(shapes: list[dict]) -> str:
    parts = [_a(f"{s['colour']} {s['shape']}") for s in shapes]
    return "The image shows " + ", ".join(parts[:-1]) + f" and {parts[-1]} on a plain background."


def _place(box: list[int], size: tuple[int, int]) -> str:
    """Where a box's centre lies, in words that hold in any resized frame of the image."""
    width, height = size
    x, y = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
    column = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"
    return "centre" if (row, column) == ("middle", "centre") else f"{row} {column}"


def _inventory(shapes: list[dict], size: tuple[int, int]) -> str:
    return "; ".join(f"{_a(s['colour'] + ' ' + s['shape'])} at the {_place(s['box'], size)}" for s in shapes)


def _grounding_row(rng: random.Random, shapes: list[dict], size: tuple[int, int]) -> dict:
    target = rng.choice(shapes)
    name = f"{target['colour']} {target['shape']}"
    return {
        "problem": f"<image>Locate the {name} in the image.",
        "answer": "[" + ", ".join(str(v) for v in target["box"]) + "]",
        "rationale": f"I see {_inventory(shapes, size)}. The {name} is at the {_place(target['box'], size)}; "
        "its box is tight around its edges.",
    }


def _chart_row(rng: random.Random, values: dict[str, int], size: tuple[int, int]) -> dict:
    readings = "The bars read " + ", ".join(f"{label} {value}" for label, value in values.items()) + "."
    if rng.random() < 0.5:
        label = rng.choice(sorted(values))
        return {
            "problem": f"<image>What is the value of the bar labelled {label}?",
            "answer": str(values[label]),
            "rationale": f"{readings} Bar {label} is {values[label]}.",
        }
    largest = max(values, key=values.get)
    return {
        "problem": "<image>Which bar has the largest value?",
        "answer": largest,
        "rationale": f"{readings} The tallest is {largest} at {values[largest]}.",
    }


def _shape_name(shape: dict, shapes: list[dict], size: tuple[int, int]) -> str:
    """The shape's kind, with its place when another shape of that kind is in the image."""
    if sum(other["shape"] == shape["shape"] for other in shapes) == 1:
        return shape["shape"]
    return f"{shape['shape']} at the {_place(shape['box'], size)}"


def _matching_row(rng: random.Random, shapes: list[dict], size: tuple[int, int]) -> dict:
    seen = f"I see {_inventory(shapes, size)}."
    names = [_shape_name(s, shapes, size) for s in shapes]
    # Ask about a shape its name singles out (two triangles in the same third would not be).
    named = [i for i, name in enumerate(names) if names.count(name) == 1]
    if rng.random() < 0.5 or not named:
        # The answer is drawn first: asking about any of the six colours would make "no" the likelier answer.
        present = rng.random() < 0.5
        drawn = {s["colour"] for s in shapes}
        colour = rng.choice([c for c in sorted(COLOURS) if (c in drawn) == present])
        finding = f"The {colour} one is there." if present else f"Nothing is {colour}."
        return {
            "problem": f"<image>Is there anything {colour} in the image?",
            "answer": "yes" if present else "no",
            "rationale": f"{seen} {finding}",
        }
    index = rng.choice(named)
    target, name = shapes[index], names[index]
    distractors = rng.sample([c for c in sorted(COLOURS) if c != target["colour"]], len(LETTERS) - 1)
    options = distractors + [target["colour"]]
    rng.shuffle(options)
    letter = LETTERS[options.index(target["colour"])]
    return {
        "problem": f"<image>What colour is the {name}?",
        "answer": letter,
        "options": options,
        "rationale": f"{seen} The {name} is {target['colour']}, option {letter}.",
    }


def _open_ended_row(rng: random.Random, shapes: list[dict], size: tuple[int, int]) -> dict:
    question = rng.choice(["Describe the image.", "What can you see in this picture?"])
    return {
        "problem": f"<image>{question}",
        "answer": _describe(shapes),
        "rationale": f"I see {_inventory(shapes, size)}, on a plain pale background.",
    }


def _scene_for_task(task: str, rng: random.Random, size: tuple[int, int], noise: np.ndarray):
    if task == "chart":
        return _bar_chart(rng, size, noise)
    return _shape_scene(rng, size, noise)


ROW_BUILDERS = {
    "matching": _matching_row,
    "chart": _chart_row,
    "grounding": _grounding_row,
    "open_ended": _open_ended_row,
}


def default_val_rows(rows_per_task: int) -> int:
    """One row in eight per task goes to val, at least one once a task has two rows."""
    return max(1, rows_per_task // 8) if rows_per_task >= 2 else 0


def write_synthetic_dataset(
    out_dir,
    rows_per_task: int,
    seed: int = 0,
    image_size: tuple[int, int] = (320, 240),
    *,
    val_rows_per_task: int | None = None,
    distinct_images_per_task: int | None = None,
    image_format: str = "png",
    texture: float = 6.0,
) -> tuple[Path, Path]:
    """Write `rows_per_task` canonical records per task to `out_dir/synthetic.jsonl` and their
    images under `out_dir/images/`; return (jsonl_path, image_root).

    The last `val_rows_per_task` rows of each task are pinned to `"split": "val"`, the others to
    train (default: `default_val_rows`); 0 pins nothing and leaves the split to the converter.
    `image_size` is (width, height). With `distinct_images_per_task`, a task's rows share a pool of that
    many images, which keeps large sets cheap to generate: its val rows draw from their share of the
    pool (one image at least) and its train rows from the rest, so no image is in both splits. Rows
    that share an image draw their questions independently, so some ask the same one. `image_format`
    is "png", "jpeg" or "jpg", in any case; `texture` is the background noise level.
    """
    if image_format.lower() not in IMAGE_FORMATS:
        raise ValueError(f"image_format={image_format!r} is none of {', '.join(IMAGE_FORMATS)}")
    suffix, pil_format = IMAGE_FORMATS[image_format.lower()]
    val_rows = default_val_rows(rows_per_task) if val_rows_per_task is None else val_rows_per_task
    if not 0 <= val_rows <= rows_per_task:
        raise ValueError(f"val_rows_per_task={val_rows} must lie between 0 and rows_per_task={rows_per_task}")
    train_rows = rows_per_task - val_rows
    pool_size = min(rows_per_task, distinct_images_per_task or rows_per_task)
    val_pool_size = min(val_rows, max(1, pool_size * val_rows // rows_per_task)) if val_rows else 0
    if train_rows and pool_size == val_pool_size:
        raise ValueError(
            f"distinct_images_per_task={distinct_images_per_task} leaves no image for train rows: "
            "with rows in both splits it must be at least 2"
        )
    out_dir = Path(out_dir)
    image_root = out_dir / "images"
    image_root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    noise = _noise_tile(seed, image_size, texture)
    jsonl_path = out_dir / "synthetic.jsonl"
    with open(jsonl_path, "w", encoding="utf-8") as out:
        for task in TASKS:
            images = []
            for i in range(pool_size):
                image, scene = _scene_for_task(task, rng, image_size, noise)
                relative = f"{task}/{i:06d}.{suffix}"
                (image_root / task).mkdir(exist_ok=True)
                image.save(image_root / relative, format=pil_format, quality=90)
                images.append((relative, scene))
            train_pool, val_pool = images[: pool_size - val_pool_size], images[pool_size - val_pool_size :]
            for i in range(rows_per_task):
                is_val = i >= train_rows
                pool, place = (val_pool, i - train_rows) if is_val else (train_pool, i)
                relative, scene = pool[place % len(pool)]
                row = {"id": f"{task}-{i:06d}", "task": task, "data_source": f"synthetic_{task}", "images": [relative]}
                row.update(ROW_BUILDERS[task](rng, scene, image_size))
                if val_rows:
                    row["split"] = "val" if is_val else "train"
                out.write(json.dumps(row) + "\n")
    return jsonl_path, image_root


@dataclass
class SyntheticConfig:
    out_dir: str = "???"
    rows_per_task: int = 24
    # Rows per task pinned to val; null: one in eight.
    val_rows_per_task: int | None = None
    seed: int = 0
    width: int = 320
    height: int = 240
    # png, jpeg or jpg, in any case.
    image_format: str = "png"


def write_and_name(config: SyntheticConfig) -> None:
    jsonl_path, image_root = write_synthetic_dataset(
        config.out_dir,
        config.rows_per_task,
        config.seed,
        (config.width, config.height),
        val_rows_per_task=config.val_rows_per_task,
        image_format=config.image_format,
    )
    print(json.dumps({"records": str(jsonl_path), "image_root": str(image_root)}))


def main(argv: list[str] | None = None) -> None:
    run_settings_cli(__doc__, SyntheticConfig, sys.argv[1:] if argv is None else argv, write_and_name)


if __name__ == "__main__":
    main()

"""The synthetic set: its answers and images leave a model nothing to score on but what the image shows."""

import json

import numpy as np
import pytest
from PIL import Image

from mixed_r1_verl.data.frames import smart_resize
from mixed_r1_verl.data.synthetic import COLOURS, write_synthetic_dataset
from mixed_r1_verl.models.tiny_qwen25vl import MAX_PIXELS, MIN_PIXELS


def read_rows(jsonl) -> list[dict]:
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


def test_yes_no_questions_are_answered_yes_half_the_time(tmp_path):
    jsonl, _ = write_synthetic_dataset(
        tmp_path, rows_per_task=2000, seed=0, image_size=(96, 72), val_rows_per_task=0, distinct_images_per_task=50
    )
    answers = [row["answer"] for row in read_rows(jsonl) if row["task"] == "matching" and "options" not in row]
    assert len(answers) > 500 and set(answers) == {"yes", "no"}
    assert abs(answers.count("yes") / len(answers) - 0.5) <= 0.04


def test_chart_values_and_labels_stay_legible_in_the_frame_the_tiny_model_sees(tmp_path):
    width, height = 1280, 960
    jsonl, image_root = write_synthetic_dataset(tmp_path, rows_per_task=1, image_size=(width, height))
    chart = next(row for row in read_rows(jsonl) if row["task"] == "chart")
    pixels = np.asarray(Image.open(image_root / chart["images"][0]).convert("RGB"))
    dark = (pixels < 100).all(axis=2)
    x_axis = dark.sum(axis=1) > width // 2
    axis_row = np.flatnonzero(x_axis)[0]
    bar_columns = np.flatnonzero((pixels == COLOURS["blue"]).all(axis=2).any(axis=0))
    bars = np.split(bar_columns, np.flatnonzero(np.diff(bar_columns) > 1) + 1)
    seen_height, _ = smart_resize(height, width, 28, MIN_PIXELS, MAX_PIXELS)
    assert len(bars) == chart["rationale"].split(".")[0].count(",") + 1  # "The bars read A 12, B 40, C 7."
    for columns in bars:
        text_rows = np.flatnonzero(dark[:, columns].any(axis=1) & ~x_axis)
        for rows in (text_rows[text_rows < axis_row], text_rows[text_rows > axis_row]):  # the value, the label
            assert (rows.max() - rows.min() + 1) * seen_height / height >= 7


def test_backgrounds_are_near_grey(tmp_path):
    # Without texture a background is one flat colour, the commonest in its image.
    jsonl, image_root = write_synthetic_dataset(tmp_path, rows_per_task=125, image_size=(160, 120), texture=0.0)
    rows = read_rows(jsonl)
    assert len(rows) == 500
    for row in rows:
        pixels = np.asarray(Image.open(image_root / row["images"][0]).convert("RGB")).reshape(-1, 3)
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        background = colours[counts.argmax()].astype(int)
        assert background.max() - background.min() <= 16 and background.min() >= 192, (row["id"], background)


def test_val_rows_draw_from_images_of_their_own_when_rows_share_images(tmp_path):
    jsonl, image_root = write_synthetic_dataset(
        tmp_path, rows_per_task=80, seed=0, image_size=(96, 72), val_rows_per_task=10, distinct_images_per_task=16
    )
    rows = read_rows(jsonl)
    train_images = {row["images"][0] for row in rows if row["split"] == "train"}
    val_images = {row["images"][0] for row in rows if row["split"] == "val"}
    assert val_images and not val_images & train_images
    assert len(train_images | val_images) == len(list(image_root.rglob("*.png"))) == 4 * 16
    assert sum(row["split"] == "val" for row in rows) > len(val_images)  # val rows share images too
    with pytest.raises(ValueError, match="distinct_images_per_task=1 leaves no image for train rows"):
        write_synthetic_dataset(tmp_path / "one", rows_per_task=8, val_rows_per_task=1, distinct_images_per_task=1)


@pytest.mark.parametrize(
    "image_format, suffix, pil_format", [("jpg", "jpg", "JPEG"), ("JPEG", "jpg", "JPEG"), ("Png", "png", "PNG")]
)
def test_image_format_is_read_in_any_case_and_jpg_is_jpeg(tmp_path, image_format, suffix, pil_format):
    jsonl, image_root = write_synthetic_dataset(
        tmp_path, rows_per_task=1, image_size=(64, 48), image_format=image_format
    )
    for row in read_rows(jsonl):
        assert row["images"][0].endswith(f".{suffix}")
        assert Image.open(image_root / row["images"][0]).format == pil_format


def test_an_unknown_image_format_is_refused_naming_the_valid_ones_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"image_format='gif' is none of png, jpeg, jpg"):
        write_synthetic_dataset(tmp_path / "out", rows_per_task=1, image_format="gif")
    assert not (tmp_path / "out").exists()

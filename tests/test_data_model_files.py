"""Reading a checkpoint's image processor settings, in both layouts transformers uses."""

import pytest

from mixed_r1_verl.data.model_files import (
    image_processor_settings,
    processor_pixel_bounds,
    required_image_processor_settings,
    vision_geometry,
)
from mixed_r1_verl.data.prepare import PrepareConfig, pixel_bounds


def test_a_processor_saved_by_transformers_gives_the_same_bounds_and_geometry(tiny_model_dir, resaved_model_dir):
    original, resaved = image_processor_settings(tiny_model_dir), image_processor_settings(resaved_model_dir)
    assert processor_pixel_bounds(resaved) == processor_pixel_bounds(original) == (3136, 200704)
    assert vision_geometry(resaved_model_dir) == vision_geometry(tiny_model_dir)


def test_the_converter_reads_the_bounds_of_a_saved_checkpoint(tiny_model_dir, resaved_model_dir):
    bounds = [
        pixel_bounds(PrepareConfig(input="x", image_root="x", output_dir="x", model_path=str(model)), model)
        for model in (tiny_model_dir, resaved_model_dir)
    ]
    assert bounds[0] == bounds[1] == (3136, 200704)


def test_a_directory_without_an_image_processor_has_no_settings(tmp_path):
    (tmp_path / "processor_config.json").write_text('{"processor_class": "Qwen2_5_VLProcessor"}')
    assert image_processor_settings(tmp_path) == {}
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} has no image processor settings .*actor/huggingface"):
        required_image_processor_settings(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} has no image processor settings"):
        pixel_bounds(PrepareConfig(input="x", image_root="x", output_dir="x", model_path=str(tmp_path)), tmp_path)

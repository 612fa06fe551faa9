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


def test_a_model_named_from_the_home_directory_is_the_directory_it_names(tiny_model_dir, tmp_path, monkeypatch):
    """As the BMAS embedding model reads `~/model`, so do the training entries and the data tools."""
    from mixed_r1_verl.data.model_files import missing_model_path, resolve_model_dir
    from mixed_r1_verl.main import pin_model_path

    (tmp_path / "model").symlink_to(tiny_model_dir)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert missing_model_path("~/model") is None
    assert pin_model_path("~/model") == str(tmp_path / "model")
    assert resolve_model_dir("~/model") == tmp_path / "model"
    missing = f"{tmp_path / 'elsewhere'} does not exist (nor is '~/elsewhere' a hub id)"
    assert missing_model_path("~/elsewhere") == missing

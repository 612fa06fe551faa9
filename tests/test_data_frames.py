import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as processor_smart_resize

from mixed_r1_verl.data.frames import (
    BOX_FRAME_ABS,
    BOX_FRAME_NORM1000,
    MAX_ASPECT_RATIO,
    box_to_frame,
    model_frame_size,
    resized_again_reason,
    smart_resize,
)
from mixed_r1_verl.data.model_images import model_input_image

# Bounds small enough that the processor runs fast, large enough that both clamps are exercised.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 256


def processor_frame(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) the real Qwen2-VL image processor resizes a real image to."""
    processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    noise = np.random.default_rng(width * 7919 + height).integers(0, 255, (height, width, 3), dtype=np.uint8)
    grid = processor(images=[Image.fromarray(noise)], return_tensors="np")["image_grid_thw"][0]
    return int(grid[1]) * 14, int(grid[2]) * 14


@pytest.mark.parametrize(
    "width,height",
    [(320, 240), (640, 480), (1280, 720), (33, 30), (10, 400), (1000, 13), (57, 57), (2000, 1500), (28, 28)],
)
def test_smart_resize_matches_the_processor(width, height):
    assert smart_resize(height, width, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS) == processor_frame(
        width, height, MIN_PIXELS, MAX_PIXELS
    )


@settings(max_examples=40, deadline=None)
@given(st.integers(8, 900), st.integers(8, 900), st.sampled_from([(3136, 200704), (784, 50176), (3136, 1003520)]))
def test_smart_resize_matches_the_processor_on_random_sizes(width, height, bounds):
    if max(width, height) / min(width, height) > 200:
        return
    assert smart_resize(height, width, min_pixels=bounds[0], max_pixels=bounds[1]) == processor_frame(
        width, height, *bounds
    )


def test_smart_resize_rejects_extreme_aspect_ratio():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2050)


@pytest.mark.parametrize("width, height", [(7200, 40), (8000, 45), (40, 7200)])
def test_smart_resize_rejects_an_image_whose_resize_exceeds_the_aspect_ratio_the_processor_takes(width, height):
    assert max(width, height) / min(width, height) <= MAX_ASPECT_RATIO
    with pytest.raises(ValueError, match=rf"{width}x{height} resizes to \d+x\d+, whose aspect ratio exceeds 200"):
        smart_resize(height, width, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    # The processor takes the image, then refuses it resized, as it sees it in the model's inputs.
    resized = processor_smart_resize(height, width, 28, MIN_PIXELS, MAX_PIXELS)
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        processor_smart_resize(*resized, 28, MIN_PIXELS, MAX_PIXELS)


@pytest.mark.parametrize(
    "bounds,message",
    [((10**8, MAX_PIXELS), f"min_pixels 100000000 is above max_pixels {MAX_PIXELS}"), ((MIN_PIXELS, -5), "positive")],
)
def test_smart_resize_rejects_bounds_that_cannot_hold_an_image(bounds, message):
    with pytest.raises(ValueError, match=message):
        smart_resize(200, 300, min_pixels=bounds[0], max_pixels=bounds[1])


@pytest.mark.parametrize("width,height", [(700, 500), (100, 90), (1280, 720)])
def test_equal_min_and_max_pixels_bound_a_resize_as_the_processor_does(width, height):
    bounds = 28 * 28 * 64
    assert smart_resize(height, width, min_pixels=bounds, max_pixels=bounds) == processor_frame(
        width, height, bounds, bounds
    )


def test_model_frame_size_per_box_frame():
    assert model_frame_size((320, 240), BOX_FRAME_NORM1000, MIN_PIXELS, MAX_PIXELS) == (1000, 1000)
    assert model_frame_size((320, 240), BOX_FRAME_ABS, MIN_PIXELS, MAX_PIXELS) == (308, 252)
    with pytest.raises(ValueError, match="unknown box frame"):
        model_frame_size((320, 240), "relative", MIN_PIXELS, MAX_PIXELS)


def test_box_to_frame_scales_each_axis():
    assert box_to_frame((32, 24, 160, 120), (320, 240), (1000, 1000)) == [100, 100, 500, 500]
    assert box_to_frame((0, 0, 320, 240), (320, 240), (308, 252)) == [0, 0, 308, 252]
    assert box_to_frame((100, 60, 200, 120), (320, 240), (308, 252)) == [96, 63, 192, 126]


@settings(max_examples=20, deadline=None)
@given(width=st.integers(40, 1200), height=st.integers(40, 1200))
def test_images_resized_within_the_processor_bounds_are_kept_as_they_are(width, height):
    converter_bounds = (MIN_PIXELS, MAX_PIXELS // 2)
    assert resized_again_reason(converter_bounds, (MIN_PIXELS, MAX_PIXELS)) is None
    resized_h, resized_w = smart_resize(height, width, min_pixels=converter_bounds[0], max_pixels=converter_bounds[1])
    assert processor_frame(resized_w, resized_h, MIN_PIXELS, MAX_PIXELS) == (resized_h, resized_w)


def test_bounds_beyond_the_processor_are_named_and_do_move_the_frame():
    reason = resized_again_reason((MIN_PIXELS, MAX_PIXELS * 4), (MIN_PIXELS, MAX_PIXELS))
    assert "max_pixels 802816 is above the model processor's 200704" in reason and "model_path" in reason
    resized_h, resized_w = smart_resize(900, 700, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS * 4)
    assert processor_frame(resized_w, resized_h, MIN_PIXELS, MAX_PIXELS) != (resized_h, resized_w)
    assert "min_pixels 784 is below the model processor's 3136" in resized_again_reason((784, MAX_PIXELS), (MIN_PIXELS, MAX_PIXELS))
    assert resized_again_reason((MIN_PIXELS, MAX_PIXELS * 4), (None, None)) is None, "a processor without bounds"
    assert resized_again_reason((None, None), (MIN_PIXELS, MAX_PIXELS)) is None, "an image converted for no frame"


@pytest.mark.parametrize("patch_size", [14, 16])
@pytest.mark.parametrize("width,height", [(20, 46), (300, 170), (33, 500)])
def test_images_stating_no_bounds_resize_within_token_counts_of_the_models_patch(patch_size, width, height):
    """As qwen_vl_utils: 4 to 16384 tokens of (2 x patch)-pixel squares; Qwen3-VL's 32-pixel tokens set a
    higher floor than Qwen2.5-VL's 28."""
    factor = 2 * patch_size
    image = Image.fromarray(np.random.default_rng(width).integers(0, 255, (height, width, 3), dtype=np.uint8))
    processor = Qwen2VLImageProcessorPil(patch_size=patch_size, min_pixels=4 * factor**2, max_pixels=16384 * factor**2)
    grid = processor(images=[image], return_tensors="np")["image_grid_thw"][0]
    resized = model_input_image({"image": image}, patch_size)
    assert resized.size == (int(grid[2]) * patch_size, int(grid[1]) * patch_size)
    assert resized.width * resized.height >= 4 * factor**2


@pytest.mark.parametrize(
    "mode, transparent",
    [("RGBA", (0, 0, 0, 0)), ("LA", (0, 0)), ("P", 0), ("L", 0), ("RGB", (0, 0, 0))],
)
def test_transparent_pixels_reach_the_model_white_whatever_the_png_mode(mode, transparent):
    """An alpha channel, or a colour a PNG's tRNS chunk marks transparent, as a viewer shows it: on white."""
    image = Image.new(mode, (56, 56), transparent)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **({} if mode in ("RGBA", "LA") else {"transparency": transparent}))
    seen = model_input_image({"image": buffer.getvalue()}, image_patch_size=14)
    assert seen.mode == "RGB" and seen.getpixel((28, 28)) == (255, 255, 255)

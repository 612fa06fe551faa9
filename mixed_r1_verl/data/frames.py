"""Coordinate frames: the image size a model actually sees, and boxes expressed in it.

Qwen2.5-VL sees each image resized so both sides are multiples of 28 (patch 14 x merge 2) and the
pixel count lies in [min_pixels, max_pixels]; its boxes are absolute pixels of that resized image.
Qwen3-VL resizes to multiples of 32 (patch 16); it, Qwen2-VL and InternVL express boxes on a 0-1000
grid whatever the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Image tokens qwen_vl_utils bounds an image to when nothing overrides them; with Qwen2.5-VL's 28-pixel
# tokens, also the bounds of its image processor.
MIN_IMAGE_TOKENS = 4
MAX_IMAGE_TOKENS = 16384
DEFAULT_MIN_PIXELS = MIN_IMAGE_TOKENS * 28 * 28
DEFAULT_MAX_PIXELS = MAX_IMAGE_TOKENS * 28 * 28
MAX_ASPECT_RATIO = 200
# The Qwen-VL vision encoders merge 2x2 patches into one image token.
SPATIAL_MERGE_SIZE = 2

BOX_FRAME_ABS = "abs"
BOX_FRAME_NORM1000 = "norm1000"


@dataclass(frozen=True)
class ModelFamily:
    """How a model family sees images: the frame its grounding boxes are in, the side of its vision
    patches (images are resized to multiples of twice it) and the smallest image area its released
    image processors resize to."""

    box_frame: str
    patch_size: int = 14
    min_pixels: int = DEFAULT_MIN_PIXELS

    @property
    def resize_factor(self) -> int:
        return self.patch_size * SPATIAL_MERGE_SIZE


MODEL_FAMILIES = {
    "qwen2_5_vl": ModelFamily(BOX_FRAME_ABS),
    "qwen2_vl": ModelFamily(BOX_FRAME_NORM1000),
    "qwen3_vl": ModelFamily(BOX_FRAME_NORM1000, patch_size=16, min_pixels=256 * 256),
    # verl resizes InternVL's images with the default patch too, before the processor tiles them.
    "internvl": ModelFamily(BOX_FRAME_NORM1000),
}
# Checkpoints (config.json model_type) of a family under another name: Qwen3-VL's mixture-of-experts models.
MODEL_TYPE_FAMILY = {"qwen3_vl_moe": "qwen3_vl"}


def family_of_model_type(model_type: str | None) -> str | None:
    """The model family of a checkpoint's config.json model_type; None for a type of no known family."""
    family = MODEL_TYPE_FAMILY.get(model_type, model_type)
    return family if family in MODEL_FAMILIES else None


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """(height, width) the Qwen2-VL family resizes an image to: each side a multiple of `factor`,
    aspect ratio kept as closely as possible, area within [min_pixels, max_pixels] but for the rounding of
    the sides (with min_pixels close to max_pixels it may pass one: `area_outside_reason`). An image over
    MAX_ASPECT_RATIO is refused, and so is one whose resize is (a strip of 7200x40 resizes to 5992x28 at
    max_pixels=200704): the processor checks the image it is given, and the model's inputs are resized images."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    bounds_error = pixel_bounds_error(min_pixels, max_pixels)
    if bounds_error:
        raise ValueError(bounds_error)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio of {width}x{height} exceeds {MAX_ASPECT_RATIO}")
    resized_h = round(height / factor) * factor
    resized_w = round(width / factor) * factor
    if resized_h * resized_w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        resized_h = max(factor, math.floor(height / shrink / factor) * factor)
        resized_w = max(factor, math.floor(width / shrink / factor) * factor)
    elif resized_h * resized_w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        resized_h = math.ceil(height * grow / factor) * factor
        resized_w = math.ceil(width * grow / factor) * factor
    if max(resized_h, resized_w) / min(resized_h, resized_w) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"{width}x{height} resizes to {resized_w}x{resized_h}, whose aspect ratio exceeds {MAX_ASPECT_RATIO}"
        )
    return resized_h, resized_w


def area_outside_reason(width: int, height: int, bounds: tuple[int | None, int | None]) -> str | None:
    """Why an image processor resizing within `bounds` (None: not stated) would resize again an image already
    resized to `width` x `height` (multiples of its token): the area is outside them; None where it is not."""
    low, high = bounds
    area = width * height
    if (low is not None and area < low) or (high is not None and area > high):
        return (
            f"{width}x{height}, {area} pixels, is outside the [{low}, {high}] the model's image processor resizes "
            "within, which would resize it again"
        )
    return None


def stated_bounds(min_pixels: int | None, max_pixels: int | None, factor: int = 28) -> tuple[int, int]:
    """The (min_pixels, max_pixels) an image item's stated bounds give its resize to multiples of `factor`
    (None or 0: qwen_vl_utils' default, a number of `factor`-sided tokens)."""
    return min_pixels or MIN_IMAGE_TOKENS * factor**2, max_pixels or MAX_IMAGE_TOKENS * factor**2


def pixel_bounds_error(min_pixels: int, max_pixels: int) -> str | None:
    """Why [min_pixels, max_pixels] cannot bound an image's area; None when it can."""
    if min_pixels <= 0 or max_pixels <= 0:
        return f"min_pixels {min_pixels} and max_pixels {max_pixels} must be positive"
    if min_pixels > max_pixels:
        return f"min_pixels {min_pixels} is above max_pixels {max_pixels}"
    return None


def resized_again_reason(
    bounds: tuple[int | None, int | None], model_bounds: tuple[int | None, int | None]
) -> str | None:
    """Why an image processor with pixel bounds `model_bounds` (None: not stated) would resize again
    an image already resized within `bounds` (the converter's; None: the defaults), moving it out of
    the frame its boxes were written in; None when it keeps every such image as it is, or when the
    image states no bounds (it was not converted for a frame)."""
    if bounds == (None, None):
        return None
    low, high = bounds[0] or DEFAULT_MIN_PIXELS, bounds[1] or DEFAULT_MAX_PIXELS
    model_low, model_high = model_bounds
    reasons = []
    if model_high is not None and high > model_high:
        reasons.append(f"max_pixels {high} is above the model processor's {model_high}")
    if model_low is not None and low < model_low:
        reasons.append(f"min_pixels {low} is below the model processor's {model_low}")
    if not reasons:
        return None
    return (
        f"images resized within [{low}, {high}] pixels would be resized again by the model's image "
        f"processor ({'; '.join(reasons)}), out of the frame the grounding answers are in: prepare the "
        "data with model_path set to this model, or with min_pixels/max_pixels inside its bounds"
    )


def other_family_frame_reason(box_frame: str | None, model_family: str | None, grounding: bool = False) -> str | None:
    """Why data whose grounding boxes are in `box_frame` (extra_info.box_frame) cannot train or evaluate a
    model of `model_family` (its config's model_type), which answers in another frame; None when the
    frames agree or either is unknown. A `grounding` row without a frame cannot serve a model answering
    on the 0-1000 grid either: its box is scored as it stands, most likely in pixels."""
    model_frame = MODEL_FAMILIES[model_family].box_frame if model_family in MODEL_FAMILIES else None
    if model_frame == BOX_FRAME_NORM1000 and box_frame is None and grounding:
        return (
            f"it is a grounding row without extra_info.box_frame, so its box is scored as it stands, but "
            f"{model_family} models answer on the 0-1000 grid: convert the data with model_family={model_family} "
            "(mixed_r1_verl.data.prepare), or set extra_info.box_frame to norm1000 where its boxes are on that grid"
        )
    if model_frame is None or box_frame is None or box_frame == model_frame:
        return None
    return (
        f"it was converted for boxes in the {box_frame} frame (extra_info.box_frame), but {model_family} models "
        f"answer in the {model_frame} frame: convert the data again with model_family={model_family} "
        "(mixed_r1_verl.data.prepare)"
    )


def model_frame_size(image_size: tuple[int, int], box_frame: str, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """[width, height] of the frame the model's boxes live in for an image of `image_size` (w, h)."""
    if box_frame == BOX_FRAME_NORM1000:
        return 1000, 1000
    if box_frame == BOX_FRAME_ABS:
        width, height = image_size
        resized_h, resized_w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
        return resized_w, resized_h
    raise ValueError(f"unknown box frame {box_frame!r}")


def box_to_frame(
    box: tuple[float, float, float, float], image_size: tuple[int, int], frame_size: tuple[int, int]
) -> list[int]:
    """Scale an [x1, y1, x2, y2] box from original pixels of an image of `image_size` (w, h) into a
    frame of `frame_size` (w, h), rounded to whole units."""
    scale_x = frame_size[0] / image_size[0]
    scale_y = frame_size[1] / image_size[1]
    x1, y1, x2, y2 = box
    return [round(x1 * scale_x), round(y1 * scale_y), round(x2 * scale_x), round(y2 * scale_y)]


def format_box(box: list[int]) -> str:
    return "[" + ", ".join(str(v) for v in box) + "]"

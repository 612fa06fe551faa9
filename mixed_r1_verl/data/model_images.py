"""The images a model is given: a chat content item's image (PIL image, bytes or path) as RGB, resized
to the frame the Qwen2-VL family sees, exactly as qwen_vl_utils resizes it but with PIL alone (no
torchvision). Training (GRPO and SFT datasets), evaluation and the data engine all resize here."""

from __future__ import annotations

import io

from PIL import Image

from mixed_r1_verl.data.frames import SPATIAL_MERGE_SIZE, smart_resize, stated_bounds


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas composited onto white: an alpha channel's, and a colour a PNG marks
    transparent (its tRNS chunk, in a palette, grey or RGB image)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[3])
        return background
    return image.convert("RGB")


def open_content_image(item: dict) -> Image.Image:
    """The PIL image of a chat content item holding an image, bytes or a path."""
    source = item.get("image", item.get("bytes"))
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        return Image.open(io.BytesIO(source))
    if isinstance(source, str):
        return Image.open(source.removeprefix("file://"))
    raise ValueError(f"image content item holds no image, bytes or path (keys: {sorted(item)})")


def model_input_image(item: dict, image_patch_size: int) -> Image.Image:
    """The image resized to what the Qwen2-VL family sees: sides multiples of patch x merge size,
    area within the item's min/max pixels (defaults as qwen_vl_utils) but for the rounding of the sides."""
    image = to_rgb(open_content_image(item))
    width, height = image.size
    factor = image_patch_size * SPATIAL_MERGE_SIZE
    min_pixels, max_pixels = stated_bounds(item.get("min_pixels"), item.get("max_pixels"), factor)
    resized_h, resized_w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return image.resize((resized_w, resized_h), Image.Resampling.BICUBIC)

"""Image files referenced by records: confined to an image root, read once, sized from the header,
and as people see them: a file whose EXIF orientation turns it, or whose grey levels have 16 bits, is
re-encoded as shown, so every reader of the parquet (the converter, the dataset class, qwen_vl_utils,
vLLM) sees the same pixels."""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mixed_r1_verl.data.records import IMAGE_OUTSIDE_ROOT, MISSING_IMAGE, UNREADABLE_IMAGE, RecordError


@dataclass(frozen=True)
class ImageFile:
    path: str  # relative to the image root, as written in the record
    data: bytes  # the file's bytes, or a re-encoding as shown (EXIF-turned, 16-bit grey scaled)
    size: tuple[int, int]  # (width, height) of the image as shown


EXIF_ORIENTATION = 0x0112
TURNING_ORIENTATIONS = range(2, 9)  # 1 is upright; other values are invalid and ignored, as viewers do
# 16-bit greyscale (PNG, TIFF): converting it to RGB, as every model input path does, clips each level
# above 255 to white, so such files are scaled to 8 bits first.
SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def eight_bit_grey(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale image as 8-bit greyscale, its levels scaled from 0-65535 to 0-255."""
    levels = np.asarray(image).astype(np.uint32)
    return Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def displayed_image(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """The image's bytes and (width, height) as people see it. Files that need neither turning (EXIF
    orientation) nor scaling to 8 bits keep their bytes and are sized from the header (pixels not
    decoded); the others are decoded, turned and scaled, and re-encoded without the tag (JPEG at
    quality 95, other formats as PNG). PIL's decompression-bomb limit applies."""
    with Image.open(io.BytesIO(data)) as image:
        turns = image.getexif().get(EXIF_ORIENTATION) in TURNING_ORIENTATIONS
        sixteen_bit = image.mode in SIXTEEN_BIT_GREY_MODES
        if not (turns or sixteen_bit):
            return data, image.size
        shown = ImageOps.exif_transpose(image) if turns else image
        if sixteen_bit:
            shown = eight_bit_grey(shown)
        buffer = io.BytesIO()
        if image.format == "JPEG":
            shown.save(buffer, format="JPEG", quality=95)
        else:
            shown.save(buffer, format="PNG")
        return buffer.getvalue(), shown.size


class ImageStore:
    """Reads images under `root`; paths that are absolute or escape the root (also through
    symlinks) are refused. Recently read files are kept, since many rows share an image."""

    def __init__(self, root: str | os.PathLike, cache_size: int = 1024):
        self.root = Path(os.path.realpath(root))
        self.cache_size = cache_size
        self._cache: OrderedDict[str, ImageFile] = OrderedDict()

    def resolve(self, relative: str) -> Path:
        if os.path.isabs(relative):
            raise RecordError(IMAGE_OUTSIDE_ROOT, f"image path {relative!r} is absolute")
        resolved = Path(os.path.realpath(self.root / relative))
        if not resolved.is_relative_to(self.root):
            raise RecordError(IMAGE_OUTSIDE_ROOT, f"image {relative!r} resolves outside the image root")
        return resolved

    def load(self, relative: str) -> ImageFile:
        cached = self._cache.get(relative)
        if cached is not None:
            self._cache.move_to_end(relative)
            return cached
        path = self.resolve(relative)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RecordError(MISSING_IMAGE, f"image {relative!r} not found") from None
        except OSError as error:
            raise RecordError(UNREADABLE_IMAGE, f"image {relative!r}: {error.strerror or error}") from None
        try:
            data, size = displayed_image(data)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise RecordError(UNREADABLE_IMAGE, f"image {relative!r}: {error}") from None
        image = ImageFile(relative, data, size)
        self._cache[relative] = image
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return image

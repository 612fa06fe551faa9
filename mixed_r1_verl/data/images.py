"""Image files referenced by records: confined to an image root, read once, sized from the header,
and upright: a file whose EXIF orientation turns it is re-encoded as shown, so every reader of the
parquet (the converter, the dataset class, qwen_vl_utils, vLLM) sees the same pixels."""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from mixed_r1_verl.data.records import IMAGE_OUTSIDE_ROOT, MISSING_IMAGE, UNREADABLE_IMAGE, RecordError


@dataclass(frozen=True)
class ImageFile:
    path: str  # relative to the image root, as written in the record
    data: bytes  # the file's bytes, or an upright re-encoding when its EXIF orientation turns it
    size: tuple[int, int]  # (width, height) of the upright image


EXIF_ORIENTATION = 0x0112
TURNING_ORIENTATIONS = range(2, 9)  # 1 is upright; other values are invalid and ignored, as viewers do


def upright_image(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """The image's bytes and (width, height) as people see it. Files without a turning EXIF
    orientation keep their bytes and are sized from the header (pixels not decoded); the others are
    decoded, turned and re-encoded without the tag (JPEG at quality 95, other formats as PNG).
    PIL's decompression-bomb limit applies."""
    with Image.open(io.BytesIO(data)) as image:
        if image.getexif().get(EXIF_ORIENTATION) not in TURNING_ORIENTATIONS:
            return data, image.size
        turned = ImageOps.exif_transpose(image)
        buffer = io.BytesIO()
        if image.format == "JPEG":
            turned.save(buffer, format="JPEG", quality=95)
        else:
            turned.save(buffer, format="PNG")
        return buffer.getvalue(), turned.size


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
            data, size = upright_image(data)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise RecordError(UNREADABLE_IMAGE, f"image {relative!r}: {error}") from None
        image = ImageFile(relative, data, size)
        self._cache[relative] = image
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return image

"""Image files referenced by records: confined to an image root, read once, sized from the header."""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mixed_r1_verl.data.records import IMAGE_OUTSIDE_ROOT, MISSING_IMAGE, UNREADABLE_IMAGE, RecordError


@dataclass(frozen=True)
class ImageFile:
    path: str  # relative to the image root, as written in the record
    data: bytes  # the file's original bytes
    size: tuple[int, int]  # (width, height) in original pixels


def image_size_from_bytes(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header; the pixels are not decoded, and PIL's
    decompression-bomb limit applies."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


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
            size = image_size_from_bytes(data)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise RecordError(UNREADABLE_IMAGE, f"image {relative!r}: {error}") from None
        image = ImageFile(relative, data, size)
        self._cache[relative] = image
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return image

"""Images of records, files under an image root or bytes the row holds: files confined to the root and read
once, each image sized from the header, and as people see them: one whose EXIF orientation turns it, or
whose grey levels have 16 bits, is re-encoded as shown, so every reader of the parquet (the converter, the
dataset class, qwen_vl_utils, vLLM) sees the same pixels."""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mixed_r1_verl.data.records import (
    IMAGE_OUTSIDE_ROOT,
    MISSING_IMAGE,
    UNREADABLE_IMAGE,
    EmbeddedImage,
    RecordError,
    SpilledBytes,
    image_label,
)


@dataclass(frozen=True)
class ImageFile:
    # Relative to the image root, as written in the record; an embedded image's source path, or None.
    path: str | None
    data: bytes  # the file's bytes, or a re-encoding as shown (EXIF-turned, 16-bit grey scaled)
    size: tuple[int, int]  # (width, height) of the image as shown
    label: str = ""  # how messages name it (`records.image_label`)


EXIF_ORIENTATION = 0x0112
# How each EXIF orientation turns the stored pixels upright; 1 is upright, other values are invalid and ignored,
# as viewers do. Applied with `transpose`: PIL's `exif_transpose` also writes the EXIF block back, and raises on
# a tag of a type it cannot write, which cameras and editors leave in photos.
UPRIGHT_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# 16-bit greyscale (PNG, TIFF): converting it to RGB, as every model input path does, clips each level
# above 255 to white, so such files are scaled to 8 bits first.
SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# 32-bit integer and float pixels (TIFF depth maps) have no display range to scale from: RGB clips them.
UNSHOWN_MODES = {"I": "32-bit integer", "F": "32-bit float"}


def eight_bit_grey(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale image as 8-bit greyscale, its levels scaled from 0-65535 to 0-255."""
    levels = np.asarray(image).astype(np.uint32)
    return Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8), mode="L")


JPEG_START_OF_SCAN, JPEG_END_OF_IMAGE = 0xDA, 0xD9
# The marker that ends a scan's entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart marker
# (RST0-RST7, which belong to the data), nor another 0xFF (a fill byte before the marker).
JPEG_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_ends_its_scan(data: bytes) -> bool:
    """Whether a JPEG's scans reach its end-of-image marker, found by walking its segments by their lengths
    and each scan's entropy-coded data to the marker after it. A file cut short within its pixels has none:
    what PIL's decoder finds only by decoding them all (about 1 ms for a 640x480 photo; this is a byte
    search). An embedded thumbnail (in an APPn segment) holds a scan and an end-of-image marker of its own,
    and bytes after the end-of-image marker (a motion photo's video) may hold anything: neither is read."""
    position, scanned = 2, False  # after the start-of-image marker
    while 0 <= position and position + 2 <= len(data):
        marker = data[position + 1]
        if data[position] != 0xFF:  # stray bytes between segments, which decoders skip to the next marker
            position = data.find(b"\xff", position)
        elif marker == 0xFF:  # a fill byte before a marker
            position += 1
        elif marker == JPEG_END_OF_IMAGE:
            return scanned
        else:
            position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
            if marker == JPEG_START_OF_SCAN:
                scanned = True
                marker_after_scan = JPEG_MARKER_AFTER_SCAN.search(data, position)
                position = marker_after_scan.start() if marker_after_scan else -1
    return False


def check_whole(image: Image.Image, data: bytes) -> None:
    """Raises OSError for an image file cut short (an interrupted download), which would fail only when
    training loads it: a JPEG by its markers, any other format by decoding it."""
    if image.format != "JPEG":
        image.load()
    elif not jpeg_ends_its_scan(data):
        raise OSError("image file is truncated: no end-of-image marker after its last scan")


def displayed_image(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """The image's bytes and (width, height) as people see it. A file cut short (an interrupted download)
    fails here rather than when training loads it (`check_whole`). Files that need
    neither turning (EXIF orientation), nor scaling to 8 bits, nor leaving out an EXIF block PIL cannot
    parse keep their bytes; the others are turned and scaled and re-encoded without the tag (JPEG at
    quality 95, other formats as PNG). 32-bit pixels are refused. PIL's decompression-bomb limit applies."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode in UNSHOWN_MODES:
            raise ValueError(
                f"{UNSHOWN_MODES[image.mode]} pixels (PIL mode {image.mode}) have no range to show them in; "
                "save the image with 8 or 16 bits per channel"
            )
        check_whole(image, data)
        try:
            orientation, exif_readable = image.getexif().get(EXIF_ORIENTATION), True
        except SyntaxError:  # PIL's error for an EXIF block it cannot parse; viewers show the image upright
            orientation, exif_readable = None, False
        turn = UPRIGHT_TURNS.get(orientation)
        sixteen_bit = image.mode in SIXTEEN_BIT_GREY_MODES
        if exif_readable and not (turn or sixteen_bit):
            return data, image.size
        shown = image.transpose(turn) if turn else image
        if sixteen_bit:
            shown = eight_bit_grey(shown)
        buffer = io.BytesIO()
        if image.format == "JPEG":
            shown.save(buffer, format="JPEG", quality=95)
        else:
            shown.save(buffer, format="PNG")  # PNG keeps no EXIF of the source unless given one
        return buffer.getvalue(), shown.size


def shown_image(data: bytes, label: str) -> tuple[bytes, tuple[int, int]]:
    """`displayed_image`, an image that cannot be read being the row's reject, named by `label`."""
    try:
        return displayed_image(data)
    except UnidentifiedImageError:
        raise RecordError(UNREADABLE_IMAGE, f"{label}: not an image file of a format PIL reads") from None
    except Exception as error:
        # PIL raises many kinds for a broken file (SyntaxError for a damaged PNG chunk, struct.error for a
        # malformed EXIF tag): a file it cannot read is this row's reject, whatever the kind.
        raise RecordError(UNREADABLE_IMAGE, f"{label}: {error}") from None


def refuse_a_missing_image_root(image_root: str | os.PathLike | None, setting: str = "image_root") -> None:
    """Refuses, before any row is read, an image_root that is no directory (a typo, say): every row whose
    images are files would be rejected as missing_image."""
    if image_root is not None and not Path(image_root).is_dir():
        raise FileNotFoundError(f"{setting}={image_root}: no such directory")


class ImageStore:
    """Reads images under `root`; paths that are absolute or escape the root (also through
    symlinks) are refused, and all paths without a root (rows that embed their images need none).
    Recently read files are kept, since many rows share an image: up to `cache_size` of them and
    `cache_bytes` of their bytes (large photos would otherwise hold gigabytes)."""

    def __init__(self, root: str | os.PathLike | None, cache_size: int = 1024, cache_bytes: int = 256 << 20):
        self.root = Path(os.path.realpath(root)) if root is not None else None
        self.cache_size, self.cache_bytes = cache_size, cache_bytes
        self._cache: OrderedDict[str, ImageFile] = OrderedDict()
        self._cached_bytes = 0

    def resolve(self, relative: str) -> Path:
        if self.root is None:
            raise RecordError(MISSING_IMAGE, f"image {relative!r} is a file, and no image_root was given to read it in")
        if os.path.isabs(relative):
            raise RecordError(IMAGE_OUTSIDE_ROOT, f"image path {relative!r} is absolute")
        resolved = Path(os.path.realpath(self.root / relative))
        if not resolved.is_relative_to(self.root):
            raise RecordError(IMAGE_OUTSIDE_ROOT, f"image {relative!r} resolves outside the image root")
        return resolved

    def load(self, image: str | EmbeddedImage) -> ImageFile:
        """The image as shown: a file under the root (kept for later rows), or an embedded image's bytes."""
        if isinstance(image, EmbeddedImage):
            return ImageFile(image.name, *shown_image(image.read(), image_label(image)), image_label(image))
        return self.load_file(image)

    def load_file(self, relative: str) -> ImageFile:
        cached = self._cache.get(relative)
        if cached is not None:
            self._cache.move_to_end(relative)
            return cached
        path = self.resolve(relative)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RecordError(MISSING_IMAGE, f"image {relative!r} not found in {self.root}") from None
        except OSError as error:
            raise RecordError(UNREADABLE_IMAGE, f"image {relative!r}: {error.strerror or error}") from None
        image = ImageFile(relative, *shown_image(data, image_label(relative)), image_label(relative))
        self._cache[relative] = image
        self._cached_bytes += len(image.data)
        while len(self._cache) > self.cache_size or (self._cached_bytes > self.cache_bytes and len(self._cache) > 1):
            self._cached_bytes -= len(self._cache.popitem(last=False)[1].data)
        return image


class SpilledImages:
    """Embedded images kept on disk, each distinct image once, appended to one file: a reader of many rows
    then holds a place in that file per image instead of the bytes of every row it read."""

    def __init__(self, file: Path):
        self.file = file
        self._out = None
        self._places: dict[bytes, SpilledBytes] = {}

    def keep(self, image: str | EmbeddedImage) -> str | EmbeddedImage:
        """The image with its bytes moved to the file (files under the image root are left as they are)."""
        if not isinstance(image, EmbeddedImage) or not isinstance(image.data, bytes):
            return image
        return EmbeddedImage(self.keep_bytes(image.data), image.name)

    def keep_bytes(self, data: bytes) -> SpilledBytes:
        """Where `data` lies in the file, written there unless the same bytes already are."""
        digest = hashlib.sha256(data).digest()
        place = self._places.get(digest)
        if place is None:
            if self._out is None:
                self._out = open(self.file, "wb")
            place = self._places[digest] = SpilledBytes(self.file, self._out.tell(), len(data))
            self._out.write(data)
            self._out.flush()  # whole, and readable at once: an unbuffered write may write part of the bytes
        return place

    def remove(self) -> None:
        if self._out is not None:
            self._out.close()
        self.file.unlink(missing_ok=True)

"""Grounding reward: IoU between the first box in the answer and the ground-truth box.

Boxes are `[x1, y1, x2, y2]` in the frame the model sees (`abs`: pixels of the resized image,
`norm1000`: 0-1000). The answer's first box may be written `[x1, y1, x2, y2]`, `(x1, y1, x2, y2)`,
`(x1, y1), (x2, y2)` or as Qwen's `[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from numbers import Real

from .text import folded

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# No two `\s*` may share a run of whitespace: backtracking over how to split it costs time quadratic in its length.
_FLAT_LIST = re.compile(r"\[\s*(" + _NUM + r"(?:\s*,\s*" + _NUM + r")*)\s*(?:,\s*)?\]")
_POINT_PAIR = re.compile(
    r"\(\s*(" + _NUM + r")\s*,\s*(" + _NUM + r")\s*\)\s*(?:(?:,|-|to)\s*)?\(\s*(" + _NUM + r")\s*,\s*(" + _NUM + r")\s*\)"
)
# Four numbers in parentheses; parentheses around other counts are prose ("(2 of them)"), not a box.
_PARENTHESISED_BOX = re.compile(r"\(\s*(" + _NUM + r")" + (r"\s*,\s*(" + _NUM + r")") * 3 + r"\s*\)")
_LIST_SEPARATOR = re.compile(r"\s*,\s*")
_BOX_FORMS = (_FLAT_LIST, _PARENTHESISED_BOX, _POINT_PAIR)

NORM1000_FRAME = (1000.0, 1000.0)

Box = tuple[float, float, float, float]


def parse_first_box(answer: str) -> Box | None:
    """The first box written in the answer, or None if the first box-like group is not a valid box
    (wrong number of coordinates, non-finite, or x2 <= x1 or y2 <= y1). Full-width digits and commas and
    Unicode minus signs read as ASCII ones (`folded`)."""
    answer = folded(answer)
    found = [match for match in (pattern.search(answer) for pattern in _BOX_FORMS) if match]
    if not found:
        return None
    first = min(found, key=lambda match: match.start())
    coordinates = _LIST_SEPARATOR.split(first.group(1).strip()) if first.re is _FLAT_LIST else list(first.groups())
    if len(coordinates) != 4:
        return None
    return as_box([float(value) for value in coordinates])


def as_box(values: Sequence[float]) -> Box | None:
    """`values` as a box if it is four finite numbers with positive width and height."""
    if len(values) != 4 or not all(math.isfinite(value) for value in values):
        return None
    x1, y1, x2, y2 = values
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def frame_dimensions(frame_size) -> tuple[float, float]:
    """(width, height) of a `[width, height]` frame size; ValueError unless both are finite and positive."""
    try:
        width, height = (float(value) for value in frame_size)
    except (TypeError, ValueError):
        width = height = math.nan
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        raise ValueError(f"frame_size must be [width, height], two finite positive numbers; got {frame_size!r}")
    return width, height


def checked_iou_threshold(threshold) -> float | None:
    """`threshold` if it is None (continuous IoU) or a number in (0, 1]; else ValueError."""
    is_number = isinstance(threshold, Real) and not isinstance(threshold, bool)
    if threshold is not None and not (is_number and 0 < threshold <= 1):
        raise ValueError(f"iou_threshold must be a number in (0, 1], got {threshold!r}")
    return threshold


def clip_box(box: Box, frame: tuple[float, float]) -> Box | None:
    width, height = frame
    x1, y1, x2, y2 = box
    return as_box([min(max(x, 0.0), limit) for x, limit in ((x1, width), (y1, height), (x2, width), (y2, height))])


def scaled_below_one(first: Box, second: Box) -> tuple[Box, Box]:
    """Both boxes with x and y each scaled by the power of two that brings their largest magnitude on that
    axis below 1: IoU does not change (powers of two scale exactly, short of subnormal values) and no width
    or area overflows."""
    largest = [max(abs(box[i]) for box in (first, second) for i in (axis, axis + 2)) for axis in (0, 1)]
    exponents = [math.frexp(value)[1] for value in largest]
    scaled = [tuple(math.ldexp(value, -exponents[i % 2]) for i, value in enumerate(box)) for box in (first, second)]
    return scaled[0], scaled[1]


def iou(first: Box, second: Box) -> float:
    """Intersection over union, in [0, 1] for any finite boxes."""
    value = _iou_unless_overflow(first, second)
    if value is None:  # scaled, an overlap that still underflows is nothing beside the union
        value = _iou_unless_overflow(*scaled_below_one(first, second)) or 0.0
    return value


def _iou_unless_overflow(a: Box, b: Box) -> float | None:
    """IoU, or None when a width or area overflows or the overlap's area underflows (boxes near the float
    limits)."""
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    intersection = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    if intersection == 0 or not math.isfinite(union):
        return None
    return min(1.0, intersection / union) if union > 0 else 0.0


def parse_ground_truth_box(ground_truth) -> Box:
    """The ground-truth box from a `[x1, y1, x2, y2]` string or sequence; raises ValueError if invalid."""
    values = ground_truth
    if isinstance(ground_truth, str):
        values = [float(token) for token in _LIST_SEPARATOR.split(ground_truth.strip().strip("[]()").strip())]
    box = as_box([float(value) for value in values])
    if box is None:
        raise ValueError(f"invalid ground-truth box {ground_truth!r}")
    return box


def grounding_accuracy(
    answer: str,
    ground_truth,
    frame_size: Sequence[float] | None = None,
    iou_threshold: float | None = None,
) -> float:
    """IoU of the answer's first box with the ground truth (continuous), or, with `iou_threshold`,
    1.0 when the IoU reaches it. Both boxes are clipped to `frame_size` = (width, height) if known."""
    target = parse_ground_truth_box(ground_truth)
    frame = None if frame_size is None else frame_dimensions(frame_size)
    iou_threshold = checked_iou_threshold(iou_threshold)
    predicted = parse_first_box(answer)
    if predicted is None:
        return 0.0
    if frame is not None:
        predicted = clip_box(predicted, frame)
        target = clip_box(target, frame)
        if predicted is None or target is None:
            return 0.0
    overlap = iou(predicted, target)
    if iou_threshold is not None:
        return 1.0 if overlap >= iou_threshold else 0.0
    return overlap

"""Grounding reward: IoU between the first box in the answer and the ground-truth box.

Boxes are `[x1, y1, x2, y2]` in the frame the model sees (`abs`: pixels of the resized image,
`norm1000`: 0-1000). The answer's first box may be written `[x1, y1, x2, y2]`, `(x1, y1), (x2, y2)`
or as Qwen's `[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_FLAT_LIST = re.compile(r"\[\s*(" + _NUM + r"(?:\s*,\s*" + _NUM + r")*)\s*,?\s*\]")
_POINT_PAIR = re.compile(
    r"\(\s*(" + _NUM + r")\s*,\s*(" + _NUM + r")\s*\)\s*(?:,|-|to)?\s*\(\s*(" + _NUM + r")\s*,\s*(" + _NUM + r")\s*\)"
)
_LIST_SEPARATOR = re.compile(r"\s*,\s*")

NORM1000_FRAME = (1000.0, 1000.0)

Box = tuple[float, float, float, float]


def parse_first_box(answer: str) -> Box | None:
    """The first box written in the answer, or None if the first box-like group is not a valid box
    (wrong number of coordinates, non-finite, or x2 <= x1 or y2 <= y1)."""
    flat = _FLAT_LIST.search(answer)
    pair = _POINT_PAIR.search(answer)
    if flat and (pair is None or flat.start() <= pair.start()):
        coordinates = _LIST_SEPARATOR.split(flat.group(1).strip())
    elif pair:
        coordinates = list(pair.groups())
    else:
        return None
    if len(coordinates) != 4:
        return None
    return as_box([float(value) for value in coordinates])


def as_box(values: Sequence[float]) -> Box | None:
    """`values` as a box if it is four finite numbers with positive width and height."""
    if len(values) != 4 or not all(math.isfinite(value) for value in values):
        return None
    x1, y1, x2, y2 = values
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def clip_box(box: Box, frame_size: Sequence[float]) -> Box | None:
    width, height = frame_size
    x1, y1, x2, y2 = box
    return as_box([min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)])


def iou(first: Box, second: Box) -> float:
    inter_w = min(first[2], second[2]) - max(first[0], second[0])
    inter_h = min(first[3], second[3]) - max(first[1], second[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    intersection = inter_w * inter_h
    union = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
    return intersection / (union - intersection)


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
    predicted = parse_first_box(answer)
    if predicted is None:
        return 0.0
    if frame_size is not None:
        predicted = clip_box(predicted, frame_size)
        target = clip_box(target, frame_size)
        if predicted is None or target is None:
            return 0.0
    overlap = iou(predicted, target)
    if iou_threshold is not None:
        return 1.0 if overlap >= iou_threshold else 0.0
    return overlap

"""Held-out records in verl's parquet layout, validated up front so a bad row fails with its id."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from mixed_r1_verl.data.frames import other_family_frame_reason
from mixed_r1_verl.data.images import SpilledImages
from mixed_r1_verl.data.records import IMAGE_PLACEHOLDER, SpilledBytes, parquet_rows
from mixed_r1_verl.rewards.scoring import known_task, missing_ground_truth

REQUIRED_COLUMNS = ("prompt", "data_source", "reward_model", "extra_info")
RECORDS_PER_BATCH = 256


class RecordError(ValueError):
    """A parquet row that cannot be evaluated; the message names the file, row and id."""


@dataclass
class EvalRecord:
    id: str
    data_source: str
    task: str  # as the reward resolves it: extra_info.task, else the data_source's; "" where it knows none
    prompt: list[dict]
    ground_truth: object
    extra_info: dict
    image_blobs: list[dict] = field(default_factory=list)
    source: str = ""

    def image_items(self) -> list[dict]:
        """The record's images as generation image items: bytes or a readable path, with the
        converter's resize bounds."""
        return [_image_item(blob, self) for blob in self.image_blobs]


def _image_item(blob: Mapping, record: EvalRecord) -> dict:
    bounds = {key: blob[key] for key in ("min_pixels", "max_pixels") if blob.get(key)}
    data = blob.get("bytes")
    if data:
        return {"bytes": data.read() if isinstance(data, SpilledBytes) else data, **bounds}
    if blob.get("path"):
        path = Path(blob["path"])
        if not path.is_absolute():
            path = Path(record.source).parent / path
        if path.exists():
            return {"image": str(path), **bounds}
    raise RecordError(f"{record.source}: record {record.id!r}: image has neither bytes nor a readable path")


def _placeholder_count(prompt: Sequence[Mapping]) -> int:
    return sum(str(message.get("content", "")).count(IMAGE_PLACEHOLDER) for message in prompt)


def _struct_field(row: Mapping, column: str, expected: str, where: str) -> dict:
    """The row's struct column as a dict ({} when null); RecordError when it holds something else."""
    value = row.get(column)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        got = f"{type(value).__name__} {value!r:.80}"
        raise RecordError(f"{where}: {column} must be a struct with {expected}, got {got}")
    return dict(value)


def _record_from_row(row: Mapping, position: int, source: str, keep_bytes: Callable[[bytes], object]) -> EvalRecord:
    where = f"{source}: row {position}"
    extra_info = _struct_field(row, "extra_info", "id and task", where)
    record_id = extra_info.get("id")
    if record_id is None or str(record_id) == "":
        raise RecordError(f"{where}: extra_info.id is missing")
    where = f"{where} (id {record_id!r})"
    reward_model = _struct_field(row, "reward_model", "ground_truth", where)
    missing = missing_ground_truth(reward_model.get("ground_truth"))
    if missing:
        raise RecordError(f"{where}: {missing} (reward_model.ground_truth)")
    prompt = list(row.get("prompt") or [])
    if not prompt or not all(isinstance(message, Mapping) and "role" in message for message in prompt):
        raise RecordError(f"{where}: prompt must be a non-empty chat list of {{role, content}} messages")
    image_blobs = list(row.get("images") or [])
    if _placeholder_count(prompt) != len(image_blobs):
        raise RecordError(
            f"{where}: {_placeholder_count(prompt)} {IMAGE_PLACEHOLDER} placeholder(s) but {len(image_blobs)} image(s)"
        )
    image_blobs = [_with_bytes_kept(blob, keep_bytes) for blob in image_blobs]
    data_source = str(row["data_source"])
    return EvalRecord(
        id=str(record_id),
        data_source=data_source,
        task=known_task(data_source, extra_info) or "",
        prompt=[dict(message) for message in prompt],
        ground_truth=reward_model["ground_truth"],
        extra_info=extra_info,
        image_blobs=image_blobs,
        source=source,
    )


def _with_bytes_kept(blob, keep_bytes: Callable[[bytes], object]):
    if not isinstance(blob, Mapping) or not blob.get("bytes"):
        return blob
    return {**blob, "bytes": keep_bytes(blob["bytes"])}


def _bytes_dropped(data: bytes) -> None:
    return None


def load_records(
    paths: Sequence[str | Path],
    limit: int | None = None,
    spilled: SpilledImages | None = None,
    without_image_bytes: bool = False,
) -> list[EvalRecord]:
    """All rows of the given parquet files, in order, up to `limit`; ids must be unique across files. Read
    a batch of rows at a time. With `spilled`, the records hold where their images' bytes went in its file
    (read back per generation batch) instead of the bytes; `without_image_bytes`, neither (to score saved
    generations: images counted, not read)."""
    if without_image_bytes:
        keep_bytes = _bytes_dropped
    else:
        keep_bytes = spilled.keep_bytes if spilled is not None else lambda data: data
    records: list[EvalRecord] = []
    seen: dict[str, str] = {}
    for path in paths:
        missing = [column for column in REQUIRED_COLUMNS if column not in pq.read_schema(path).names]
        if missing:
            raise RecordError(f"{path}: missing column(s) {missing}; expected verl's layout {list(REQUIRED_COLUMNS)}")
        for position, row in enumerate(parquet_rows(path, RECORDS_PER_BATCH)):
            record = _record_from_row(row, position, str(path), keep_bytes)
            if record.id in seen:
                raise RecordError(f"{path}: row {position}: id {record.id!r} already used in {seen[record.id]}")
            seen[record.id] = str(path)
            records.append(record)
            if limit is not None and len(records) >= limit:
                return records
    return records


def data_ids(paths: Sequence[str | Path]) -> set[str]:
    """The extra_info ids of every row of the given parquet files (rows past a `limit` included), read
    without decoding the other columns."""
    ids: set[str] = set()
    for path in paths:
        for extra_info in pq.read_table(path, columns=["extra_info"]).column("extra_info").to_pylist():
            if isinstance(extra_info, Mapping) and extra_info.get("id") is not None:
                ids.add(str(extra_info["id"]))
    return ids


def refuse_records_of_another_frame(records: Sequence[EvalRecord], model_family: str | None) -> None:
    """Raises RecordError naming the first record whose extra_info.box_frame is not the frame a
    `model_family` model answers in, or that is a grounding record without one for a model answering on
    the 0-1000 grid: its grounding answers would be scored in the wrong frame."""
    for record in records:
        grounding = known_task(record.data_source, record.extra_info) == "grounding"
        reason = other_family_frame_reason(record.extra_info.get("box_frame"), model_family, grounding)
        if reason:
            raise RecordError(f"{record.source}: record {record.id!r}: {reason}")

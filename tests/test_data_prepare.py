import io
import os
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_helpers import read_jsonl, rows_with_embedded_images, run_module

from mixed_r1_verl.data import records
from mixed_r1_verl.data.frames import smart_resize
from mixed_r1_verl.data.images import ImageStore, shown_image
from mixed_r1_verl.data.model_images import model_input_image
from mixed_r1_verl.data.prepare import PrepareConfig, SplitWriter, prepare, split_of
from mixed_r1_verl.data.synthetic import write_synthetic_dataset


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height: a decompression bomb as far as the header goes."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then IHDR length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def bad_rows(image_root: Path, outside: Path) -> list[tuple[dict, str]]:
    (image_root / "broken.png").write_bytes(b"not an image at all")
    (image_root / "bomb.png").write_bytes(png_with_claimed_size(40000, 40000))
    outside.write_bytes((image_root / "grounding" / "000000.png").read_bytes())
    (image_root / "escape.png").symlink_to(outside)
    base = {
        "task": "chart",
        "data_source": "bad",
        "images": ["chart/000000.png"],
        "problem": "<image>Q?",
        "answer": "3",
    }
    box = {"task": "grounding", "images": ["grounding/000000.png"], "problem": "Where?"}
    return [
        ({**base, "id": "b-missing", "images": ["chart/nope.png"]}, records.MISSING_IMAGE),
        ({**base, "id": "b-broken", "images": ["broken.png"]}, records.UNREADABLE_IMAGE),
        ({**base, "id": "b-bomb", "images": ["bomb.png"]}, records.UNREADABLE_IMAGE),
        ({**base, "id": "b-dotdot", "images": ["../outside.png"]}, records.IMAGE_OUTSIDE_ROOT),
        ({**base, "id": "b-absolute", "images": [str(outside)]}, records.IMAGE_OUTSIDE_ROOT),
        ({**base, "id": "b-symlink", "images": ["escape.png"]}, records.IMAGE_OUTSIDE_ROOT),
        ({**base, "id": "b-placeholders", "problem": "<image><image>Q?"}, records.PLACEHOLDER_MISMATCH),
        ({**base, "id": "b-empty", "answer": ""}, records.EMPTY_ANSWER),
        ({**base, "id": "b-task", "task": "ocr"}, records.UNKNOWN_TASK),
        ({**base, **box, "id": "b-box", "answer": "[1, 2, 3]"}, records.BAD_BOX),
        ({**base, **box, "id": "b-flat", "answer": "[10, 20, 10, 40]"}, records.DEGENERATE_BOX),
        ({**base, **box, "id": "b-outside", "answer": "[10, 20, 400, 40]"}, records.BOX_OUTSIDE_IMAGE),
        (
            {**base, "id": "b-letter", "task": "matching", "answer": "E", "options": ["a", "b"]},
            records.ANSWER_NOT_AN_OPTION,
        ),
        ({**base, "id": "b-nan", "answer": float("nan")}, records.NON_FINITE_ANSWER),
        ({**base, "id": "b-inf", "answer": float("-inf")}, records.NON_FINITE_ANSWER),
        ({**base, "id": "chart-000001"}, records.DUPLICATE_ID),
    ]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    jsonl, image_root = write_synthetic_dataset(root / "src", rows_per_task=6, seed=3)
    expected_rejects = bad_rows(image_root, root / "src" / "outside.png")
    with open(jsonl, "a") as out:
        for row, _ in expected_rejects:
            out.write(json.dumps(row) + "\n")
        out.write("{truncated\n")
    config = PrepareConfig(
        input=str(jsonl),
        image_root=str(image_root),
        output_dir=str(root / "out"),
        val_ratio=0.25,
        seed=1,
        min_pixels=3136,
        max_pixels=28 * 28 * 64,
        progress=False,
    )
    summary = prepare(config)
    return config, summary, expected_rejects, image_root


def read_rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_every_row_is_written_or_rejected_with_its_reason(converted):
    config, summary, expected_rejects, _ = converted
    out = Path(config.output_dir)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r["reason"] for r in rejects}
    assert by_id == {
        **{row["id"]: reason for row, reason in expected_rejects},
        f"row-{24 + len(expected_rejects) + 1}": records.BAD_RECORD,
    }
    assert summary["rows_in"] == 24 + len(expected_rejects) + 1
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_rejected"]
    assert summary["rows_written"] == 24
    assert sum(summary["rejects_by_reason"].values()) == len(rejects)
    assert sum(sum(reasons.values()) for reasons in summary["rejects_by_task"].values()) == len(rejects)
    assert summary["rejects_by_task"]["unknown"] == {records.BAD_RECORD: 1, records.UNKNOWN_TASK: 1}
    assert json.loads((out / "summary.json").read_text()) == summary
    train, val = read_rows(out / "train.parquet"), read_rows(out / "val.parquet")
    assert len(train) + len(val) == 24 and val
    for task, counts in summary["per_task"].items():
        assert counts["train"] == sum(r["extra_info"]["task"] == task for r in train)
        assert counts["val"] == sum(r["extra_info"]["task"] == task for r in val)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial")]


def test_rows_follow_verls_multimodal_layout(converted):
    config, _, _, image_root = converted
    rows = read_rows(Path(config.output_dir) / "train.parquet")
    assert [r["extra_info"]["index"] for r in rows] == list(range(len(rows)))
    for row in rows:
        info = row["extra_info"]
        assert row["ability"] == info["task"] and row["reward_model"]["style"] == "rule"
        content = row["prompt"][-1]["content"]
        assert content.count("<image>") == len(row["images"]) == 1
        assert "<think>" in content and "<answer>" in content
        image = row["images"][0]
        assert image["bytes"] == (image_root / image["path"]).read_bytes()
        width, height = Image.open(io.BytesIO(image["bytes"])).size
        assert info["image_size"] == [width, height]
        resized_h, resized_w = smart_resize(height, width, min_pixels=3136, max_pixels=28 * 28 * 64)
        assert info["frame_size"] == [resized_w, resized_h] and info["box_frame"] == "abs"
        assert (image["min_pixels"], image["max_pixels"]) == (3136, 28 * 28 * 64)
        if info["task"] == "matching" and info["options"]:
            assert "Options:\nA. " in content and row["reward_model"]["ground_truth"] in "ABCD"
            assert "Answer with the letter of the correct option." in content
            assert "single word or phrase" not in content
        elif info["task"] == "matching":
            assert "Options:" not in content and "Answer with a single word or phrase." in content
    matching = [bool(r["extra_info"]["options"]) for r in rows if r["extra_info"]["task"] == "matching"]
    assert set(matching) == {True, False}  # multiple-choice and free-text matching rows both checked


def test_grounding_truth_is_in_the_resized_frame(converted):
    config, _, _, _ = converted
    source = {}
    for line in Path(config.input).read_text().splitlines():
        row = json.loads(line) if line.startswith('{"') else None
        if row and row["task"] == "grounding":
            source[row["id"]] = json.loads(row["answer"])
    rows = read_rows(Path(config.output_dir) / "train.parquet") + read_rows(Path(config.output_dir) / "val.parquet")
    grounding = [r for r in rows if r["extra_info"]["task"] == "grounding"]
    assert len(grounding) == 6
    for row in grounding:
        info = row["extra_info"]
        sx = info["frame_size"][0] / info["image_size"][0]
        sy = info["frame_size"][1] / info["image_size"][1]
        x1, y1, x2, y2 = source[info["id"]]
        assert json.loads(row["reward_model"]["ground_truth"]) == [
            round(x1 * sx),
            round(y1 * sy),
            round(x2 * sx),
            round(y2 * sy),
        ]
        w, h = info["frame_size"]
        assert f"{w}x{h}" in row["prompt"][-1]["content"]


def test_split_is_seeded_and_order_independent():
    ids = [f"row-{i}" for i in range(2000)]
    val = {i for i in ids if split_of(i, 0, 0.1) == "val"}
    assert 120 < len(val) < 280
    assert val == {i for i in reversed(ids) if split_of(i, 0, 0.1) == "val"}
    assert val != {i for i in ids if split_of(i, 1, 0.1) == "val"}


def test_norm1000_family_and_cli(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=5, val_rows_per_task=0)
    out = tmp_path / "out"
    help_text = run_module("mixed_r1_verl.data.prepare", "--help")
    assert "model_family" in help_text and "val_ratio" in help_text
    run_module(
        "mixed_r1_verl.data.prepare",
        f"input={jsonl}",
        f"image_root={image_root}",
        f"output_dir={out}",
        "model_family=internvl",
        "val_ratio=0",
        "progress=false",
    )
    rows = read_rows(out / "train.parquet")
    assert len(rows) == 8 and not (out / "val.parquet").exists()
    for row in rows:
        assert row["extra_info"]["frame_size"] == [1000, 1000] and row["extra_info"]["box_frame"] == "norm1000"
    box_row = next(r for r in rows if r["extra_info"]["task"] == "grounding")
    source = {json.loads(line)["id"]: json.loads(line) for line in jsonl.read_text().splitlines()}
    x1, y1, x2, y2 = json.loads(source[box_row["extra_info"]["id"]]["answer"])
    w, h = box_row["extra_info"]["image_size"]
    exact = [x1 * 1000 / w, y1 * 1000 / h, x2 * 1000 / w, y2 * 1000 / h]
    box = json.loads(box_row["reward_model"]["ground_truth"])
    # Each coordinate is its exact value rounded to a whole unit (either way on a tie such as 112.5).
    assert all(isinstance(v, int) and abs(v - e) <= 0.5 for v, e in zip(box, exact, strict=True)), (box, exact)
    assert "normalised to 0-1000" in box_row["prompt"][-1]["content"]


def parquet_broken_after(rows: list[dict], path: Path, readable_rows: int) -> None:
    """`rows` as parquet whose row groups after the first `readable_rows` rows cannot be read."""
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=readable_rows, compression="none")
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    data[column.data_page_offset : column.data_page_offset + column.total_compressed_size] = b"\xff" * 16
    path.write_bytes(bytes(data))


def test_failed_run_leaves_no_output_files(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=5)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows = [{**row, "id": f"{row['id']}-{copy}"} for copy in range(140) for row in rows]
    source = tmp_path / "rows.parquet"
    parquet_broken_after(rows, source, readable_rows=1024)  # the reader's batch: 1024 rows convert, then it fails
    out_dir = tmp_path / "out"
    config = PrepareConfig(input=str(source), image_root=str(image_root), output_dir=str(out_dir), progress=False)
    with pytest.raises(OSError, match="page header"):
        prepare(config)
    assert list(out_dir.iterdir()) == []


def test_bad_bytes_and_strings_are_rejects_naming_their_row(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=5, val_rows_per_task=0)
    chart = {"task": "chart", "data_source": "d", "images": ["chart/000000.png"], "problem": "Q?", "answer": "3"}
    with open(jsonl, "ab") as out:
        out.write(b'{"id": "latin-1", "problem": "caf\xe9"}\n')  # invalid UTF-8 halfway through the stream
        out.write(json.dumps({**chart, "id": "surrogate", "problem": "\ud800?"}).encode() + b"\n")
        out.write(json.dumps({**chart, "id": "nul", "images": ["chart/0\x00.png"]}).encode() + b"\n")
        image_struct = {"bytes": None, "path": "\ud800.png"}
        out.write(json.dumps({**chart, "id": "surrogate-path", "images": [image_struct]}).encode() + b"\n")
        huge_box = [1, 1, 10**400, 5]  # an integer beyond any float
        grounding = {**chart, "id": "huge-box", "task": "grounding", "answer": huge_box}
        out.write(json.dumps(grounding).encode() + b"\n")
        for record_id in ({"k": 1}, ["l"], 5.0, True):
            out.write(json.dumps({**chart, "id": record_id}).encode() + b"\n")
    out = tmp_path / "out"
    summary = prepare(
        PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(out), val_ratio=0, progress=False)
    )
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in rejects] == [
        (9, records.BAD_RECORD), (10, records.BAD_RECORD), (11, records.BAD_RECORD), (12, records.BAD_RECORD),
        (13, records.BAD_BOX), *[(row, records.BAD_RECORD) for row in range(14, 18)],
    ]  # fmt: skip
    assert [r["id"] for r in rejects[:5]] == ["row-9", "surrogate", "nul", "surrogate-path", "huge-box"]
    assert "line 9 is not valid UTF-8: byte 0xe9" in rejects[0]["detail"]
    assert "lone surrogate" in rejects[1]["detail"] and "NUL" in rejects[2]["detail"]
    assert "field 'images.path' holds a lone surrogate" in rejects[3]["detail"]
    assert "not a finite number" in rejects[4]["detail"]
    for reject, given in zip(rejects[5:], ["dict {'k': 1}", "list ['l']", "float 5.0", "bool True"]):
        assert f"field 'id' must be a string or a whole number, got {given}" in reject["detail"]
    assert summary["rows_written"] == 8 and len(read_rows(out / "train.parquet")) == 8


def test_image_tokens_outside_the_problem_are_rejects_not_a_model_error(tmp_path, tiny_model_dir):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5, val_rows_per_task=0)
    chart = {"task": "chart", "data_source": "d", "images": ["chart/000000.png"], "problem": "Q?", "answer": "3"}
    bad = [
        {**chart, "id": "in-option", "task": "matching", "answer": "A", "options": ["<image>", "b"]},
        {**chart, "id": "in-rationale", "rationale": "compare with <image>"},
        {**chart, "id": "image-pad", "problem": "<image>What is <|image_pad|>?"},
    ]
    with open(jsonl, "a") as out:
        out.write("".join(json.dumps(row) + "\n" for row in bad))
    out = tmp_path / "out"
    settings = dict(input=str(jsonl), image_root=str(image_root), output_dir=str(out), val_ratio=0, progress=False)
    summary = prepare(PrepareConfig(**settings, model_path=str(tiny_model_dir)))
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejects] == [(row["id"], records.IMAGE_TOKEN_IN_TEXT) for row in bad]
    assert summary["rows_written"] == 4
    with pytest.raises(ValueError, match="system_prompt holds '<image>'"):
        prepare(PrepareConfig(**settings, model_path=str(tiny_model_dir), system_prompt="Look at <image>."))
    with pytest.raises(ValueError, match="prompt_template holds '<IMG_CONTEXT>'"):
        prepare(PrepareConfig(**settings, prompt_template="<IMG_CONTEXT>{problem}"))


def test_video_and_audio_tags_in_a_prompt_are_rejects_not_a_training_error(tmp_path):
    """verl's dataset takes one of a row's videos or audio clips for each such tag, and converted rows have none."""
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5, val_rows_per_task=0)
    chart = {"task": "chart", "data_source": "d", "images": ["chart/000000.png"], "problem": "Q?", "answer": "3"}
    bad = [
        {**chart, "id": "video", "problem": "<image>Which HTML tag embeds a clip, <video> or <img>?"},
        {**chart, "id": "audio", "task": "matching", "answer": "A", "options": ["<audio>", "<img>"]},
    ]
    kept = {**chart, "id": "in-rationale", "rationale": "A page embeds a clip with <video>."}
    with open(jsonl, "a") as out:
        out.write("".join(json.dumps(row) + "\n" for row in [*bad, kept]))
    out = tmp_path / "out"
    settings = dict(input=str(jsonl), image_root=str(image_root), output_dir=str(out), val_ratio=0, progress=False)
    summary = prepare(PrepareConfig(**settings))
    rejects = read_jsonl(out / "rejects.jsonl")
    assert [(r["id"], r["reason"]) for r in rejects] == [("video", records.MEDIA_TAG_IN_TEXT),
                                                         ("audio", records.MEDIA_TAG_IN_TEXT)]  # fmt: skip
    assert rejects[0]["detail"].startswith("problem holds '<video>': verl's dataset reads '<video>' as the place")
    assert rejects[1]["detail"].startswith("option A holds '<audio>'")
    assert summary["rows_written"] == 5
    assert "in-rationale" in [row["extra_info"]["id"] for row in read_rows(out / "sft_train.parquet")]
    with pytest.raises(ValueError, match="system_prompt holds '<video>': verl's dataset reads"):
        prepare(PrepareConfig(**settings, system_prompt="Describe the <video> tag."))


@pytest.mark.parametrize(
    "setting, template, message",
    [
        ("prompt_template", "{instruction} {format_instruction}",
         "prompt_template places {problem} 0 times: once, since it holds the row's <image>"),
        ("prompt_template", "{problem}\n{problem}\n{format_instruction}", "places {problem} 2 times"),
        ("prompt_template", '{problem} Reply as {"value": 1}',
         'uses {"value"}; its fields are {problem}, {options}, {instruction}'),
        ("prompt_template", "{problem} {hint}", "uses {hint}; its fields are"),
        ("prompt_template", "{problem} }", "is no format string: Single '}' encountered"),
        ("problem_template", "Question: {question}", "problem_template uses {question}; its field is {problem}"),
        ("problem_template", "Q: {problem} {problem}", "problem_template places {problem} 2 times"),
        ("problem_template", "Answer briefly.", "problem_template places {problem} 0 times"),
        ("problem_template", "{problem} {options}", "problem_template uses {options}; its field is {problem}"),
        ("problem_template", "{problem", "problem_template '{problem' is no format string"),
    ],
)  # fmt: skip
def test_a_template_that_would_miscount_a_rows_images_stops_the_conversion_first(tmp_path, setting, template, message):
    """The problem holds the row's <image> placeholders: placed twice or not at all, every prompt would hold
    another number of them than the row has images."""
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=0)
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare(PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(tmp_path / "out"),
                              progress=False, **{setting: template}))  # fmt: skip
    assert not (tmp_path / "out" / "train.parquet").exists()


def test_blank_splits_and_rationales_of_a_table_count_as_absent(tmp_path):
    """A table's empty cells (pandas' fillna("")) leave the row to the seeded split and out of the SFT files."""
    _, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5)
    chart = {"task": "chart", "data_source": "d", "images": ["chart/000000.png"], "problem": "Q?"}
    rows = [{**chart, "id": "blank", "answer": "3", "split": "", "rationale": ""},
            {**chart, "id": "spaces", "answer": "5", "split": "  ", "rationale": " \n"},
            {**chart, "id": "pinned", "answer": "4", "split": "val", "rationale": "The bar reads 4."}]  # fmt: skip
    source = tmp_path / "table.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    out = tmp_path / "out"
    summary = prepare(PrepareConfig(input=str(source), image_root=str(image_root), output_dir=str(out), val_ratio=0,
                                    progress=False))  # fmt: skip
    assert (summary["rows_written"], summary["rows_rejected"]) == (3, 0)
    assert summary["per_split"] == {"train": 2, "val": 1} and summary["sft_rows"] == {"train": 0, "val": 1}
    assert [row["extra_info"]["id"] for row in read_rows(out / "sft_val.parquet")] == ["pinned"]


def parquet_without_answers(path: Path, image_root: Path) -> None:
    import pyarrow as pa

    rows = {"id": ["a", "b"], "task": ["chart", "chart"], "data_source": ["s", "s"],
            "images": [["chart/000000.png"]] * 2, "problem": ["Q?", "Q?"]}  # fmt: skip
    pq.write_table(pa.table(rows), path)


def test_all_rows_rejected_stops_with_the_reasons_and_keeps_rejects(tmp_path):
    from mixed_r1_verl.data.prepare import NoRowsWrittenError

    _, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5)
    source = tmp_path / "no_answers.parquet"
    parquet_without_answers(source, image_root)
    out = tmp_path / "out"
    config = PrepareConfig(input=str(source), image_root=str(image_root), output_dir=str(out), progress=False)
    with pytest.raises(NoRowsWrittenError, match=r"all 2 rows were rejected \(empty_answer: 2\).*row 1 \(id 'a'\)"):
        prepare(config)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"], r["detail"]) for r in rejects] == [
        ("a", records.EMPTY_ANSWER, "answer is missing"),
        ("b", records.EMPTY_ANSWER, "answer is missing"),
    ]
    assert sorted(p.name for p in out.iterdir()) == ["rejects.jsonl"]


def test_cli_reports_a_conversion_that_writes_nothing_without_a_traceback(tmp_path):
    import subprocess
    import sys

    from data_helpers import checkout_env

    _, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5)
    source = tmp_path / "no_answers.parquet"
    parquet_without_answers(source, image_root)
    out = tmp_path / "out"
    settings = [f"input={source}", f"image_root={image_root}", f"output_dir={out}", "progress=false"]
    done = subprocess.run([sys.executable, "-m", "mixed_r1_verl.data.prepare", *settings], env=checkout_env(),
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "all 2 rows were rejected (empty_answer: 2)" in done.stderr and str(out / "rejects.jsonl") in done.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    done = subprocess.run([sys.executable, "-m", "mixed_r1_verl.data.prepare", *settings, f"input={empty}"],
                          env=checkout_env(), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1 and done.stderr.strip() == (
        f"NoRowsWrittenError: {empty} holds no rows; the outputs of an earlier conversion in {out} (rejects.jsonl) "
        "were removed, as they are not this input's"
    )


def test_a_missing_image_root_is_refused_before_any_row_is_read_and_a_missing_image_names_the_root(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5)
    out = tmp_path / "out"
    settings = dict(input=str(jsonl), output_dir=str(out), val_ratio=0, progress=False)
    misspelled = tmp_path / "src" / "imagez"
    with pytest.raises(FileNotFoundError) as refused:
        prepare(PrepareConfig(image_root=str(misspelled), **settings))
    assert str(refused.value) == f"image_root={misspelled}: no such directory"
    assert not out.exists(), "refused before anything is read or written"

    (image_root / "chart" / "000000.png").unlink()
    prepare(PrepareConfig(image_root=str(image_root), **settings))
    assert [(reject["reason"], reject["detail"]) for reject in read_jsonl(out / "rejects.jsonl")] == [
        (records.MISSING_IMAGE, f"image 'chart/000000.png' not found in {os.path.realpath(image_root)}")
    ]


@pytest.mark.parametrize(
    "bounds, message",
    [
        ({"min_pixels": 0}, "min_pixels=0: expected a positive number of pixels"),
        ({"max_pixels": 0}, "max_pixels=0: expected a positive number of pixels"),
        ({"min_pixels": -5}, "min_pixels=-5: expected a positive number of pixels"),
        ({"min_pixels": 4096, "max_pixels": 3136}, "min_pixels 4096 exceeds max_pixels 3136"),
    ],
)
def test_pixel_bounds_that_cannot_bound_a_resize_are_refused_before_any_row_is_read(tmp_path, bounds, message):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5)
    out = tmp_path / "out"
    settings = dict(input=str(jsonl), image_root=str(image_root), output_dir=str(out), val_ratio=0, progress=False)
    with pytest.raises(ValueError) as refused:
        prepare(PrepareConfig(**settings, **bounds))
    assert str(refused.value) == message
    assert not out.exists(), "refused before anything is read or written"


def test_missing_settings_and_unknown_family_fail_clearly(tmp_path):
    from mixed_r1_verl.settings import parse_settings

    with pytest.raises(SystemExit, match="input, output_dir"):
        parse_settings(PrepareConfig, ["image_root=x"])
    with pytest.raises(ValueError, match="unknown model_family"):
        prepare(PrepareConfig(input="x", image_root=str(tmp_path), output_dir=str(tmp_path), model_family="llava"))


def test_text_settings_keep_their_value_as_written_and_typed_settings_their_type(tmp_path, monkeypatch):
    """YAML would read `0712` as the octal 458 and `on` as true; a text setting is the text given."""
    from mixed_r1_verl.data.engine import EngineConfig
    from mixed_r1_verl.data.prepare import main
    from mixed_r1_verl.export import ExportConfig
    from mixed_r1_verl.settings import parse_settings

    exported = parse_settings(ExportConfig, ["checkpoint=on", "out_dir=0712"])
    assert (exported.checkpoint, exported.out_dir) == ("on", "0712")
    for text in ("run #1", " padded ", "a: b", "a=b", "[x]", "{y}", "'quoted' too"):
        assert parse_settings(ExportConfig, ["checkpoint=c", f"out_dir={text}"]).out_dir == text
    assert parse_settings(ExportConfig, ["checkpoint=c", 'out_dir="x #1"']).out_dir == "x #1"
    engine = parse_settings(EngineConfig, [
        "input=x", "output_dir=2024_01", "difficulty.model_path=1.10", "problem_template={problem} Answer:",
        "system_prompt='Look, then answer.'", "box_format=null", "seed=007", "progress=off", "val_ratio=1e-1",
        "difficulty.k=4", "balance.targets={chart: 2}", "columns.options=[A,B]",
    ])  # fmt: skip
    assert (engine.output_dir, engine.difficulty.model_path, engine.problem_template, engine.system_prompt) == (
        "2024_01", "1.10", "{problem} Answer:", "Look, then answer."
    )
    assert (engine.box_format, engine.seed, engine.progress, engine.val_ratio, engine.difficulty.k) == (
        None, 7, False, 0.1, 4
    )
    assert engine.balance.targets == {"chart": 2} and engine.columns == {"options": ["A", "B"]}

    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5)
    monkeypatch.chdir(tmp_path)
    main([f"input={jsonl}", f"image_root={image_root}", "output_dir=0712", "val_ratio=0", "progress=false"])
    assert (tmp_path / "0712" / "train.parquet").is_file() and not (tmp_path / "458").exists()


def test_a_model_path_of_another_family_is_refused_before_any_row_is_written(
    tmp_path, tiny_model_dir, tiny_internvl_dir, tiny_qwen3vl_dir
):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5, val_rows_per_task=0)
    for model_dir, family, expected in (
        (tiny_internvl_dir, "qwen2_5_vl", "internvl"),
        (tiny_model_dir, "internvl", "qwen2_5_vl"),
        # Both answer in 0-1000, but Qwen3-VL's images resize to multiples of 32 pixels, not 28.
        (tiny_qwen3vl_dir, "internvl", "qwen3_vl"),
    ):
        out = tmp_path / f"out_{family}_{expected}"
        settings = PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(out), model_path=str(model_dir),
                                 model_family=family, val_ratio=0.0, progress=False)  # fmt: skip
        refusal = f"holds a {expected} checkpoint, but model_family={family}.*set model_family={expected}"
        with pytest.raises(ValueError, match=refusal):
            prepare(settings)
        assert not (out / "train.parquet").exists()
        prepare(PrepareConfig(**{**vars(settings), "model_family": expected}))
        assert (out / "train.parquet").exists()


def test_a_qwen3vl_moe_checkpoint_is_of_the_qwen3vl_family(tmp_path, tiny_qwen3vl_dir):
    model = shutil.copytree(tiny_qwen3vl_dir, tmp_path / "moe")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "qwen3_vl_moe"}))
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5, val_rows_per_task=0)
    settings = PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(tmp_path / "out"),
                             model_path=str(model), val_ratio=0.0, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="holds a qwen3_vl_moe checkpoint, but model_family=qwen2_5_vl.*set model_family=qwen3_vl"):
        prepare(settings)
    prepare(PrepareConfig(**{**vars(settings), "model_family": "qwen3_vl"}))
    assert len(read_rows(tmp_path / "out" / "train.parquet")) == 4


def test_qwen3vl_rows_are_resized_within_its_processors_bounds_to_multiples_of_32(tmp_path):
    """Without model_path: Qwen3-VL's released processors' min_pixels (65536) and the 1280-token image budget
    of 32-pixel tokens; its boxes are on the 0-1000 grid."""
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5, val_rows_per_task=0)
    prepare(PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(tmp_path / "out"),
                          model_family="qwen3_vl", val_ratio=0.0, progress=False))  # fmt: skip
    rows = read_rows(tmp_path / "out" / "train.parquet")
    assert {(image["min_pixels"], image["max_pixels"]) for row in rows for image in row["images"]} == {
        (65536, 1280 * 32 * 32)
    }
    assert {row["extra_info"]["box_frame"] for row in rows} == {"norm1000"}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["model_family"], summary["min_pixels"], summary["max_pixels"]) == ("qwen3_vl", 65536, 1310720)


def exif_rotated_photo(path: Path) -> None:
    """A 400x200 JPEG stored sideways with EXIF orientation 6: shown upright it is 200x400. A red
    patch at stored x 300-380, y 20-100 appears upright at x 99-179, y 300-380."""
    stored = Image.new("RGB", (400, 200), (0, 0, 0))
    stored.paste((255, 0, 0), (300, 20, 380, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, format="JPEG", quality=95, exif=exif)


def test_exif_turned_photos_are_written_upright_with_boxes_in_the_upright_frame(tmp_path):
    image_root = tmp_path / "images"
    image_root.mkdir()
    exif_rotated_photo(image_root / "sideways.jpg")
    Image.new("RGB", (64, 48), (0, 0, 255)).save(image_root / "plain.jpg", format="JPEG")
    rows = [
        {"id": "photo", "task": "grounding", "data_source": "d", "images": ["sideways.jpg"],
         "problem": "Where is the red patch?", "answer": "[100, 300, 180, 380]"},
        {"id": "plain", "task": "chart", "data_source": "d", "images": ["plain.jpg"], "problem": "Q", "answer": "1"},
    ]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    summary = prepare(
        PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(out), val_ratio=0, progress=False)
    )
    assert summary["rows_written"] == 2, (out / "rejects.jsonl").read_text()
    written = {row["extra_info"]["id"]: row for row in read_rows(out / "train.parquet")}
    photo = written["photo"]
    assert photo["extra_info"]["image_size"] == [200, 400]
    width, height = photo["extra_info"]["frame_size"]
    assert height > width
    with Image.open(io.BytesIO(photo["images"][0]["bytes"])) as decoded:
        assert decoded.size == (200, 400) and decoded.getexif().get(0x0112) is None
        red, green, blue = decoded.convert("RGB").getpixel((140, 340))
        assert red > 200 and green < 60 and blue < 60
    assert written["plain"]["images"][0]["bytes"] == (image_root / "plain.jpg").read_bytes()
    # The training dataset's resize (shared by evaluation and the data engine) lands on the same frame.
    assert list(model_input_image(photo["images"][0], image_patch_size=14).size) == [width, height]


def test_a_photo_to_turn_whose_exif_holds_a_tag_of_an_odd_type_is_turned_upright():
    """Cameras and editors leave tags PIL cannot write back (Compression stored as text, here); turning the
    photo must not need to."""
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 270 degrees
    exif[0x010F] = "camera"
    buffer = io.BytesIO()
    Image.new("RGB", (60, 40), (0, 0, 255)).save(buffer, format="JPEG", exif=exif)
    make_as_text, compression_as_text = b"\x01\x0f\x00\x02", b"\x01\x03\x00\x02"
    assert buffer.getvalue().count(make_as_text) == 1
    data, size = shown_image(buffer.getvalue().replace(make_as_text, compression_as_text), "photo.jpg")
    assert size == (40, 60)
    with Image.open(io.BytesIO(data)) as shown:
        assert shown.size == (40, 60)


def test_sixteen_bit_grey_images_reach_the_model_with_their_grey_levels(tmp_path):
    image_root = tmp_path / "images"
    image_root.mkdir()
    # A 16-bit greyscale PNG whose left half is black and right half mid-grey (level 32896 of 65535).
    levels = [[0] * 32 + [32896] * 32 for _ in range(48)]
    Image.fromarray(numpy.array(levels, dtype=numpy.uint16)).save(image_root / "depth.png")
    assert Image.open(image_root / "depth.png").mode == "I;16"
    row = {"id": "depth", "task": "chart", "data_source": "d", "images": ["depth.png"], "problem": "Q", "answer": "1"}
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps(row) + "\n")
    out = tmp_path / "out"
    prepare(PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(out), val_ratio=0, progress=False))
    (written,) = read_rows(out / "train.parquet")
    assert written["extra_info"]["image_size"] == [64, 48]
    seen = model_input_image(written["images"][0], image_patch_size=14)
    width, height = seen.size
    assert seen.getpixel((width // 8, height // 2)) == (0, 0, 0)
    assert seen.getpixel((width * 7 // 8, height // 2)) == (128, 128, 128)  # not clipped to white


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_images_that_would_fail_or_show_otherwise_in_training_are_rejects_or_rewritten(tmp_path):
    """Every image is decoded whole at conversion: a JPEG cut short is a reject here, not an error hours into
    training. A PNG whose EXIF block PIL cannot parse keeps its pixels, written without that block; a PNG with
    a damaged chunk and 32-bit pixels, which RGB clips, are rejects naming why. No row stops the others."""
    image_root = tmp_path / "images"
    image_root.mkdir()
    noise = numpy.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=numpy.uint8)
    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(noise).save(jpeg, format="JPEG")
    Image.fromarray(noise).save(png, format="PNG")
    (image_root / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    header = 33  # the signature and the IHDR chunk
    png_bytes = png.getvalue()
    junk_exif = png_bytes[:header] + png_chunk(b"eXIf", b"junkjunk") + png_bytes[header:]
    (image_root / "junk_exif.png").write_bytes(junk_exif)
    (image_root / "damaged.png").write_bytes(png_bytes[:header] + b"\0\0\0\4" + b"\1bad" + png_bytes[header + 8 :])
    depth = numpy.arange(48 * 64, dtype=numpy.int32).reshape(48, 64) * 1000
    Image.fromarray(depth).save(image_root / "depth32.tif")
    Image.fromarray(depth.astype(numpy.float32)).save(image_root / "depthf.tif")
    names = ["cut.jpg", "junk_exif.png", "damaged.png", "depth32.tif", "depthf.tif"]
    rows = [{"id": name, "task": "chart", "data_source": "d", "images": [name], "problem": "Q", "answer": "1"}
            for name in names]  # fmt: skip
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    prepare(
        PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(out), val_ratio=0, progress=False)
    )

    (written,) = read_rows(out / "train.parquet")
    assert written["extra_info"]["id"] == "junk_exif.png"
    with Image.open(io.BytesIO(written["images"][0]["bytes"])) as decoded:
        assert dict(decoded.getexif()) == {}
        assert numpy.array_equal(numpy.asarray(decoded.convert("RGB")), noise)
    rejects = {reject["id"]: reject for reject in read_jsonl(out / "rejects.jsonl")}
    assert sorted(rejects) == sorted(set(names) - {"junk_exif.png"})
    assert {reject["reason"] for reject in rejects.values()} == {records.UNREADABLE_IMAGE}
    assert "image file is truncated" in rejects["cut.jpg"]["detail"]
    assert "32-bit integer pixels (PIL mode I)" in rejects["depth32.tif"]["detail"]
    assert "32-bit float pixels (PIL mode F)" in rejects["depthf.tif"]["detail"]
    assert "save the image with 8 or 16 bits per channel" in rejects["depthf.tif"]["detail"]


def test_a_rejected_rows_id_is_left_to_a_later_row(tmp_path):
    """A row rejected for its missing image takes no id: a later row with that id is written, and one after
    that is its duplicate."""
    image_root = tmp_path / "images"
    image_root.mkdir()
    Image.new("RGB", (64, 48)).save(image_root / "a.png")
    row = {"id": "q1", "task": "chart", "data_source": "d", "images": ["a.png"], "problem": "Q?", "answer": "1"}
    rows = [{**row, "images": ["missing.png"]}, row, {**row, "answer": "2"}]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    prepare(
        PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(out), val_ratio=0, progress=False)
    )
    assert [row["reward_model"]["ground_truth"] for row in read_rows(out / "train.parquet")] == ["1"]
    rejects = read_jsonl(out / "rejects.jsonl")
    assert [(reject["row"], reject["reason"]) for reject in rejects] == [
        (1, records.MISSING_IMAGE), (3, records.DUPLICATE_ID)
    ]  # fmt: skip
    assert rejects[1]["detail"] == "id 'q1' appeared earlier in the input, at row 2"


def test_a_whole_jpeg_with_stray_bytes_between_its_segments_is_kept():
    """Decoders skip bytes that are no marker between segments (libjpeg warns of "extraneous bytes")."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    after_app0 = 4 + int.from_bytes(data[4:6], "big")
    padded = data[:after_app0] + b"\x00\x00" + data[after_app0:]
    with Image.open(io.BytesIO(padded)) as decoded:
        decoded.load()
    assert shown_image(padded, "photo.jpg")[0] == padded


def test_a_whole_jpeg_with_bytes_after_its_end_marker_is_kept():
    """Motion photos (Pixel, Samsung) append a video after the JPEG's end-of-image marker; PIL decodes the JPEG
    whole, whatever markers the video's bytes hold."""
    buffer = io.BytesIO()
    Image.fromarray(numpy.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=numpy.uint8)).save(buffer, "JPEG")
    video = b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 4 + b"\xff\xda\0\x08" + b"\1" * 64  # a scan, no end
    motion_photo = buffer.getvalue() + video
    with Image.open(io.BytesIO(motion_photo)) as decoded:
        decoded.load()
    assert shown_image(motion_photo, "motion.jpg")[0] == motion_photo


@pytest.mark.parametrize(
    "progressive, thumbnail, restarts", [(False, False, 0), (True, False, 0), (False, True, 0), (True, False, 1)]
)
def test_a_jpeg_passes_conversion_only_when_its_pixels_decode_whole(progressive, thumbnail, restarts):
    """JPEGs are checked by their markers, not decoded: cut anywhere, a file that passes decodes in training,
    also one that embeds a whole JPEG thumbnail (with its own scan and end marker) before its own scan, and one
    with a restart marker after every block within its scans."""
    photo = numpy.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=numpy.uint8)
    exif = Image.Exif()
    exif[0x010F] = "camera"
    buffer = io.BytesIO()
    Image.fromarray(photo).save(
        buffer, format="JPEG", progressive=progressive, exif=exif, restart_marker_blocks=restarts
    )
    data = buffer.getvalue()
    if thumbnail:
        small = io.BytesIO()
        Image.fromarray(photo).resize((16, 12)).save(small, format="JPEG")
        segment = b"\xff\xe2" + (len(small.getvalue()) + 2).to_bytes(2, "big") + small.getvalue()
        data = data[:2] + segment + data[2:]
    passed = 0
    for cut in range(1, len(data) + 1, 1 if thumbnail else 7):
        try:
            shown_image(data[:cut], "photo.jpg")
        except records.RecordError as error:
            assert error.reason == records.UNREADABLE_IMAGE
            continue
        passed += 1
        with Image.open(io.BytesIO(data[:cut])) as decoded:
            decoded.load()
    assert passed <= 2, "only a cut within the final marker's bytes or after them keeps the pixels whole"
    assert shown_image(data, "photo.jpg")[0] == data


def test_normalized_boxes_are_rejected_as_pixels_and_scaled_with_box_units(tmp_path):
    image_root = tmp_path / "images"
    image_root.mkdir()
    Image.new("RGB", (300, 200)).save(image_root / "a.png")
    box = {"task": "grounding", "data_source": "d", "images": ["a.png"], "problem": "Where is it?"}
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(
        json.dumps({**box, "id": "fractions", "answer": [0.12, 0.25, 0.88, 0.95]}) + "\n"
        + json.dumps({**box, "id": "pixels", "answer": "[36, 50, 264, 190]"}) + "\n"
    )  # fmt: skip

    def truths(out: str, **settings) -> dict:
        prepare(PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(tmp_path / out),
                              val_ratio=0, progress=False, **settings))  # fmt: skip
        rows = read_rows(tmp_path / out / "train.parquet")
        return {row["extra_info"]["id"]: row["reward_model"]["ground_truth"] for row in rows}

    as_pixels = truths("as_pixels")
    assert list(as_pixels) == ["pixels"]
    reject = json.loads((tmp_path / "as_pixels" / "rejects.jsonl").read_text())
    assert (reject["id"], reject["reason"]) == ("fractions", records.BOX_LOOKS_NORMALIZED)
    assert "within 0-1 on the 300x200 image" in reject["detail"] and "box_units=normalized" in reject["detail"]
    under_a_pixel = {**box, "id": "under-a-pixel", "answer": "[0, 0, 0.003, 0.004]"}  # 0.9 x 0.8 pixels
    jsonl.write_text(jsonl.read_text().splitlines()[0] + "\n" + json.dumps(under_a_pixel) + "\n")
    assert truths("as_fractions", box_units="normalized") == {"fractions": as_pixels["pixels"]}
    reject = json.loads((tmp_path / "as_fractions" / "rejects.jsonl").read_text())
    assert (reject["id"], reject["reason"]) == ("under-a-pixel", records.DEGENERATE_BOX)
    assert reject["detail"] == "box [0, 0, 0.003, 0.004] covers less than the first pixel of the 300x200 image"
    with pytest.raises(ValueError, match="box_units must be one of pixels, normalized"):
        truths("typo", box_units="percent")


@pytest.mark.parametrize("model_family", ["qwen2_5_vl", "internvl"])
def test_boxes_on_the_0_1000_grid_are_scaled_to_the_images_pixels_with_box_units_norm1000(tmp_path, model_family):
    image_root = tmp_path / "images"
    image_root.mkdir()
    Image.new("RGB", (1280, 960)).save(image_root / "a.png")
    box = {"task": "grounding", "data_source": "d", "images": ["a.png"], "problem": "Where is it?"}

    def truth(name: str, answer, **settings) -> str:
        source = tmp_path / f"{name}.jsonl"
        source.write_text(json.dumps({**box, "id": name, "answer": answer}) + "\n")
        prepare(PrepareConfig(input=str(source), image_root=str(image_root), output_dir=str(tmp_path / name),
                              model_family=model_family, val_ratio=0, progress=False, **settings))  # fmt: skip
        return read_rows(tmp_path / name / "train.parquet")[0]["reward_model"]["ground_truth"]

    on_the_grid = truth("grid", [100, 100, 400, 400], box_units="norm1000")
    assert on_the_grid == truth("pixels", [128, 96, 512, 384])
    if model_family == "internvl":  # its frame is the same grid
        assert on_the_grid == "[100, 100, 400, 400]"


@pytest.mark.parametrize("box_units,bbox", [("pixels", [30, 40, 150, 120]), ("normalized", [0.1, 0.2, 0.5, 0.6])])
def test_xywh_boxes_as_strings_and_lists_give_the_same_ground_truth(tmp_path, box_units, bbox):
    image_root = tmp_path / "images"
    image_root.mkdir()
    Image.new("RGB", (300, 200)).save(image_root / "a.png")
    rows = [{"sent_id": "list", "file_name": "a.png", "sent": "the cat", "bbox": bbox},
            {"sent_id": "string", "file_name": "a.png", "sent": "the cat", "bbox": json.dumps(bbox)}]  # fmt: skip
    jsonl = tmp_path / "refs.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    prepare(PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(tmp_path / "out"),
                          layout="refcoco", box_units=box_units, val_ratio=0, progress=False))  # fmt: skip
    written = read_rows(tmp_path / "out" / "train.parquet")
    truths = {row["extra_info"]["id"]: json.loads(row["reward_model"]["ground_truth"]) for row in written}
    x1, y1, x2, y2 = truths["list"]
    width, height = written[0]["extra_info"]["frame_size"]
    assert truths["string"] == truths["list"]
    assert (x1, y1, x2, y2) == (round(30 * width / 300), round(40 * height / 200),
                                round(180 * width / 300), round(160 * height / 200))  # fmt: skip


def test_fields_the_mapping_does_not_read_are_listed_in_the_summary(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=5, val_rows_per_task=0)
    chart = {"task": "chart", "data_source": "d", "images": ["chart/000000.png"], "problem": "Q?", "answer": "3"}
    with open(jsonl, "a") as out:
        out.write(json.dumps({**chart, "id": "typo", "task": "matching", "answer": "A", "option": ["a", "b"]}) + "\n")
        out.write(json.dumps({**chart, "id": "extra-1", "source_url": "x"}) + "\n")
        out.write(json.dumps({**chart, "id": "extra-2", "source_url": "y"}) + "\n")
    settings = dict(input=str(jsonl), image_root=str(image_root), val_ratio=0, progress=False)
    summary = prepare(PrepareConfig(**settings, output_dir=str(tmp_path / "out")))
    assert summary["ignored_fields"] == {
        "source_url": {"rows": 2},
        "option": {"rows": 1, "hint": "did you mean 'options'?"},
    }
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["ignored_fields"] == summary["ignored_fields"]
    # Mapped fields are read; a field a constant replaces is not.
    remapped = prepare(PrepareConfig(**settings, output_dir=str(tmp_path / "remapped"),
                                     columns={"rationale": "source_url"},
                                     constants={"data_source": "fixed"}))  # fmt: skip
    assert {name: entry["rows"] for name, entry in remapped["ignored_fields"].items()} == {
        "data_source": 11, "rationale": 8, "option": 1,
    }  # fmt: skip


def test_a_mapped_column_that_no_row_holds_stops_the_conversion_naming_the_closest_key(tmp_path):
    from mixed_r1_verl.data.prepare import MappedColumnNotFoundError

    _, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5)
    rows = [{"id": f"q{i}", "image": "chart/000000.png", "question": "Which animal?", "choices": ["cat", "dog"],
             "A": "cat", "B": "dog", "answer": "B", "why": "It barks." if i == 2 else None} for i in range(3)]
    source = tmp_path / "animals.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    out = tmp_path / "out"
    settings = dict(input=str(source), image_root=str(image_root), output_dir=str(out), val_ratio=0, progress=False,
                    constants={"task": "matching", "data_source": "animals"})  # fmt: skip
    mapped = {"images": "image", "problem": "question", "rationale": "why"}  # `why`: in one row, enough
    for options, hint in [("choice", "did you mean 'choices'?"),
                          ("A,B,C,D", "the keys of the rows the mapping does not read: A, B, choices")]:  # fmt: skip
        with pytest.raises(MappedColumnNotFoundError) as caught:
            prepare(PrepareConfig(**settings, columns={**mapped, "options": options}))
        message = f"{source}: columns.options reads {options!r}, which none of the 3 rows holds; {hint}"
        assert str(caught.value) == message
        assert not out.exists() or sorted(path.name for path in out.iterdir()) == []
    with pytest.raises(MappedColumnNotFoundError, match=re.escape("columns.options reads ['a', 'b'], which none")):
        prepare(PrepareConfig(**settings, columns={**mapped, "options": ["a", "b"]}))
    for options in ("choices", ["A", "B", "C"]):  # options mapped one per option: one of them is enough
        summary = prepare(PrepareConfig(**settings, columns={**mapped, "options": options}))
        assert (summary["rows_written"], summary["sft_rows"]["train"]) == (3, 1)


def test_a_layouts_column_that_no_row_holds_stops_the_conversion_naming_the_layout(tmp_path):
    """ChartQA as published on the Hub holds its image in `image`, not in the `imgname` of the layout."""
    from mixed_r1_verl.data.prepare import MappedColumnNotFoundError

    _, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5)
    rows = [{"image": "chart/000000.png", "query": f"What is bar {bar}?", "label": str(bar)} for bar in range(3)]
    source = tmp_path / "chartqa.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    settings = dict(input=str(source), image_root=str(image_root), output_dir=str(tmp_path / "out"), val_ratio=0,
                    layout="chartqa", progress=False)  # fmt: skip
    with pytest.raises(MappedColumnNotFoundError) as caught:
        prepare(PrepareConfig(**settings))
    assert str(caught.value) == (
        f"{source}: columns.images (layout=chartqa) reads 'imgname', which none of the 3 rows holds; did you mean "
        "'image'?"
    )
    assert prepare(PrepareConfig(**settings, columns={"images": "image"}))["rows_written"] == 3
    without_ids = prepare(PrepareConfig(**{**settings, "layout": "llava", "output_dir": str(tmp_path / "llava")},
                                        columns={"problem": "query", "answer": "label"}, constants={"task": "chart"}))
    assert without_ids["rows_written"] == 3, "the llava layout's id is not required"


def test_a_stopped_conversion_removes_an_earlier_conversions_outputs_from_its_directory(tmp_path):
    """Run again into the same directory, a conversion a check stops leaves this run's rejects.jsonl only,
    never beside the train.parquet and summary.json of another input."""
    from mixed_r1_verl.data.prepare import MappedColumnNotFoundError, NoRowsWrittenError

    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=5)
    out = tmp_path / "out"
    settings = dict(input=str(jsonl), image_root=str(image_root), output_dir=str(out), progress=False)
    prepare(PrepareConfig(**settings))
    earlier = sorted(path.name for path in out.iterdir())
    assert {"train.parquet", "val.parquet", "summary.json"} <= set(earlier)
    with pytest.raises(MappedColumnNotFoundError) as caught:
        prepare(PrepareConfig(**settings, columns={"rationale": "why"}))
    assert str(caught.value).endswith(
        f"; the outputs of an earlier conversion in {out} ({', '.join(name for name in earlier)}) were removed, "
        "as they are not this input's"
    )
    assert list(out.iterdir()) == []
    prepare(PrepareConfig(**settings))
    (tmp_path / "elsewhere").mkdir()
    elsewhere = {**settings, "image_root": str(tmp_path / "elsewhere")}
    with pytest.raises(NoRowsWrittenError, match="rows were rejected") as caught:
        prepare(PrepareConfig(**elsewhere))
    assert "were removed" in str(caught.value)
    assert [path.name for path in out.iterdir()] == ["rejects.jsonl"]
    with pytest.raises(NoRowsWrittenError) as caught:  # nothing earlier: the message is the check's alone
        prepare(PrepareConfig(**elsewhere))
    assert "were removed" not in str(caught.value)


def test_an_input_that_is_one_of_the_outputs_is_refused_and_kept(tmp_path):
    """Raw records in data/train.parquet converted into data/ would be replaced by the output, or removed
    with the earlier outputs when a check stops the conversion."""
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5)
    data = tmp_path / "data"
    data.mkdir()
    raw = data / "train.parquet"
    pq.write_table(pa.Table.from_pylist(read_jsonl(jsonl)), raw)
    before = raw.read_bytes()
    with pytest.raises(ValueError, match=re.escape(f"input {raw} is the train.parquet this conversion writes in "
                                                   f"output_dir={data}: give another output_dir")):  # fmt: skip
        prepare(PrepareConfig(input=str(raw), image_root=str(image_root), output_dir=str(tmp_path / "." / "data"),
                              columns={"rationale": "why"}, progress=False))  # fmt: skip
    assert raw.read_bytes() == before and [path.name for path in data.iterdir()] == ["train.parquet"]


def test_list_items_past_those_a_mapping_reads_are_listed_in_the_summary(tmp_path):
    """The llava layout reads a conversation's first question and answer: a row's later turns are not
    converted, and the summary counts the rows that have them."""
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5, val_rows_per_task=0)
    image = read_jsonl(jsonl)[0]["images"][0]
    turns = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red."},
             {"from": "human", "value": "How many?"}, {"from": "gpt", "value": "Two."}]  # fmt: skip
    rows = [{"id": "two-turns", "image": image, "conversations": turns},
            {"id": "one-turn", "image": image, "conversations": turns[:2]}]  # fmt: skip
    source = tmp_path / "llava.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = prepare(PrepareConfig(
        input=str(source), image_root=str(image_root), output_dir=str(tmp_path / "out"), layout="llava",
        constants={"task": "open_ended"}, val_ratio=0, progress=False,
    ))  # fmt: skip
    assert summary["rows_written"] == 2
    assert summary["ignored_fields"] == {"conversations.2+": {"rows": 1}}


def test_a_row_whose_list_ends_before_the_item_a_mapping_reads_is_rejected_and_the_rest_converted(tmp_path):
    """The llava layout reads the answer from conversations.1: a conversation of only the human turn has none."""
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5, val_rows_per_task=0)
    image = read_jsonl(jsonl)[0]["images"][0]
    turns = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red."}]
    rows = [{"id": "question-only", "image": image, "conversations": turns[:1]},
            {"id": "answered", "image": image, "conversations": turns}]  # fmt: skip
    source = tmp_path / "llava.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    summary = prepare(PrepareConfig(
        input=str(source), image_root=str(image_root), output_dir=str(out), layout="llava",
        constants={"task": "open_ended"}, val_ratio=0, progress=False,
    ))  # fmt: skip
    assert summary["rows_written"] == 1 and summary["rejects_by_reason"] == {"empty_answer": 1}
    assert [row["extra_info"]["id"] for row in read_rows(out / "train.parquet")] == ["answered"]
    assert json.loads((out / "rejects.jsonl").read_text())["id"] == "question-only"


def test_a_table_whose_answers_are_option_indices_converts_with_answer_index_base(tmp_path):
    """ScienceQA's layout: `choices` and the right one's 0-based index as an integer `answer`."""
    from mixed_r1_verl.settings import parse_settings

    _, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5)
    rows = [{"image": "chart/000000.png", "question": "How many bars?", "choices": ["3", "2", "1", "0"], "answer": 1},
            {"image": "chart/000000.png", "question": "Which is taller?", "choices": ["left", "right"], "answer": 0}]
    source = tmp_path / "scienceqa.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    settings = [f"input={source}", f"image_root={image_root}", f"output_dir={tmp_path / 'out'}", "val_ratio=0",
                "progress=false", "columns.images=image", "columns.problem=question", "columns.options=choices",
                "constants.task=matching", "constants.data_source=scienceqa", "answer_index_base=0"]  # fmt: skip
    summary = prepare(parse_settings(PrepareConfig, settings))
    assert summary["rows_written"] == 2
    truths = [row["reward_model"]["ground_truth"] for row in read_rows(tmp_path / "out" / "train.parquet")]
    assert truths == ["B", "A"]
    with pytest.raises(ValueError, match="answer_index_base must be 0 or 1"):
        prepare(parse_settings(PrepareConfig, [*settings[:-1], "answer_index_base=2", f"output_dir={tmp_path}/b"]))
    assert not (tmp_path / "b").exists()


def test_solutions_given_as_one_answer_block_are_read_as_their_content_and_counted(tmp_path):
    """R1-V's layout: the answer column `solution` holds "<answer> 3 </answer>"."""
    _, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5)
    chart = {"image": "chart/000000.png", "problem": "How many bars?"}
    rows = [{**chart, "id": "spaced", "solution": "<answer> 3 </answer>"},
            {**chart, "id": "bare", "solution": "4"},
            {**chart, "id": "reasoned", "solution": "<think>Count them.</think><answer>5</answer>"}]  # fmt: skip
    source = tmp_path / "r1v.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    out = tmp_path / "out"
    summary = prepare(PrepareConfig(
        input=str(source), image_root=str(image_root), output_dir=str(out), val_ratio=0, progress=False,
        columns={"images": "image", "answer": "solution"}, constants={"task": "chart", "data_source": "r1v"},
    ))  # fmt: skip
    assert (summary["rows_written"], summary["answers_unwrapped"]) == (2, 1)
    truths = {row["extra_info"]["id"]: row["reward_model"]["ground_truth"] for row in read_rows(out / "train.parquet")}
    assert truths == {"spaced": "3", "bare": "4"}
    rejects = [(r["id"], r["reason"]) for r in read_jsonl(out / "rejects.jsonl")]
    assert rejects == [("reasoned", records.FORMAT_TAG_IN_TEXT)]


def test_a_table_with_one_column_per_option_converts_with_a_list_of_option_columns(tmp_path):
    """MMBench's layout: columns A, B, C, D, empty past a question's last option."""
    from mixed_r1_verl.settings import parse_settings

    _, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5)
    rows = [{"index": 1, "image": "chart/000000.png", "question": "Colour?", "A": "red", "B": "blue", "C": "green",
             "D": "grey", "answer": "C"},
            {"index": 2, "image": "chart/000000.png", "question": "Shape?", "A": "disc", "B": "square", "C": None,
             "D": None, "answer": "A"}]  # fmt: skip
    source = tmp_path / "mmbench.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    settings = [f"input={source}", f"image_root={image_root}", f"output_dir={tmp_path / 'out'}", "val_ratio=0",
                "progress=false", "columns.id=index", "columns.images=image", "columns.problem=question",
                "columns.options=[A,B,C,D]", "constants.task=matching", "constants.data_source=mmbench"]  # fmt: skip
    assert prepare(parse_settings(PrepareConfig, settings))["rows_written"] == 2
    written = {row["extra_info"]["id"]: row for row in read_rows(tmp_path / "out" / "train.parquet")}
    assert written["1"]["extra_info"]["options"] == ["red", "blue", "green", "grey"]
    assert written["2"]["extra_info"]["options"] == ["disc", "square"]
    assert "Options:\nA. disc\nB. square\nAnswer with" in written["2"]["prompt"][-1]["content"]
    assert [written[i]["reward_model"]["ground_truth"] for i in "12"] == ["C", "A"]


def test_options_that_carry_their_letters_are_lettered_once_in_the_prompt(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5, val_rows_per_task=0)
    row = {"id": "lettered", "task": "matching", "data_source": "d", "images": ["chart/000000.png"],
           "problem": "What happens?", "options": ["A. Nothing", "B. Motion"], "answer": "B. Motion"}  # fmt: skip
    source = tmp_path / "lettered.jsonl"
    source.write_text(json.dumps(row) + "\n")
    prepare(PrepareConfig(input=str(source), image_root=str(image_root), output_dir=str(tmp_path / "out"),
                          val_ratio=0, progress=False))  # fmt: skip
    written = read_rows(tmp_path / "out" / "train.parquet")[0]
    assert "Options:\nA. Nothing\nB. Motion\n" in written["prompt"][-1]["content"]
    assert (written["extra_info"]["options"], written["reward_model"]["ground_truth"]) == (["Nothing", "Motion"], "B")


def hub_cache_with(model_dir: Path, cache: Path, repo_id: str) -> None:
    """The Hugging Face cache layout holding `model_dir` as the main revision of `repo_id`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        (snapshot / file.name).symlink_to(file)


def test_hub_id_model_path_is_read_from_the_hf_cache_offline(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    from data_helpers import REPO

    from mixed_r1_verl.models.tiny_qwen25vl import MAX_PIXELS, MIN_PIXELS

    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5, val_rows_per_task=0)
    cache = tmp_path / "hub"
    hub_cache_with(Path(tiny_model_dir), cache, "example-org/tiny-vl")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}

    def convert(model_path: str, out: str) -> subprocess.CompletedProcess:
        settings = [f"input={jsonl}", f"image_root={image_root}", f"output_dir={tmp_path / out}"]
        settings += ["progress=false", "val_ratio=0"]
        return subprocess.run(
            [sys.executable, "-m", "mixed_r1_verl.data.prepare", *settings, f"model_path={model_path}"],
            env=env, capture_output=True, text=True,
        )

    done = convert("example-org/tiny-vl", "cached")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "cached" / "summary.json").read_text())
    assert (summary["min_pixels"], summary["max_pixels"]) == (MIN_PIXELS, MAX_PIXELS)

    missing = convert("example-org/absent-vl", "absent")
    assert missing.returncode != 0
    assert "'example-org/absent-vl' is not a directory and not in the Hugging Face cache" in missing.stderr
    assert "HF_HUB_OFFLINE" in missing.stderr


def test_rows_without_ids_get_content_ids_unique_across_sources_and_independent_of_row_order(tmp_path):
    from mixed_r1_verl.eval.records import load_records

    image_root = tmp_path / "images"
    image_root.mkdir()
    for name, colour in (("a.png", (200, 0, 0)), ("b.png", (0, 0, 200))):
        Image.new("RGB", (120, 80), colour).save(image_root / name)
    charts = [{"imgname": ["a.png", "b.png"][i % 2], "query": f"Value of bar {i}?", "label": str(i)} for i in range(40)]
    refs = [{"file_name": "a.png", "sent": "the left half", "bbox": [0, 0, 60, 80]},
            {"file_name": "b.png", "sent": "the left half", "bbox": [0, 0, 60, 80]}]  # fmt: skip

    def convert(rows: list[dict], layout: str, out: str, **settings) -> dict[str, str]:
        source = tmp_path / f"{out}.jsonl"
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
        prepare(PrepareConfig(input=str(source), image_root=str(image_root), output_dir=str(tmp_path / out),
                              layout=layout, progress=False, **settings))  # fmt: skip
        written = [row for split in ("train", "val") if (tmp_path / out / f"{split}.parquet").exists()
                   for row in read_rows(tmp_path / out / f"{split}.parquet")]  # fmt: skip
        return {row["extra_info"]["id"]: row["extra_info"]["split"] for row in written}

    chart_splits = convert(charts, "chartqa", "chartqa", val_ratio=0.3)
    assert len(chart_splits) == 40 and all(re.fullmatch(r"chartqa-auto-[0-9a-f]{16}", i) for i in chart_splits)
    assert 0 < list(chart_splits.values()).count("val") < 40
    assert convert(charts[::-1], "chartqa", "reversed", val_ratio=0.3) == chart_splits
    ref_ids = convert(refs, "refcoco", "refcoco", val_ratio=0)
    assert len(ref_ids) == 2 and all(i.startswith("refcoco-auto-") for i in ref_ids)
    parquets = [tmp_path / "chartqa" / "train.parquet", tmp_path / "chartqa" / "val.parquet",
                tmp_path / "refcoco" / "train.parquet"]  # fmt: skip
    assert {record.id for record in load_records(parquets)} == set(chart_splits) | set(ref_ids)

    repeated = [*refs, {**refs[0], "bbox": [0.0, 0.0, 60.0, 80.0]}]
    assert convert(repeated, "refcoco", "repeated", val_ratio=0) == ref_ids
    reject = json.loads((tmp_path / "repeated" / "rejects.jsonl").read_text())
    assert (reject["id"], reject["row"], reject["reason"]) == ("row-3", 3, records.DUPLICATE_ID)
    assert reject["detail"].startswith("same content as row 1 (") and next(iter(ref_ids)) in reject["detail"]


def test_the_refcoco_layout_writes_every_referring_expression_of_an_object(tmp_path):
    """RefCOCO's published figures score each expression; an object's ref_id is shared by all of them."""
    image_root = tmp_path / "images"
    image_root.mkdir()
    Image.new("RGB", (300, 200)).save(image_root / "a.png")
    expressions = ["the left cat", "cat on the left", "left animal"]
    rows = [{"ref_id": 7, "sent_id": 70 + number, "file_name": "a.png", "sent": sent, "bbox": [30, 40, 120, 80]}
            for number, sent in enumerate(expressions)]  # fmt: skip
    source = tmp_path / "refs.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = dict(image_root=str(image_root), layout="refcoco", val_ratio=1, progress=False)
    summary = prepare(PrepareConfig(input=str(source), output_dir=str(tmp_path / "out"), **settings))
    assert (summary["rows_written"], summary["rows_rejected"]) == (3, 0)
    written = read_rows(tmp_path / "out" / "val.parquet")
    assert [row["extra_info"]["id"] for row in written] == ["70", "71", "72"]
    assert [f"described as: {sent}\n" in row["prompt"][-1]["content"] for row, sent in zip(written, expressions)] == [
        True
    ] * 3
    without_ids = tmp_path / "no_sent_ids.jsonl"  # rows without sent_id: ids from each row's content
    without_ids.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "sent_id"}) + "\n" for row in rows))
    summary = prepare(PrepareConfig(input=str(without_ids), output_dir=str(tmp_path / "auto"), **settings))
    assert (summary["rows_written"], summary["rows_rejected"]) == (3, 0)


def test_pixel_boxes_that_all_fit_the_0_1000_grid_on_larger_images_are_warned_of(tmp_path, capsys):
    from mixed_r1_verl.data.prepare import GRID_LIKE_BOXES_WARNED_FROM, print_conversion

    image_root = tmp_path / "images"
    image_root.mkdir()
    Image.new("RGB", (1600, 1200)).save(image_root / "large.png")
    rows = [{"sent_id": number, "file_name": "large.png", "sent": f"object {number}",
             "bbox": [10 * number, 20, 300 + 10 * number, 900]} for number in range(GRID_LIKE_BOXES_WARNED_FROM)]  # fmt: skip
    source = tmp_path / "boxes.jsonl"

    def converted(rows: list[dict], **settings) -> dict:
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
        config = PrepareConfig(input=str(source), image_root=str(image_root), output_dir=str(tmp_path / "out"),
                               layout="refcoco", val_ratio=0, progress=False, **settings)  # fmt: skip
        print_conversion(config)
        return json.loads((tmp_path / "out" / "summary.json").read_text())

    summary = converted(rows)
    assert summary["warnings"] == [
        f"all {GRID_LIKE_BOXES_WARNED_FROM} grounding boxes on images larger than 1000 px lie within 0-1000, as "
        "boxes on the 0-1000 grid do (Qwen2-VL, Qwen3-VL, InternVL data); they were read as pixels "
        "(box_units=pixels): if they are on the grid, convert again with box_units=norm1000"
    ]
    assert capsys.readouterr().err == f"warning: {summary['warnings'][0]}\n"
    assert converted(rows, box_units="norm1000")["warnings"] == []
    assert converted([*rows[:-1], {**rows[-1], "bbox": [900, 20, 200, 900]}])["warnings"] == []  # x2 = 1100
    assert converted(rows[1:])["warnings"] == []  # too few to tell
    assert capsys.readouterr().err == ""


def test_images_embedded_in_parquet_convert_as_the_same_files_do(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=3, seed=5)
    settings = {"val_ratio": 0.3, "seed": 2, "progress": False}
    prepare(PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(tmp_path / "files"), **settings))
    from_files = {split: read_rows(tmp_path / "files" / f"{split}.parquet") for split in ("train", "val")}
    rows = read_jsonl(jsonl)
    # One row's image kept as a file (bytes null), as a dataset saved from image paths holds it.
    embedded = tmp_path / "embedded.parquet"
    rows_with_embedded_images(jsonl, image_root, embedded, read_from_files={rows[0]["id"]})

    summary = prepare(
        PrepareConfig(input=str(embedded), image_root=str(image_root), output_dir=str(tmp_path / "out"), **settings)
    )

    assert summary["rows_written"] == len(rows) and summary["rows_rejected"] == 0
    for split, expected in from_files.items():
        assert read_rows(tmp_path / "out" / f"{split}.parquet") == expected
    # Every image embedded: no image root is needed.
    all_embedded = tmp_path / "all_embedded.parquet"
    rows_with_embedded_images(jsonl, image_root, all_embedded)
    prepare(PrepareConfig(input=str(all_embedded), output_dir=str(tmp_path / "no_root"), **settings))
    for split, expected in from_files.items():
        assert read_rows(tmp_path / "no_root" / f"{split}.parquet") == expected


def test_a_hub_style_parquet_with_one_image_struct_per_row_converts_through_a_column_mapping(tmp_path):
    """ChartQA as the Hub's datasets hold it: an `image` struct {bytes, path}, `query`, `label` (a list)."""
    def png(size, color) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", size, color).save(buffer, format="PNG")
        return buffer.getvalue()

    chart = png((320, 240), "red")
    source = [
        {"image": {"bytes": chart, "path": "two_col_1.png"}, "query": "What is the highest value?", "label": ["42"]},
        {"image": {"bytes": png((200, 100), "blue"), "path": None}, "query": "How many bars?", "label": ["3"]},
        {"image": {"bytes": b"GIF89a cut short", "path": "broken.gif"}, "query": "Q?", "label": ["1"]},
        {"image": {"bytes": None, "path": "on_disk.png"}, "query": "Q?", "label": ["2"]},
    ]
    parquet = tmp_path / "chartqa.parquet"
    pq.write_table(pa.Table.from_pylist(source), parquet)
    settings = ["layout=chartqa", "columns.images=image", "constants.data_source=chartqa", "val_ratio=0"]

    output = run_module("mixed_r1_verl.data.prepare", f"input={parquet}", f"output_dir={tmp_path / 'out'}", *settings)
    summary = json.loads(output)

    assert (summary["rows_written"], summary["rejects_by_reason"]) == (2, {"unreadable_image": 1, "missing_image": 1})
    written = read_rows(tmp_path / "out" / "train.parquet")
    assert [row["images"][0]["path"] for row in written] == ["two_col_1.png", None]
    assert written[0]["images"][0]["bytes"] == chart and written[0]["extra_info"]["image_size"] == [320, 240]
    assert written[1]["reward_model"]["ground_truth"] == "3"
    rejects = {line["row"]: line["detail"] for line in read_jsonl(tmp_path / "out" / "rejects.jsonl")}
    assert rejects == {
        3: "embedded image 'broken.gif': not an image file of a format PIL reads",
        4: "image 'on_disk.png' is a file, and no image_root was given to read it in",
    }


@pytest.mark.parametrize(
    ("image", "detail"),
    [
        ({"bytes": "aGVsbG8=", "path": "a.png"}, "image 1: 'bytes' must hold the image file's bytes (a binary parquet"),
        (
            {"bytes": b"", "path": "a.png"},
            "image 1: 'bytes' must hold the image file's bytes (a binary parquet column), got no bytes",
        ),
        ({"bytes": b"\x89PNG", "path": 3}, "image 1: 'path' must be a string, got int"),
        ({"url": "http://x/a.png"}, "image 1: expected a path or an image struct {bytes, path}, got {'url'"),
        (7, "image 1: expected a path or an image struct {bytes, path}, got 7"),
    ],
)
def test_an_image_neither_a_path_nor_an_image_struct_is_a_reject_naming_it(image, detail):
    row = {"id": "r", "task": "chart", "data_source": "d", "images": [image], "problem": "Q?", "answer": "1"}
    with pytest.raises(records.RecordError) as rejected:
        records.parse_record(row)
    assert rejected.value.reason == records.BAD_RECORD and rejected.value.detail.startswith(detail)


def test_the_shards_of_a_dataset_convert_as_one_input(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=3, seed=5)
    settings = {"val_ratio": 0.3, "seed": 2, "progress": False}
    prepare(PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(tmp_path / "whole"), **settings))
    rows = read_jsonl(jsonl)
    shards = tmp_path / "shards"
    shards.mkdir()
    rows_with_embedded_images(jsonl, image_root, tmp_path / "all.parquet")
    table = pq.read_table(tmp_path / "all.parquet")
    half = len(rows) // 2
    pq.write_table(table.slice(0, half), shards / "train-00000-of-00002.parquet")
    # The second shard repeats the first row: a duplicate across files names both.
    pq.write_table(pa.concat_tables([table.slice(half), table.slice(0, 1)]), shards / "train-00001-of-00002.parquet")

    pattern = str(shards / "train-*.parquet")
    summary = prepare(PrepareConfig(input=pattern, output_dir=str(tmp_path / "out"), **settings))

    first, second = (str(shards / f"train-0000{n}-of-00002.parquet") for n in (0, 1))
    assert summary["input"] == [first, second] and summary["rows_in"] == len(rows) + 1
    for split in ("train", "val"):
        assert read_rows(tmp_path / "out" / f"{split}.parquet") == read_rows(tmp_path / "whole" / f"{split}.parquet")
    [reject] = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert (reject["input"], reject["row"], reject["reason"]) == (second, len(rows) - half + 1, records.DUPLICATE_ID)
    assert reject["detail"] == f"id {rows[0]['id']!r} appeared earlier in the input, at row 1 of {first}"
    # A list of files and patterns reads each file once, in the order given.
    again = PrepareConfig(input=[second, str(shards / "*.parquet")], output_dir=str(tmp_path / "again"), **settings)
    assert prepare(again)["input"] == [second, first]
    with pytest.raises(FileNotFoundError, match=r"input=.*train-\*\.jsonl: the pattern matches no file"):
        prepare(PrepareConfig(input=str(shards / "train-*.jsonl"), output_dir=str(tmp_path / "none"), **settings))


def test_inputs_are_read_by_their_suffix_in_any_case_and_named_files_are_not_globbed(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5, val_rows_per_task=0)
    rows = read_jsonl(jsonl)
    bracketed = tmp_path / "ChartQA [v1]" / "train[0].jsonl"
    bracketed.parent.mkdir()
    shutil.copy(jsonl, bracketed)
    upper_case = tmp_path / "TRAIN.PARQUET"
    pq.write_table(pa.Table.from_pylist(rows), upper_case)
    for name, source in (("bracketed", bracketed), ("upper_case", upper_case)):
        summary = prepare(PrepareConfig(input=str(source), image_root=str(image_root), output_dir=str(tmp_path / name),
                                        val_ratio=0, progress=False))  # fmt: skip
        assert (summary["rows_written"], summary["rows_rejected"]) == (len(rows), 0), name


def test_inputs_of_another_format_are_refused_before_any_row_is_read(tmp_path):
    import datasets
    import gzip

    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=5, val_rows_per_task=0)
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(read_jsonl(jsonl)).save_to_disk(str(saved))
    csv = tmp_path / "rows.csv"
    csv.write_text("id,task,problem,answer\nr1,chart,Q?,3\n")
    compressed = tmp_path / "rows.jsonl.gz"
    compressed.write_bytes(gzip.compress(jsonl.read_bytes()))
    refused = [(saved, "a directory"), (saved / "data-00000-of-00001.arrow", "a '.arrow' file"), (csv, "a '.csv' file"),
               (compressed, "a '.gz' file")]  # fmt: skip
    for source, what in refused:
        with pytest.raises(ValueError) as caught:
            prepare(PrepareConfig(input=[str(jsonl), str(source)], image_root=str(image_root),
                                  output_dir=str(tmp_path / "out"), progress=False))  # fmt: skip
        message = str(caught.value)
        assert message.startswith(f"input={source}: unsupported input format: {what}; rows are read from .jsonl, "
                                  ".json, .parquet files")  # fmt: skip
        assert ("load_from_disk('<directory>').to_parquet('train.parquet')" in message) == (source.suffix != ".gz"
                                                                                             and source != csv)
    assert not (tmp_path / "out").exists()


def test_a_hub_datasets_files_are_read_from_the_hf_cache_offline(tmp_path):
    """`input=hf://datasets/<org>/<name>/<pattern>`: the shards of a dataset in the Hugging Face cache."""
    import subprocess
    import sys

    from data_helpers import REPO

    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=5, val_rows_per_task=0)
    rows_with_embedded_images(jsonl, image_root, tmp_path / "all.parquet")
    table = pq.read_table(tmp_path / "all.parquet")
    repo = tmp_path / "hub" / "datasets--example-org--charts"
    revision = "1" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    data = repo / "snapshots" / revision / "data"
    data.mkdir(parents=True)
    pq.write_table(table.slice(0, 3), data / "train-00000-of-00002.parquet")
    pq.write_table(table.slice(3), data / "train-00001-of-00002.parquet")
    pq.write_table(table.slice(0, 1), data / "test-00000-of-00001.parquet")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}

    def convert(url: str, out: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mixed_r1_verl.data.prepare", f"input={url}", f"output_dir={tmp_path / out}",
             "progress=false", "val_ratio=0"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip

    done = convert("hf://datasets/example-org/charts/data/train-*.parquet", "out")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["input"] == [str(data / "train-00000-of-00002.parquet"), str(data / "train-00001-of-00002.parquet")]
    assert summary["rows_written"] == table.num_rows
    missing = convert("hf://datasets/example-org/charts/data/validation-*.parquet", "missing")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert (
        "no file of the Hugging Face cache" in missing.stderr and "HF_HUB_OFFLINE is set" in missing.stderr
        and "hf download example-org/charts --repo-type dataset --include 'data/validation-*.parquet'" in missing.stderr
    )  # fmt: skip
    malformed = convert("hf://datasets/charts/train.parquet", "malformed")
    assert "name a Hub dataset's files as hf://datasets/<org>/<name>[@<revision>]/<pattern>" in malformed.stderr


def test_row_groups_end_at_their_image_bytes_and_the_image_cache_at_its_bytes(tmp_path):
    """Large photos: memory is bounded by bytes, not only by rows and images."""
    image_root = tmp_path / "images"
    image_root.mkdir()
    for number in range(6):
        noise = numpy.random.default_rng(number).integers(0, 255, (60, 80, 3), dtype=numpy.uint8)
        Image.fromarray(noise).save(image_root / f"{number}.png")
    sizes = [(image_root / f"{number}.png").stat().st_size for number in range(6)]
    store = ImageStore(image_root, cache_bytes=2 * max(sizes))
    for number in range(6):
        store.load(f"{number}.png")
    (image_root / "5.png").rename(tmp_path / "5.png")
    (image_root / "0.png").rename(tmp_path / "0.png")
    assert store.load("5.png").data  # the last read is kept
    with pytest.raises(records.RecordError, match="not found"):
        store.load("0.png")  # beyond the bytes kept: read again
    writer = SplitWriter(tmp_path / "train.parquet", row_group_size=256, row_group_bytes=3 * max(sizes))
    for number in range(5):
        row = {"images": [{"bytes": (tmp_path / "5.png").read_bytes(), "path": "5.png"}], "extra_info": {}}
        writer.write({**row, "data_source": "d", "prompt": [], "ability": "chart", "reward_model": {}})
    writer.commit()
    assert pq.ParquetFile(tmp_path / "train.parquet").metadata.num_row_groups == 2  # 3 rows, then 2

"""Splits: rows pinned by their `split` field, and no split that training reads written empty."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from mixed_r1_verl.data import records
from mixed_r1_verl.data.prepare import EmptySplitError, PrepareConfig, prepare
from mixed_r1_verl.data.synthetic import TASKS, write_synthetic_dataset


def convert(jsonl, image_root, out_dir, **settings) -> dict:
    return prepare(
        PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(out_dir), progress=False, **settings)
    )


def tasks_in(path) -> list[str]:
    return [row["extra_info"]["task"] for row in pq.read_table(path).to_pylist()]


def rewrite(jsonl, change) -> None:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    jsonl.write_text("".join(json.dumps(change(row)) + "\n" for row in rows))


def test_smoke_sized_synthetic_set_has_every_task_in_val(tmp_path):
    # The smoke recipe: 24 rows per task through the converter's default val_ratio.
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=24, seed=0)
    summary = convert(jsonl, image_root, tmp_path / "out")
    val_tasks = tasks_in(tmp_path / "out" / "val.parquet")
    assert sorted(set(val_tasks)) == sorted(TASKS)
    assert summary["per_split"] == {"train": 84, "val": 12}
    assert sorted(set(tasks_in(tmp_path / "out" / "train.parquet"))) == sorted(TASKS)


def test_split_field_overrides_the_hash_split(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=4, seed=1, val_rows_per_task=0)
    rewrite(jsonl, lambda row: {**row, "split": "val" if row["id"].endswith("0") else "train"})
    convert(jsonl, image_root, tmp_path / "out", val_ratio=0.99)
    val = pq.read_table(tmp_path / "out" / "val.parquet").to_pylist()
    assert sorted(row["extra_info"]["id"] for row in val) == sorted(f"{task}-000000" for task in TASKS)
    assert {row["extra_info"]["split"] for row in val} == {"val"}


def test_an_empty_val_split_is_refused_with_the_way_to_ask_for_none(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=5, val_rows_per_task=0)
    out = tmp_path / "out"
    with pytest.raises(EmptySplitError, match=r"val\.parquet would be empty.*val_ratio=0 to ask for no validation"):
        convert(jsonl, image_root, out, val_ratio=0.001)
    assert list(out.iterdir()) == []


def test_rejected_rows_are_kept_when_a_split_check_stops_the_conversion(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=5, val_rows_per_task=0)
    rewrite(jsonl, lambda row: {**row, "task": "ocr"} if row["id"] == "chart-000000" else row)
    out = tmp_path / "out"
    with pytest.raises(EmptySplitError, match=r"val\.parquet would be empty"):
        convert(jsonl, image_root, out, val_ratio=0.001)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejects] == [("chart-000000", records.UNKNOWN_TASK)]
    assert [p.name for p in out.iterdir()] == ["rejects.jsonl"]


def output_dir_with_a_stale(tmp_path, name: str):
    """An output directory holding a file `name` left by an earlier conversion."""
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"stale")
    return out


def test_val_ratio_zero_writes_no_val_file_and_removes_a_stale_one(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=5, val_rows_per_task=0)
    out = output_dir_with_a_stale(tmp_path, "val.parquet")
    summary = convert(jsonl, image_root, out, val_ratio=0)
    assert not (out / "val.parquet").exists()
    assert summary["per_split"] == {"train": 8, "val": 0}


def test_an_empty_train_split_is_refused_with_the_way_to_ask_for_an_evaluation_set(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=5, val_rows_per_task=2)
    refusal = r"train\.parquet would be empty.*set val_ratio=1 to convert an evaluation set"
    with pytest.raises(EmptySplitError, match=refusal):
        convert(jsonl, image_root, tmp_path / "out")


def test_val_ratio_one_converts_an_evaluation_set_without_a_train_file(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=3, seed=5, val_rows_per_task=0)
    out = output_dir_with_a_stale(tmp_path, "train.parquet")

    summary = convert(jsonl, image_root, out, val_ratio=1)

    assert summary["per_split"] == {"train": 0, "val": 12} and not (out / "train.parquet").exists()
    assert sorted(tasks_in(out / "val.parquet")) == sorted(TASKS * 3)
    assert {path.name for path in out.iterdir()} == {"val.parquet", "sft_val.parquet", "rejects.jsonl", "summary.json"}
    # Rows pinned to train stay there.
    rewrite(jsonl, lambda row: {**row, "split": "train"} if row["id"] == "chart-000000" else row)
    assert convert(jsonl, image_root, tmp_path / "pinned", val_ratio=1)["per_split"] == {"train": 1, "val": 11}


@pytest.mark.parametrize("val_ratio", [1.5, -0.1])
def test_a_val_ratio_outside_zero_to_one_is_refused(tmp_path, val_ratio):
    with pytest.raises(ValueError, match=rf"val_ratio={val_ratio}: expected the fraction of rows for val\.parquet"):
        convert(tmp_path / "rows.jsonl", tmp_path, tmp_path / "out", val_ratio=val_ratio)


def test_an_unknown_split_is_rejected_by_name(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=5)
    rewrite(jsonl, lambda row: {**row, "split": "test"} if row["id"] == "chart-000000" else row)
    summary = convert(jsonl, image_root, tmp_path / "out")
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejects] == [("chart-000000", records.BAD_RECORD)]
    assert "'split'" in rejects[0]["detail"] and "'test'" in rejects[0]["detail"]
    assert summary["rows_rejected"] == 1


def test_synthetic_val_rows_are_the_last_of_each_task(tmp_path):
    jsonl, _ = write_synthetic_dataset(tmp_path / "src", rows_per_task=5, seed=2, val_rows_per_task=2)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for task in TASKS:
        splits = [row["split"] for row in rows if row["task"] == task]
        assert splits == ["train"] * 3 + ["val"] * 2
    with pytest.raises(ValueError, match="val_rows_per_task=6"):
        write_synthetic_dataset(tmp_path / "bad", rows_per_task=5, val_rows_per_task=6)


def test_synthetic_cli_writes_the_set_with_its_splits(tmp_path):
    from data_helpers import run_module

    output = json.loads(
        run_module("mixed_r1_verl.data.synthetic", f"out_dir={tmp_path}", "rows_per_task=3", "val_rows_per_task=1",
                   "image_format=jpeg")  # fmt: skip
    )
    rows = [json.loads(line) for line in open(output["records"])]
    assert len(rows) == 12 and sum(row["split"] == "val" for row in rows) == 4
    assert all(row["rationale"] and row["images"][0].endswith(".jpg") for row in rows)


def test_synthetic_cli_ends_a_bad_setting_in_one_line(tmp_path):
    from data_helpers import checkout_env

    run = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.data.synthetic", f"out_dir={tmp_path / 'out'}", "image_format=gif"],
        env=checkout_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip() == "ValueError: image_format='gif' is none of png, jpeg, jpg"


def test_rationales_agree_with_the_answers(tmp_path):
    import re

    jsonl, _ = write_synthetic_dataset(tmp_path, rows_per_task=40, seed=9, image_size=(96, 72))
    for row in (json.loads(line) for line in jsonl.read_text().splitlines()):
        rationale, answer = row["rationale"], row["answer"]
        if row["task"] == "chart":
            readings = dict(re.findall(r"([A-E]) (\d+)", rationale.split(".")[0]))
            if answer.isdigit():
                label = re.search(r"labelled ([A-E])", row["problem"]).group(1)
                assert readings[label] == answer and rationale.endswith(f"Bar {label} is {answer}.")
            else:
                assert max(readings, key=lambda label: int(readings[label])) == answer
        elif row["task"] == "matching" and "options" in row:
            assert rationale.endswith(f"option {answer}.")
            assert f"is {row['options']['ABCD'.index(answer)]}, option" in rationale
            # The shape asked about is one of the shapes seen, not two of different colours.
            kind, _, place = re.search(r"colour is the (.+)\?", row["problem"]).group(1).partition(" at the ")
            seen = re.findall(r"an? \w+ (\w+) at the ([\w ]+?)(?:;|\.)", rationale.split(". The ")[0] + ".")
            assert sum(shape == kind and place in ("", where) for shape, where in seen) == 1, row
        elif row["task"] == "matching":
            colour = re.search(r"anything (\w+) in", row["problem"]).group(1)
            assert (answer == "yes") == (f" {colour} " in rationale.split(".")[0] + " ")
        elif row["task"] == "grounding":
            name = re.search(r"Locate the (\w+ \w+) in", row["problem"]).group(1)
            assert f"The {name} is at the" in rationale
        else:
            shapes = re.findall(r"an? (\w+ (?:circle|square|triangle))", answer)
            assert shapes and all(shape in rationale for shape in shapes)


def test_a_colour_question_never_names_two_shapes():
    import random

    from mixed_r1_verl.data.synthetic import _matching_row

    # Two triangles in the top left third, of different colours: "the triangle at the top left" is either.
    twins = [{"colour": "red", "shape": "triangle", "box": [0, 0, 20, 20]},
             {"colour": "blue", "shape": "triangle", "box": [30, 30, 50, 50]}]  # fmt: skip
    lone = {"colour": "green", "shape": "circle", "box": [200, 200, 220, 220]}
    for seed in range(40):
        alone = _matching_row(random.Random(seed), twins, (224, 224))
        assert "options" not in alone and "anything" in alone["problem"]
        with_circle = _matching_row(random.Random(seed), [*twins, lone], (224, 224))
        if "options" in with_circle:
            assert with_circle["problem"] == "<image>What colour is the circle?"

"""Offline evaluation end to end: a verl-layout parquet drawn here, real rewards, the tiny model on CPU."""

import csv
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import ModelCard
from PIL import Image, ImageDraw

from data_helpers import checkout_env, score_saved

from mixed_r1_verl.data.images import SpilledImages
from mixed_r1_verl.eval.cache import (
    Completion,
    GenerationFileError,
    discard_generations_made_otherwise,
    drop_unfinished_last_line,
    model_fingerprint,
    read_generations,
)
from mixed_r1_verl.eval.cli import checked_settings, images_per_prompt, main, sampling_record, spill_prefix
from mixed_r1_verl.eval.generation import eval_request, request_digest
from mixed_r1_verl.eval.records import RecordError, load_records
from mixed_r1_verl.models.model_card import model_card
from mixed_r1_verl.settings import EXIT_USAGE

THINK = "<think>I look at the image.</think>"


def drawn_image(size=(64, 48), box=(8, 8, 40, 30)):
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle(box, fill="red")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def row(record_id, task, data_source, question, ground_truth, images=1, **extra):
    return {
        "prompt": [{"role": "user", "content": "<image>" * images + question}],
        "images": [drawn_image() for _ in range(images)],
        "data_source": data_source,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {
            "task": task,
            "id": record_id,
            "box_frame": extra.get("box_frame"),
            "frame_size": extra.get("frame_size"),
            "options": extra.get("options"),
        },
    }


ROWS = [
    row("m1", "matching", "mmbench", "Which animal? A. cat B. dog", "B", options=["cat", "dog"]),
    row("m2", "matching", "mmbench", "Which animal? A. cat B. dog", "A", options=["cat", "dog"]),
    row("c1", "chart", "chartqa", "Largest bar?", "42.5"),
    row("g1", "grounding", "refcoco", "Find the red box.", "[0, 0, 40, 40]", box_frame="abs", frame_size=[64, 48]),
    row("o1", "open_ended", "coco_caption", "Describe the image.", "A man rides a red bicycle.", images=2),
]
RESPONSES = {
    "m1": f"{THINK}<answer>B</answer>",  # right, formatted: score 1
    "m2": "The answer is B",  # wrong, unformatted: score 0
    "c1": f"{THINK}<answer>42.5</answer>",  # right: score 1
    "g1": f"{THINK}<answer>[20, 0, 60, 40]</answer>",  # IoU 1/3: score 0.9/3 + 0.1
    "o1": f"{THINK}<answer>A man rides a red bicycle.</answer>",  # identical to the reference: BMAS 1
}


@pytest.fixture()
def tiny_model(tiny_model_dir):
    return str(tiny_model_dir)


@pytest.fixture()
def parquet(tmp_path):
    path = tmp_path / "val.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    return path


def test_saved_generations_give_per_task_and_per_source_tables(tmp_path, parquet, tiny_model, capsys):
    out = tmp_path / "run"

    assert score_saved(parquet, RESPONSES, out, tiny_model) == 0

    summary = json.loads((out / "summary.json").read_text())
    tasks = summary["tasks"]
    truncation = {"truncated": 0, "truncated_zero_score": 0, "truncation_unknown": 2}  # the lines do not say
    assert tasks["matching"] == {
        "n": 2, "accuracy": 0.5, "correct": 0.5, "format": 0.5, "score": 0.5, "errors": 0, **truncation
    }  # fmt: skip
    assert tasks["chart"]["score"] == 1.0
    assert tasks["grounding"]["accuracy"] == pytest.approx(1 / 3)
    assert tasks["grounding"]["score"] == pytest.approx(0.9 / 3 + 0.1)
    assert tasks["open_ended"]["accuracy"] == pytest.approx(1.0, abs=1e-5)
    assert tasks["all"]["n"] == 5 and tasks["all"]["format"] == pytest.approx(0.8)
    assert summary["data_sources"]["mmbench"]["task"] == "matching"
    assert summary["data_sources"]["refcoco"]["n"] == 1

    with open(out / "summary.csv") as table:
        csv_rows = list(csv.DictReader(table))
    assert {(r["level"], r["name"]) for r in csv_rows} >= {("task", "all"), ("data_source", "coco_caption")}
    assert len((out / "scores.jsonl").read_text().splitlines()) == 5
    printed = capsys.readouterr().out
    assert "| matching | 2 | 0.5000 | 0.5000 | 0.5000 | 0.5000 | 0 | unknown |" in printed
    assert "### Per data_source" in printed


def test_answer_spread_shows_one_answer_given_whatever_the_image(tmp_path, parquet, tiny_model, capsys):
    # Both matching rows answered "B" (spaces aside); their references are B and A.
    collapsed = {**RESPONSES, "m2": f"{THINK}<answer> B </answer>"}

    assert score_saved(parquet, collapsed, tmp_path / "run", tiny_model) == 0

    answers = json.loads((tmp_path / "run" / "summary.json").read_text())["answers"]
    assert answers["matching"] == {"top_answer": "B", "top_share": 1.0, "distinct": 1, "reference_top_share": 0.5}
    assert answers["grounding"]["top_answer"] == "[20, 0, 60, 40]"
    printed = capsys.readouterr().out
    assert "### Answer spread" in printed and "| matching | 1.0000 | 0.5000 | 1 | 'B' |" in printed

    assert score_saved(parquet, RESPONSES, tmp_path / "spread", tiny_model) == 0
    answers = json.loads((tmp_path / "spread" / "summary.json").read_text())["answers"]
    assert answers["matching"]["distinct"] == 2 and answers["matching"]["top_share"] == 0.5  # "B" and no answer
    rows = [json.loads(line) for line in (tmp_path / "spread" / "scores.jsonl").read_text().splitlines()]
    assert {row["id"]: row["answer"] for row in rows}["m2"] == "(no answer)"


def grounding_rows(parquet, predictions: list[str]) -> dict[str, str]:
    """RefCOCO-style records, the reference box [0, 0, 40, 40] in each, written to `parquet`; returns the
    responses answering them with `predictions` (id -> response)."""
    frame = {"box_frame": "abs", "frame_size": [64, 48]}
    rows = [
        row(f"r{i}", "grounding", "refcoco", "Find the red box.", "[0, 0, 40, 40]", **frame)
        for i in range(len(predictions))
    ]
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    return {f"r{i}": f"{THINK}<answer>{box}</answer>" for i, box in enumerate(predictions)}


# IoU 1, then 0.45 three times: mean IoU 0.5875, Acc@0.5 0.25.
PREDICTED_BOXES = ["[0, 0, 40, 40]", "[0, 0, 40, 18]", "[0, 0, 40, 18]", "[0, 0, 40, 18]"]


def test_grounding_reports_the_share_correct_at_its_threshold_beside_the_mean_iou(tmp_path, capsys):
    parquet = tmp_path / "refcoco.parquet"
    responses = grounding_rows(parquet, PREDICTED_BOXES)

    assert score_saved(parquet, responses, tmp_path / "run") == 0

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for stats in (summary["tasks"]["grounding"], summary["tasks"]["all"], summary["data_sources"]["refcoco"]):
        assert (stats["accuracy"], stats["correct"]) == (pytest.approx(0.5875), 0.25)
    assert summary["run"]["correct_thresholds"] == {"grounding": 0.5}
    scores = [json.loads(line) for line in (tmp_path / "run" / "scores.jsonl").read_text().splitlines()]
    assert [score["correct"] for score in scores] == [1.0, 0.0, 0.0, 0.0]
    with open(tmp_path / "run" / "summary.csv") as table:
        csv_rows = {(r["level"], r["name"]): r for r in csv.DictReader(table)}
    assert csv_rows["data_source", "refcoco"]["correct"] == "0.25"
    assert "| grounding | 4 | 0.5875 | 0.2500 | 1.0000 |" in capsys.readouterr().out

    # The threshold is the training's option, as a float or per task.
    assert score_saved(parquet, responses, tmp_path / "lenient", None, "correct_threshold=0.45") == 0
    lenient = json.loads((tmp_path / "lenient" / "summary.json").read_text())
    assert lenient["tasks"]["grounding"]["correct"] == 1.0
    assert lenient["run"]["correct_thresholds"] == {"grounding": 0.45}
    assert score_saved(parquet, responses, tmp_path / "strict", None, "correct_threshold={grounding: 1.0}") == 0
    strict = json.loads((tmp_path / "strict" / "summary.json").read_text())
    assert strict["tasks"]["grounding"]["correct"] == 0.25 and strict["run"]["reward_kwargs"]["correct_threshold"] == (
        "{'grounding': 1.0}"
    )
    capsys.readouterr()

    assert main([f"compare=[{tmp_path / 'run'},{tmp_path / 'lenient'}]", f"out_dir={tmp_path / 'cmp'}"]) == 0
    compared = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = {(r[0], r[1]): dict(zip(compared["header"], r)) for r in compared["rows"]}
    grounding = rows["task", "grounding"]
    assert (grounding["correct run"], grounding["correct lenient"], grounding["Δ correct"]) == (0.25, 1.0, 0.75)
    assert grounding["Δ accuracy"] == 0.0
    assert compared["header"].index("correct run") == compared["header"].index("Δ accuracy") + 1
    assert "reward_kwargs.correct_threshold: run None, lenient '0.45'" in compared["notice"]


def test_compare_leaves_correct_blank_for_a_run_summarized_before_it_was_counted(tmp_path, capsys):
    parquet = tmp_path / "refcoco.parquet"
    responses = grounding_rows(parquet, PREDICTED_BOXES)
    for name in ("earlier", "now"):
        assert score_saved(parquet, responses, tmp_path / name) == 0
    summary_file = tmp_path / "earlier" / "summary.json"
    earlier = json.loads(summary_file.read_text())
    for level in ("tasks", "data_sources"):
        for stats in earlier[level].values():
            del stats["correct"]
    summary_file.write_text(json.dumps(earlier))
    capsys.readouterr()

    assert main([f"compare=[{tmp_path / 'earlier'},{tmp_path / 'now'}]", f"out_dir={tmp_path / 'cmp'}"]) == 0

    compared = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = {(r[0], r[1]): dict(zip(compared["header"], r)) for r in compared["rows"]}
    grounding = rows["data_source", "refcoco"]
    assert (grounding["correct earlier"], grounding["correct now"], grounding["Δ correct"]) == ("", 0.25, "")
    assert grounding["Δ accuracy"] == 0.0
    assert "| 0.5875 | 0.5875 | 0.0000 |  | 0.2500 |  |" in capsys.readouterr().out


def cache_lines(out):
    return [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]


def test_generation_with_tiny_model_on_cpu_is_resumable(tmp_path, parquet, tiny_model):
    out = tmp_path / "run"
    out.mkdir()
    digests = {record.id: request_digest(eval_request(record)) for record in load_records([parquet])}
    # An interrupted earlier run: two finished lines (c1's for a prompt since changed) and half of a third.
    cached = [
        {"id": "m1", "response": RESPONSES["m1"], "request": digests["m1"]},
        {"id": "c1", "response": RESPONSES["c1"], "request": digests["m2"]},
    ]
    (out / "generations.jsonl").write_text("".join(json.dumps(line) + "\n" for line in cached) + '{"id": "g1", "resp')
    args = [
        f"data={parquet}", f"model={tiny_model}", "backend=hf", "device=cpu", f"out_dir={out}",
        "max_new_tokens=6", "batch_size=2",
    ]  # fmt: skip

    assert main(args) == 0

    lines = cache_lines(out)
    assert lines[:2] == cached
    assert [line["id"] for line in lines[2:]] == ["m2", "c1", "g1", "o1"]
    assert all(line["request"] == digests[line["id"]] for line in lines[2:])
    assert lines[3]["response"] != RESPONSES["c1"]
    first_summary = (out / "summary.json").read_text()
    assert json.loads(first_summary)["tasks"]["all"]["n"] == 5
    # The tiny model never ends within 6 tokens; m1's line predates the record of truncation.
    assert [line["truncated"] for line in lines[2:]] == [True] * 4
    scored = {row["id"]: row["truncated"] for row in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}
    assert scored == {"m1": None, "m2": True, "c1": True, "g1": True, "o1": True}
    overall = json.loads(first_summary)["tasks"]["all"]
    assert (overall["truncated"], overall["truncated_zero_score"], overall["truncation_unknown"]) == (4, 4, 1)
    note = "Note: 4 of 5 responses were cut off at max_new_tokens=6 before an end token, 4 of them scoring 0; "
    assert note + "raise max_new_tokens to score complete answers." in (out / "summary.md").read_text()

    generations_before = (out / "generations.jsonl").read_text()
    assert main(args) == 0
    assert (out / "generations.jsonl").read_text() == generations_before
    assert (out / "summary.json").read_text() == first_summary
    assert not list(out.glob(".images-*"))  # the images spilled while it ran are gone


def spill_dirs(out):
    return sorted(out.glob(".images-*"))


def started_evaluation(parquet, model, out) -> subprocess.Popen:
    """An evaluation generating in a process of its own, once it has put its records' images in out_dir."""
    args = [f"data={parquet}", f"model={model}", "backend=hf", "device=cpu", f"out_dir={out}", "batch_size=1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "mixed_r1_verl.eval", *args, "max_new_tokens=16"], env=checkout_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not spill_dirs(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert spill_dirs(out) and process.poll() is None
    return process


def test_an_evaluation_stopped_or_killed_leaves_no_copy_of_its_images(tmp_path, tiny_model):
    parquet = tmp_path / "val.parquet"  # enough rows to be stopped while it generates
    many = [
        {**row, "extra_info": {**row["extra_info"], "id": f"{row['extra_info']['id']}-{n}"}}
        for n in range(20)
        for row in ROWS
    ]
    pq.write_table(pa.Table.from_pylist(many), parquet)
    out = tmp_path / "run"

    stopped = started_evaluation(parquet, tiny_model, out)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=120) == 128 + signal.SIGTERM and not spill_dirs(out)

    killed = started_evaluation(parquet, tiny_model, out)
    killed.kill()
    killed.wait(timeout=60)
    [abandoned] = spill_dirs(out)
    running = out / f"{spill_prefix(os.getpid())}x"  # this test's own process: still running
    running.mkdir()
    assert main([f"data={parquet}", f"model={tiny_model}", "backend=hf", "device=cpu", f"out_dir={out}", "limit=2",
                 "max_new_tokens=2"]) == 0  # fmt: skip
    assert spill_dirs(out) == [running]


def test_scoring_saved_generations_removes_the_images_a_killed_evaluation_left(tmp_path, parquet, tiny_model):
    out = tmp_path / "run"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = out / f"{spill_prefix(int(ended.stdout))}x" / "images"
    abandoned.mkdir(parents=True)
    running = out / f"{spill_prefix(os.getpid())}x"  # this test's own process: still running
    running.mkdir()
    assert score_saved(parquet, RESPONSES, out, tiny_model) == 0
    assert spill_dirs(out) == [running]


def test_records_loaded_with_their_images_spilled_hold_places_not_bytes(tmp_path, parquet):
    in_memory = load_records([parquet])
    spilled = SpilledImages(tmp_path / "images")
    records = load_records([parquet], spilled=spilled)

    blobs = [blob for record in records for blob in record.image_blobs]
    assert blobs and not any(isinstance(blob["bytes"], bytes) for blob in blobs)
    assert [record.image_items() for record in records] == [record.image_items() for record in in_memory]
    distinct = {blob["bytes"] for record in in_memory for blob in record.image_blobs}
    assert (tmp_path / "images").stat().st_size == sum(map(len, distinct))
    spilled.remove()
    counted = load_records([parquet], without_image_bytes=True)  # to score saved generations
    assert [len(record.image_blobs) for record in counted] == [len(record.image_blobs) for record in in_memory]
    assert all(blob["bytes"] is None for record in counted for blob in record.image_blobs)


def test_a_record_whose_prompt_or_image_changed_is_generated_again(tmp_path, tiny_model, caplog):
    caplog.set_level(logging.INFO)
    data, out = tmp_path / "val.parquet", tmp_path / "run"
    args = [f"data={data}", f"model={tiny_model}", "backend=hf", "device=cpu", f"out_dir={out}", "max_new_tokens=4"]
    pq.write_table(pa.Table.from_pylist(ROWS), data)
    assert main(args) == 0
    assert [line["id"] for line in cache_lines(out)] == ["m1", "m2", "c1", "g1", "o1"]

    changed = [dict(row) for row in ROWS]
    changed[0]["prompt"] = [{"role": "user", "content": "<image>Which pet? A. cat B. dog"}]  # m1
    changed[2]["images"] = [drawn_image(box=(4, 4, 20, 20))]  # c1
    pq.write_table(pa.Table.from_pylist(changed), data)
    assert main(args) == 0
    assert [line["id"] for line in cache_lines(out)[5:]] == ["m1", "c1"]
    said = "3 of 5 generations reused; generating 2 (2 of them for a prompt or image changed since)"
    assert f"{out / 'generations.jsonl'}: {said}" in caplog.text


def test_cached_generations_are_reused_only_with_the_same_model_and_sampling(tmp_path, parquet, tiny_model):
    out = tmp_path / "run"
    args = [f"data={parquet}", f"model={tiny_model}", "backend=hf", "device=cpu", f"out_dir={out}", "batch_size=5"]

    def responses():
        lines = (out / "generations.jsonl").read_text().splitlines()
        return {line["id"]: line["response"] for line in map(json.loads, lines)}

    assert main([*args, "max_new_tokens=2"]) == 0
    short = responses()
    assert main([*args, "max_new_tokens=2"]) == 0
    assert responses() == short
    assert main([*args, "max_new_tokens=8"]) == 0
    longer = responses()
    assert sorted(longer) == sorted(short)
    assert all(longer[key].startswith(short[key]) for key in short)  # greedy: the same start, continued
    assert sum(map(len, longer.values())) > sum(map(len, short.values()))
    assert json.loads((out / "summary.json").read_text())["run"]["sampling"]["max_new_tokens"] == 8
    assert json.loads((out / "model.json").read_text())["generator"] == HF_ON_CPU


HF_ON_CPU = {"backend": "hf", "device": "cpu", "dtype": "float32"}


def test_cached_generations_of_another_model_at_the_same_path_are_discarded(tmp_path):
    model, out, sampling = tmp_path / "model", tmp_path / "eval", {"max_new_tokens": 8}
    model.mkdir()
    out.mkdir()
    (model / "model.safetensors").write_bytes(b"0" * 10)
    discard_generations_made_otherwise(out, str(model), sampling, HF_ON_CPU)
    (out / "generations.jsonl").write_text('{"id": "a", "response": "x"}\n')
    discard_generations_made_otherwise(out, str(model), sampling, HF_ON_CPU)
    assert (out / "generations.jsonl").exists()
    (model / "model.safetensors").write_bytes(b"0" * 20)  # retrained in place
    discard_generations_made_otherwise(out, str(model), sampling, HF_ON_CPU)
    assert not (out / "generations.jsonl").exists()


@pytest.mark.parametrize("left", [b"", b'{"path": "/models/a", "samp', b"\xff\xfe", b"null"])
def test_cached_generations_beside_a_model_record_that_cannot_be_read_are_generated_again(
    tmp_path, tiny_model, caplog, left
):
    out, sampling = tmp_path / "eval", {"max_new_tokens": 8}
    out.mkdir()
    (out / "model.json").write_bytes(left)  # as a run killed while writing it left it
    (out / "generations.jsonl").write_text('{"id": "a", "response": "x"}\n')
    discard_generations_made_otherwise(out, tiny_model, sampling, HF_ON_CPU)
    assert not (out / "generations.jsonl").exists()
    assert f"{out / 'model.json'}: cannot be read" in caplog.text
    assert json.loads((out / "model.json").read_text())["generator"] == HF_ON_CPU
    assert sorted(path.name for path in out.iterdir()) == ["model.json"]


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda model: model.joinpath("chat_template.jinja").write_text("{{ 'SYSTEM: changed' }}"), "files.chat_template.jinja"),
        (lambda model: edit_json(model / "preprocessor_config.json", image_mean=[0.0, 0.0, 0.0]), "files.preprocessor_config.json"),
        (lambda model: edit_json(model / "tokenizer_config.json", chat_template="{{ messages }}"), "files.tokenizer_config.json"),
    ],
)  # fmt: skip
def test_cached_generations_are_discarded_when_the_prompt_or_image_processing_files_change(
    tmp_path, tiny_model_dir, caplog, change, named
):
    model, out, sampling = tmp_path / "model", tmp_path / "eval", {"max_new_tokens": 8}
    shutil.copytree(tiny_model_dir, model)
    out.mkdir()
    discard_generations_made_otherwise(out, str(model), sampling, HF_ON_CPU)
    (out / "generations.jsonl").write_text('{"id": "a", "response": "x"}\n')
    change(model)
    discard_generations_made_otherwise(out, str(model), sampling, HF_ON_CPU)
    assert not (out / "generations.jsonl").exists()
    assert f"written with another {named}; generating again" in caplog.text


def edit_json(path, **fields):
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_cached_generations_of_another_backend_or_dtype_are_discarded(tmp_path, tiny_model, caplog):
    out, sampling = tmp_path / "eval", {"max_new_tokens": 8}
    out.mkdir()
    discard_generations_made_otherwise(out, tiny_model, sampling, HF_ON_CPU)
    for generator, named in (
        ({"backend": "vllm", "dtype": "auto"}, "generator.backend, generator.device, generator.dtype"),
        ({"backend": "vllm", "dtype": "bfloat16"}, "generator.dtype"),
    ):
        (out / "generations.jsonl").write_text('{"id": "a", "response": "x"}\n')
        discard_generations_made_otherwise(out, tiny_model, sampling, generator)
        assert not (out / "generations.jsonl").exists()
        assert f"written with another {named}; generating again" in caplog.text
    # A record an earlier version wrote, without a key this one keeps: not said to differ.
    earlier = json.loads((out / "model.json").read_text())
    del earlier["generator"]["dtype"], earlier["sampling"]
    (out / "model.json").write_text(json.dumps(earlier))
    (out / "generations.jsonl").write_text('{"id": "a", "response": "x"}\n')
    discard_generations_made_otherwise(out, tiny_model, sampling, {"backend": "hf", "device": "cpu", "dtype": "float32"})
    assert "written with another generator.backend; no record of generator.device, generator.dtype, sampling (an " \
           "earlier version kept none); generating again" in caplog.text  # the vLLM record above had no device


def test_cached_vllm_generations_are_kept_only_under_the_engine_arguments_that_change_outputs(tmp_path, tiny_model, caplog):
    """A response cut off by a smaller max_model_len, or generated from fp8 weights, is no response of this run;
    memory and placement arguments change nothing generated."""
    from mixed_r1_verl.eval.cli import EvalSettings, generator_record

    def record(**vllm_kwargs) -> dict:
        return generator_record(EvalSettings(data="d.parquet", model=tiny_model, backend="vllm", vllm_kwargs=vllm_kwargs))

    assert record() == record(gpu_memory_utilization=0.5, enforce_eager=True) == {"backend": "vllm", "dtype": "auto"}
    assert record(max_model_len=4096, quantization="fp8", gpu_memory_utilization=0.5, dtype="bfloat16") == {
        "backend": "vllm", "dtype": "bfloat16", "engine_arguments": {"max_model_len": 4096, "quantization": "fp8"},
    }  # fmt: skip
    out, sampling = tmp_path / "eval", {"max_new_tokens": 8}
    out.mkdir()
    discard_generations_made_otherwise(out, tiny_model, sampling, record(max_model_len=2048))
    (out / "generations.jsonl").write_text('{"id": "a", "response": "x"}\n')
    discard_generations_made_otherwise(out, tiny_model, sampling, record(max_model_len=2048, max_num_seqs=8))
    assert (out / "generations.jsonl").exists()
    discard_generations_made_otherwise(out, tiny_model, sampling, record(max_model_len=8192))
    assert not (out / "generations.jsonl").exists()
    assert "written with another generator.engine_arguments.max_model_len; generating again" in caplog.text


def test_a_hub_id_is_fingerprinted_by_its_cached_snapshot_wherever_the_command_runs(
    tmp_path, tiny_model_dir, monkeypatch, caplog
):
    from huggingface_hub import constants

    from hf_cache import REVISION, write_hf_cache

    write_hf_cache(tmp_path / "hf", "acme/tiny", tiny_model_dir, sharded=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out, sampling = tmp_path / "eval", {"max_new_tokens": 8}
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    fingerprint = model_fingerprint("acme/tiny")
    assert fingerprint["hub_id"] == "acme/tiny" and fingerprint["revision"] == REVISION and "path" not in fingerprint
    assert fingerprint["files"]["chat_template.jinja"] == hashlib.sha256(
        (tiny_model_dir / "chat_template.jinja").read_bytes()
    ).hexdigest()
    discard_generations_made_otherwise(out, "acme/tiny", sampling, HF_ON_CPU)
    (out / "generations.jsonl").write_text('{"id": "a", "response": "x"}\n')
    monkeypatch.chdir(out)
    assert model_fingerprint("acme/tiny") == fingerprint
    discard_generations_made_otherwise(out, "acme/tiny", sampling, HF_ON_CPU)
    assert (out / "generations.jsonl").exists()
    # A newer snapshot of the same id in the cache, as a download after an update on the hub leaves it.
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny"
    newer = "f" * 40
    shutil.copytree(repo / "snapshots" / REVISION, repo / "snapshots" / newer, symlinks=True)
    (repo / "refs" / "main").write_text(newer)
    discard_generations_made_otherwise(out, "acme/tiny", sampling, HF_ON_CPU)
    assert not (out / "generations.jsonl").exists()
    assert "written with another revision; generating again" in caplog.text


def test_a_reward_error_keeps_its_reason_with_its_record_in_the_scores(tmp_path, caplog):
    frame = {"box_frame": "abs", "frame_size": [64, 48]}
    rows = [row(f"g{i}", "grounding", "refcoco", "Find the red box.", "[0, 0, 40, 40]", **frame) for i in range(3)]
    rows[1]["reward_model"]["ground_truth"] = "the red box"  # no box the grounding reward can read
    parquet = tmp_path / "val.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    answers = {f"g{i}": f"{THINK}<answer>[0, 0, 40, 40]</answer>" for i in range(3)}
    assert score_saved(parquet, answers, tmp_path / "run") == 0
    scores = [json.loads(line) for line in (tmp_path / "run" / "scores.jsonl").read_text().splitlines()]
    reason = "ValueError: could not convert string to float: 'the red box'"
    assert [(score["error"], score["error_reason"]) for score in scores] == [(0.0, ""), (1.0, reason), (0.0, "")]
    assert f"mixed_r1 reward error, sample (data_source='refcoco', id='g1'): {reason}" in caplog.text


def test_compare_puts_two_runs_side_by_side(tmp_path, parquet, tiny_model, capsys):
    runs = []
    for name, responses in (("base", {**RESPONSES, "c1": "<answer>7</answer>"}), ("tuned", RESPONSES)):
        score_saved(parquet, responses, tmp_path / name, tiny_model)
        runs.append(str(tmp_path / name))
    capsys.readouterr()

    assert main([f"compare=[{runs[0]},{runs[1]}]", f"out_dir={tmp_path / 'cmp'}"]) == 0

    printed = capsys.readouterr().out
    assert "accuracy base" in printed and "accuracy tuned" in printed
    rows = {(r[0], r[1]): r for r in json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]}
    chart = rows[("task", "chart")]
    assert chart[4:7] == [0.0, 1.0, 1.0]  # accuracy base, tuned, delta
    assert rows[("task", "matching")][6] == 0.0
    assert (tmp_path / "cmp" / "compare.csv").exists() and (tmp_path / "cmp" / "compare.md").exists()
    assert "Warning" not in printed and "n differs" not in printed


def test_compare_puts_more_runs_side_by_side_with_deltas_from_the_first(tmp_path, parquet, tiny_model, capsys):
    answers = {
        "base": {**RESPONSES, "c1": "<answer>7</answer>", "m1": "B"},
        "step_100": {**RESPONSES, "c1": "<answer>7</answer>"},
        "step_200": RESPONSES,
    }
    for name, responses in answers.items():
        score_saved(parquet, responses, tmp_path / name, tiny_model)
    runs = ",".join(str(tmp_path / name) for name in answers)
    capsys.readouterr()

    assert main([f"compare=[{runs}]", "labels=[base,100,200]", f"out_dir={tmp_path / 'cmp'}"]) == 0

    compared = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    header = compared["header"]
    assert compared["runs"] == ["base", "100", "200"]
    assert header[:5] == ["level", "name", "n base", "n 100", "n 200"]
    accuracy = header.index("accuracy base")
    assert header[accuracy : accuracy + 5] == [
        "accuracy base", "accuracy 100", "accuracy 200", "Δ accuracy 100", "Δ accuracy 200",
    ]  # fmt: skip
    assert header[-3:] == ["truncated base", "truncated 100", "truncated 200"]
    rows = {(r[0], r[1]): dict(zip(header, r)) for r in compared["rows"]}
    summaries = {name: json.loads((tmp_path / name / "summary.json").read_text()) for name in answers}
    for (level, name), row in rows.items():
        stats = [summaries[run]["tasks" if level == "task" else "data_sources"][name] for run in answers]
        for metric in ("accuracy", "format", "score"):
            values = [entry[metric] for entry in stats]
            assert [row[f"{metric} {label}"] for label in ("base", "100", "200")] == values
            assert row[f"Δ {metric} 100"] == pytest.approx(values[1] - values[0])
            assert row[f"Δ {metric} 200"] == pytest.approx(values[2] - values[0])
    assert (rows["task", "chart"]["Δ accuracy 100"], rows["task", "chart"]["Δ accuracy 200"]) == (0.0, 1.0)
    assert rows["task", "matching"]["Δ format 100"] == 0.5
    printed = capsys.readouterr().out
    assert "Warning" not in printed and "| Δ score 200 |" in printed


def test_compare_warns_when_the_runs_evaluated_different_records(tmp_path, parquet, tiny_model, capsys):
    score_saved(parquet, RESPONSES, tmp_path / "full", tiny_model)
    limited = tmp_path / "limited"
    assert main([f"data={parquet}", f"generations={tmp_path / 'full.jsonl'}", f"out_dir={limited}", "limit=2"]) == 0
    runs = f"compare=[{tmp_path / 'full'},{limited}]"
    capsys.readouterr()

    assert main([runs, f"out_dir={tmp_path / 'cmp'}"]) == 0

    printed = capsys.readouterr().out
    assert printed.startswith("Warning: the runs evaluated different records (full 5, limited 2, 2 in common)")
    compared = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert compared["header"][-1] == "n differs" and compared["notice"].startswith("Warning")
    rows = {(r[0], r[1]): r for r in compared["rows"]}
    assert rows[("task", "matching")][2:4] == [2, 2] and rows[("task", "matching")][-1] == ""
    assert rows[("task", "chart")][2:4] == [1, ""] and rows[("task", "chart")][-1] == "yes"
    assert rows[("task", "all")][2:4] == [5, 2] and rows[("task", "all")][-1] == "yes"
    assert rows[("task", "all")][6] == pytest.approx(rows[("task", "all")][5] - rows[("task", "all")][4])

    (limited / "scores.jsonl").unlink()  # a run kept without its scores: compared by n alone
    assert main([runs]) == 0
    assert capsys.readouterr().out.startswith(
        "Warning: the runs evaluated different records (full 5, limited 2; ids not compared: a run has no scores.jsonl)"
    )


def test_the_summary_records_the_data_model_settings_and_code_that_produced_it(tmp_path, parquet, tiny_model):
    out = tmp_path / "run"
    args = [f"data={parquet}", f"model={tiny_model}", "backend=hf", "device=cpu", f"out_dir={out}", "max_new_tokens=2"]
    assert main([*args, "limit=2", "batch_size=3"]) == 0

    run = json.loads((out / "summary.json").read_text())["run"]
    data_sha256 = hashlib.sha256(parquet.read_bytes()).hexdigest()
    assert run["data_files"] == [{"path": str(parquet.resolve()), "bytes": parquet.stat().st_size, "sha256": data_sha256}]
    fingerprint = json.loads((out / "model.json").read_text())
    assert run["model_files"] == {key: value for key, value in fingerprint.items() if key in ("path", "weights", "files")}
    assert run["model_files"]["path"] == str(Path(tiny_model).resolve())
    assert (run["limit"], run["batch_size"], run["generator"]) == (2, 3, HF_ON_CPU)
    assert run["sampling"]["max_new_tokens"] == 2
    assert run["code"]["version"] and len(run["code"]["git_commit"] or "0" * 40) == 40

    assert score_saved(parquet, RESPONSES, tmp_path / "saved", tiny_model) == 0
    saved = json.loads((tmp_path / "saved" / "summary.json").read_text())["run"]
    generations = tmp_path / "saved.jsonl"
    assert saved["generations_file"]["sha256"] == hashlib.sha256(generations.read_bytes()).hexdigest()
    assert (saved["sampling"], saved["generator"], saved["model_files"]) == (None, None, None)


def test_compare_warns_when_the_runs_differ_in_more_than_the_model(tmp_path, parquet, tiny_model, capsys):
    generations = tmp_path / "base.jsonl"
    score_saved(parquet, RESPONSES, tmp_path / "base", tiny_model)
    other_table = shutil.copytree(tiny_model, tmp_path / "tuned_model")
    scored = [f"data={parquet}", f"generations={generations}", f"out_dir={tmp_path / 'tuned'}"]
    assert main([*scored, f"embedding_model={other_table}", "format_weight=0.2"]) == 0
    capsys.readouterr()

    assert main([f"compare=[{tmp_path / 'base'},{tmp_path / 'tuned'}]", f"out_dir={tmp_path / 'cmp'}"]) == 0

    warning = (
        "Warning: the runs differ in more than the model (reward_kwargs.embedding_model: "
        f"base {str(Path(tiny_model).resolve())!r}, tuned {str(other_table)!r}; reward_kwargs.format_weight: "
        "base None, tuned '0.2'); their deltas measure these differences too."
    )
    assert capsys.readouterr().out.startswith(warning)
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["notice"] == warning

    # A third run: each setting lists the first run's value and every run's that differs from it.
    strict = [f"data={parquet}", f"generations={generations}", f"out_dir={tmp_path / 'strict'}", "limit=3"]
    assert main([*strict, f"embedding_model={tiny_model}", "format_weight=0.5"]) == 0
    capsys.readouterr()
    assert main([f"compare=[{tmp_path / 'base'},{tmp_path / 'tuned'},{tmp_path / 'strict'}]"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(
        "Warning: the runs evaluated different records (base 5, tuned 5, strict 3, 3 in common); "
    )
    assert (
        f"(reward_kwargs.embedding_model: base {str(Path(tiny_model).resolve())!r}, tuned {str(other_table)!r}; "
        "reward_kwargs.format_weight: base None, tuned '0.2', strict '0.5'; limit: base None, strict 3)"
    ) in printed


def test_missing_saved_generation_is_reported_by_id(tmp_path, parquet, tiny_model):
    partial = {key: value for key, value in RESPONSES.items() if key != "g1"}
    with pytest.raises(SystemExit, match=r"no response for 1 of 5 record\(s\), e.g. \['g1'\]"):
        score_saved(parquet, partial, tmp_path / "run", tiny_model)


def test_an_id_on_two_lines_of_saved_generations_names_both_lines(tmp_path):
    generations = tmp_path / "responses.jsonl"
    lines = [{"id": "m1", "response": "B"}, {"id": "c1", "response": "4"}, {"id": "m1", "response": "A"}]
    generations.write_text("".join(json.dumps(line) + "\n" for line in lines))
    message = rf"{generations}: id 'm1' has a response on line 1 and again on line 3"
    with pytest.raises(GenerationFileError, match=message):
        read_generations(generations)


def test_a_cache_line_for_a_changed_request_replaces_the_earlier_line(tmp_path):
    generations = tmp_path / "generations.jsonl"
    lines = [{"id": "m1", "response": "B", "request": "old"}, {"id": "m1", "response": "A", "request": "new"}]
    generations.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert read_generations(generations) == {"m1": Completion("A")}


def test_responses_cut_off_at_the_token_limit_are_counted_per_task_and_named_under_the_table(
    tmp_path, parquet, tiny_model, capsys
):
    truncated = {"m1": True, "m2": False, "c1": True, "g1": False}  # o1's line does not say
    responses = {**RESPONSES, "m1": f"{THINK}<answer>B"}  # m1 ran out before closing its answer: 0
    generations = tmp_path / "cut.jsonl"
    generations.write_text(
        "".join(
            json.dumps({"id": key, "response": text, **({"truncated": truncated[key]} if key in truncated else {})})
            + "\n"
            for key, text in responses.items()
        )
    )
    out = tmp_path / "cut"

    scored = [f"data={parquet}", f"generations={generations}", f"out_dir={out}", f"embedding_model={tiny_model}"]
    assert main(scored) == 0

    rows = {row["id"]: row for row in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}
    assert {key: row["truncated"] for key, row in rows.items()} == {**truncated, "o1": None}
    assert rows["m1"]["score"] == 0 and rows["c1"]["score"] == 1  # c1 was cut off after its answer
    tasks = json.loads((out / "summary.json").read_text())["tasks"]
    assert [tasks["matching"][key] for key in ("truncated", "truncated_zero_score", "truncation_unknown")] == [1, 1, 0]
    assert [tasks["all"][key] for key in ("truncated", "truncated_zero_score", "truncation_unknown")] == [2, 1, 1]
    markdown = (out / "summary.md").read_text()
    assert "| matching | 2 | 0.0000 | 0.0000 | 0.0000 | 0.0000 | 0 | 1 |" in markdown
    assert "| open_ended | 1 | 1.0000 | 1.0000 | 1.0000 | 1.0000 | 0 | unknown |" in markdown
    assert "| all | 5 | 0.4667 | 0.4000 | 0.6000 | 0.4800 | 0 | 2, 1 unknown |" in markdown
    note = (
        "| all | 5 | 0.4667 | 0.4000 | 0.6000 | 0.4800 | 0 | 2, 1 unknown |\n\nNote: 2 of 5 responses were cut off at the "
        "token limit they were generated with before an end token, 1 of them scoring 0; raise the generating "
        "run's max_new_tokens to score complete answers.\n\n### Per data_source"
    )
    assert note in markdown and note in capsys.readouterr().out
    with open(out / "summary.csv") as table:
        csv_rows = {(r["level"], r["name"]): r for r in csv.DictReader(table)}
    assert (csv_rows[("task", "all")]["truncated"], csv_rows[("task", "all")]["truncation_unknown"]) == ("2", "1")

    assert score_saved(parquet, RESPONSES, tmp_path / "full", tiny_model) == 0
    older = tmp_path / "full" / "summary.json"  # as written before truncation was counted
    summary = json.loads(older.read_text())
    for stats in [*summary["tasks"].values(), *summary["data_sources"].values()]:
        for key in ("truncated", "truncated_zero_score", "truncation_unknown"):
            del stats[key]
    older.write_text(json.dumps(summary))
    assert main([f"compare=[{out},{tmp_path / 'full'}]", f"out_dir={tmp_path / 'cmp'}"]) == 0
    compared = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert compared["header"][-2:] == ["truncated cut", "truncated full"]
    rows = {(r[0], r[1]): r for r in compared["rows"]}
    assert rows[("task", "all")][-2:] == ["2, 1 unknown", "unknown"] and rows[("task", "chart")][-2:] == [1, "unknown"]


def test_a_generations_line_whose_truncated_is_not_a_boolean_names_its_line(tmp_path):
    generations = tmp_path / "responses.jsonl"
    lines = [{"id": "m1", "response": "B", "truncated": False}, {"id": "c1", "response": "4", "truncated": "length"}]
    generations.write_text("".join(json.dumps(line) + "\n" for line in lines))
    message = rf"{generations}: line 2: .*truncated of id 'c1' is 'length', not true, false or null"
    with pytest.raises(GenerationFileError, match=message):
        read_generations(generations)


def test_saved_generations_for_ids_not_in_the_data_are_reported(tmp_path, parquet, capsys):
    generations = tmp_path / "responses.jsonl"
    responses = {**RESPONSES, "ghost-1": "<answer>A</answer>", "ghost-2": "<answer>B</answer>"}
    generations.write_text("".join(json.dumps({"id": key, "response": text}) + "\n" for key, text in responses.items()))
    out = tmp_path / "run"
    # limit=2 scores m1 and m2; c1, g1 and o1 are in the data beyond the limit, not unknown.
    assert main([f"data={parquet}", f"generations={generations}", f"out_dir={out}", "limit=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["all"]["n"] == 2
    assert summary["run"]["generations_not_in_data"] == {"count": 2, "first_ids": ["ghost-1", "ghost-2"]}
    note = f"Note: 2 id(s) in {generations} are in none of the data's rows and were not scored, e.g. "
    note += "['ghost-1', 'ghost-2']"
    assert note in capsys.readouterr().out and note in (out / "summary.md").read_text()


def test_a_model_of_another_family_than_the_data_was_converted_for_is_refused(tmp_path, parquet, tiny_internvl_dir):
    # g1's box is in Qwen2.5-VL's pixel frame; an InternVL answers in 0-1000.
    args = [f"data={parquet}", f"model={tiny_internvl_dir}", "backend=hf", "device=cpu", f"out_dir={tmp_path / 'run'}"]
    refused = r"record 'g1': .*boxes in the abs frame .* internvl models .*model_family=internvl"
    with pytest.raises(SystemExit, match=refused):
        main(args)
    assert not (tmp_path / "run" / "generations.jsonl").exists()
    unframed = tmp_path / "unframed.parquet"  # a box in no stated frame is scored as it stands
    pq.write_table(pa.Table.from_pylist([row("g1", "grounding", "refcoco", "Find the red box.", "[0, 0, 40, 40]")]),
                   unframed)  # fmt: skip
    with pytest.raises(SystemExit, match=r"record 'g1': it is a grounding row without extra_info.box_frame"):
        main([f"data={unframed}", *args[1:]])
    by_source = row("g1", None, "refcoco", "Find the red box.", "[0, 0, 40, 40]")  # grounding by its data_source
    pq.write_table(pa.Table.from_pylist([by_source]), unframed)
    with pytest.raises(SystemExit, match=r"record 'g1': it is a grounding row without extra_info.box_frame"):
        main([f"data={unframed}", *args[1:]])


def grpo_checkpoint(root, resaved_model_dir):
    """verl's GRPO checkpoint layout: the actor's shards, and beside them its Hugging Face copy as saved
    without hf_model in save_contents (config and processor, no weights)."""
    actor = root / "global_step_6" / "actor"
    shutil.copytree(resaved_model_dir, actor / "huggingface", ignore=shutil.ignore_patterns("*.safetensors"))
    (actor / "model_world_size_1_rank_0.pt").write_bytes(b"shard")
    return actor.parent


def test_a_verl_checkpoint_as_model_is_refused_naming_what_to_pass(tmp_path, parquet, resaved_model_dir):
    step = grpo_checkpoint(tmp_path, resaved_model_dir)
    copy = step / "actor" / "huggingface"
    export = f"python -m mixed_r1_verl.export checkpoint={step / 'actor'} out_dir=HF_DIR"
    out = tmp_path / "run"

    def refusal(model):
        with pytest.raises(SystemExit) as stopped:
            main([f"data={parquet}", f"model={model}", "backend=hf", "device=cpu", f"out_dir={out}"])
        return str(stopped.value.code)

    assert refusal(step) == (
        f"FileNotFoundError: {step} is a verl checkpoint, not a Hugging Face model directory, and {copy} has "
        f"no weights: export it first, its shards merged: {export}"
    )
    assert export in refusal(step / "actor")
    assert refusal(copy).startswith(f"FileNotFoundError: {copy} has config.json but no weights") and export in refusal(copy)
    assert refusal(tmp_path) == f"FileNotFoundError: {tmp_path} is not a Hugging Face model directory (no config.json)"
    shutil.copy(resaved_model_dir / "model.safetensors", copy)
    assert refusal(step).endswith(f"is a verl checkpoint, not a Hugging Face model directory: pass its model, {copy}")
    # Weights without a tokenizer: transformers would build an empty one and generate from nothing.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (copy / name).unlink()
    assert refusal(copy) == (
        f"FileNotFoundError: {copy} has no tokenizer (tokenizer.json, tokenizer.model, vocab.json), and transformers "
        "would build an empty one without an error: copy the tokenizer files of the model it was trained from into it"
    )
    assert not out.exists()


def cached_responses(out, parquet, responses):
    """A generation cache answering every record of `parquet` with `responses`, as an earlier run wrote it."""
    out.mkdir(parents=True)
    lines = [
        {"id": record.id, "response": responses[record.id], "request": request_digest(eval_request(record))}
        for record in load_records([parquet])
    ]
    (out / "generations.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def card_results(card_file):
    """The model-index results of a card: {(data_source, metric): value}."""
    card = ModelCard(card_file.read_text())
    return card, {(result.dataset_type, result.metric_type): result.metric_value for result in card.data.eval_results}


def test_card_true_records_the_results_in_the_exported_models_card(tmp_path, parquet, tiny_model, capsys):
    model = tmp_path / "exports" / "qwen-mixed"
    shutil.copytree(tiny_model, model)
    run = {"actor_rollout_ref": {"model": {"path": "Qwen/Qwen2.5-VL-3B-Instruct"}}}
    (model / "README.md").write_text(model_card("qwen-mixed", "GRPO", 6, run, False, "bfloat16"))
    out = tmp_path / "eval" / "qwen-mixed"
    cached_responses(out, parquet, RESPONSES)
    args = [f"data={parquet}", f"model={model}", "backend=hf", "device=cpu", f"out_dir={out}", "card=true"]

    assert main(args) == 0

    assert f"Results recorded in {model / 'README.md'}" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    card, results = card_results(model / "README.md")
    assert card.data.base_model == "Qwen/Qwen2.5-VL-3B-Instruct" and card.data.tags == ["mixed-r1", "grpo", "verl"]
    assert card.data.model_name == "qwen-mixed"
    assert results == {
        (source, metric): round(stats[statistic], 4)
        for source, stats in summary["data_sources"].items()
        for statistic, metric in (("correct", "accuracy"), ("format", "format_rate"), ("score", "mean_reward"))
    }
    assert results["mmbench", "accuracy"] == 0.5 and results["chartqa", "accuracy"] == 1.0
    # RefCOCO's accuracy is Acc@0.5 (its one box has IoU 1/3), not the mean IoU the table's accuracy holds.
    refcoco = summary["data_sources"]["refcoco"]
    assert (results["refcoco", "accuracy"], refcoco["accuracy"]) == (0.0, pytest.approx(1 / 3))
    assert "Accuracy in the model-index is the table's `correct`" in card.text
    assert "(chart 1, grounding 0.5, matching 1, open_ended 0.5)" in card.text
    text = card.text
    sections = ("# qwen-mixed", "## Evaluation\n", "### On val.parquet", "## Use")
    assert [text.index(heading) for heading in sections] == sorted(text.index(heading) for heading in sections)
    task_table = (out / "summary.md").read_text().split("### Per task\n\n")[1].split("\n\n")[0]
    assert task_table in text
    assert "5 records of `val.parquet` (sha256 `" in text and "answered by transformers (dtype float32), greedy" in text
    assert "open_ended by BMAS over the token embeddings of `qwen-mixed`" in text
    assert (
        "python -m mixed_r1_verl.eval data=val.parquet model=qwen-mixed backend=hf temperature=0.0 top_p=1.0 "
        "max_new_tokens=1024 seed=0 out_dir=eval/qwen-mixed\n"
    ) in text
    assert str(tmp_path) not in (model / "README.md").read_text()

    # Scored again on the same data with another format weight: its results replace the first ones.
    assert main([*args, "format_weight=0.5"]) == 0
    card, again = card_results(model / "README.md")
    assert again.keys() == results.keys() and again["chartqa", "mean_reward"] == results["chartqa", "mean_reward"]
    assert again["refcoco", "mean_reward"] != results["refcoco", "mean_reward"]
    assert card.text.count("<!-- mixed-r1 eval: val.parquet sha256=") == 1 and "format_weight 0.5" in card.text

    # Other data: its results go beside the first ones.
    test_parquet = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist([{**ROWS[2], "data_source": "chartqa_test"}]), test_parquet)
    other_out = tmp_path / "eval" / "test"
    cached_responses(other_out, test_parquet, RESPONSES)
    assert main([f"data={test_parquet}", *args[1:3], "device=cpu", f"out_dir={other_out}", "card=true"]) == 0
    card, both = card_results(model / "README.md")
    assert both == {**again, ("chartqa_test", "accuracy"): 1.0, ("chartqa_test", "format_rate"): 1.0,
                    ("chartqa_test", "mean_reward"): 1.0}  # fmt: skip
    assert card.text.index("### On val.parquet") < card.text.index("### On test.parquet") < card.text.index("## Use")


def test_a_cards_vllm_run_names_and_repeats_the_engine_arguments_that_shape_its_numbers():
    """A card of an fp8 run at a short max_model_len must say so, and its command must run that way."""
    from mixed_r1_verl.eval.card import how_evaluated, repeat_command

    generator = {"backend": "vllm", "dtype": "bfloat16", "engine_arguments": {"max_model_len": 4096, "quantization": "fp8"}}
    summary = {
        "tasks": {"all": {"n": 5}, "chart": {"n": 5}},
        "run": {
            "sampling": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 1024, "seed": 0}, "generator": generator,
            "data": ["/data/chartqa/val.parquet"], "data_files": [{"path": "/data/chartqa/val.parquet", "sha256": "ab" * 32}],
            "reward_kwargs": {}, "code": {"version": "0.1.0"},
        },
    }  # fmt: skip
    assert "answered by vLLM (dtype bfloat16, max_model_len 4096, quantization fp8), greedy" in how_evaluated(
        summary, "qwen-mixed", "qwen-mixed"
    )
    assert repeat_command(summary, "qwen-mixed", "qwen-mixed") == (
        "python -m mixed_r1_verl.eval data=val.parquet model=qwen-mixed backend=vllm temperature=0.0 top_p=1.0 "
        "max_new_tokens=1024 seed=0 vllm_kwargs.dtype=bfloat16 vllm_kwargs.max_model_len=4096 "
        "vllm_kwargs.quantization=fp8 out_dir=eval/qwen-mixed"
    )


def test_the_cards_command_repeats_its_numbers_and_each_data_file_keeps_its_results(
    tmp_path, parquet, tiny_model, monkeypatch
):
    """The command under a card's table, run where the model and the data are, gives the table's numbers: it
    holds the reward options the run was scored with. Results on another file of the same data_sources go
    beside the first ones in the model-index."""
    exports = tmp_path / "exports"
    model = exports / "qwen-mixed"
    shutil.copytree(tiny_model, model)
    shutil.copy(parquet, exports / "val.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[::-1]), exports / "train.parquet")  # other data: the rows reordered
    for out in ("val.parquet", "train.parquet", "defaults", "qwen-mixed"):
        cached_responses(exports / "eval" / out, parquet, RESPONSES)
    monkeypatch.chdir(exports)
    run = ["model=qwen-mixed", "backend=hf", "device=cpu", "card=true"]
    options = ["format_weight={grounding: 0.5}", "iou_threshold=0.5"]
    assert main(["data=val.parquet", *run, "out_dir=eval/val.parquet", *options]) == 0
    scored = json.loads((exports / "eval" / "val.parquet" / "summary.json").read_text())["tasks"]
    assert main(["data=val.parquet", *run[:3], "out_dir=eval/defaults"]) == 0
    defaults = json.loads((exports / "eval" / "defaults" / "summary.json").read_text())["tasks"]
    assert (scored["grounding"]["accuracy"], defaults["grounding"]["accuracy"]) == (0.0, pytest.approx(1 / 3))
    assert (scored["grounding"]["score"], defaults["grounding"]["score"]) == (0.5, pytest.approx(0.9 / 3 + 0.1))

    [command] = [line for line in (model / "README.md").read_text().splitlines() if line.startswith("python -m")]
    assert "'format_weight={grounding: 0.5}' iou_threshold=0.5 out_dir=eval/qwen-mixed" in command
    assert main(shlex.split(command)[3:]) == 0
    assert json.loads((exports / "eval" / "qwen-mixed" / "summary.json").read_text())["tasks"] == scored

    assert main(["data=train.parquet", *run, "out_dir=eval/train.parquet"]) == 0
    card = ModelCard((model / "README.md").read_text())
    splits = [result.dataset_split for result in card.data.eval_results]
    assert sorted(set(splits)) == ["train.parquet", "val.parquet"]
    assert splits.count("val.parquet") == splits.count("train.parquet") == 3 * len({row['data_source'] for row in ROWS})


BENCHMARKS = {
    "chartqa": [ROWS[2]],
    "pope": [row("p1", "matching", "pope", "A red box?", "yes"), row("p2", "matching", "pope", "A cat?", "no")],
}
BENCHMARK_RESPONSES = {**RESPONSES, "p1": f"{THINK}<answer>yes</answer>", "p2": f"{THINK}<answer>yes</answer>"}


def evaluate_into_card(tmp_path, model, benchmark, out_name, *settings, responses=BENCHMARK_RESPONSES):
    """`benchmark` converted whole (val_ratio=1: the converter writes val.parquet) and evaluated into the card
    of `model` with `responses`; returns the card and its model-index results."""
    data = tmp_path / benchmark / "val.parquet"
    if not data.exists():
        data.parent.mkdir()
        pq.write_table(pa.Table.from_pylist(BENCHMARKS[benchmark]), data)
    out = tmp_path / "eval" / out_name
    cached_responses(out, data, responses)
    run = [f"data={data}", f"model={model}", "backend=hf", "device=cpu", f"out_dir={out}", "card=true"]
    assert main([*run, *settings]) == 0
    return card_results(model / "README.md")


def test_benchmarks_each_converted_to_a_val_parquet_keep_their_results_in_one_card(tmp_path, tiny_model):
    model = shutil.copytree(tiny_model, tmp_path / "qwen-mixed")
    evaluate_into_card(tmp_path, model, "chartqa", "chartqa")

    card, results = evaluate_into_card(tmp_path, model, "pope", "pope")

    assert results == {
        ("chartqa", "accuracy"): 1.0, ("chartqa", "format_rate"): 1.0, ("chartqa", "mean_reward"): 1.0,
        ("pope", "accuracy"): 0.5, ("pope", "format_rate"): 1.0, ("pope", "mean_reward"): 0.55,
    }  # fmt: skip
    digests = {name: hashlib.sha256((tmp_path / name / "val.parquet").read_bytes()).hexdigest() for name in BENCHMARKS}
    assert {(r.dataset_type, r.dataset_split, r.dataset_revision) for r in card.data.eval_results} == {
        ("chartqa", "val.parquet", digests["chartqa"]), ("pope", "val.parquet", digests["pope"])
    }  # fmt: skip
    assert card.text.index("### On val.parquet (chartqa)") < card.text.index("### On val.parquet (pope)")

    # The same data again (its file's content), answered otherwise: it replaces that benchmark's results alone.
    wrong = {**BENCHMARK_RESPONSES, "c1": "<answer>7</answer>"}
    card, again = evaluate_into_card(tmp_path, model, "chartqa", "chartqa_again", "format_weight=0.5", responses=wrong)
    chartqa_now = {("chartqa", "accuracy"): 0.0, ("chartqa", "format_rate"): 0.0, ("chartqa", "mean_reward"): 0.0}
    assert again == {**results, **chartqa_now} and len(card.data.eval_results) == 6
    assert card.text.count("### On val.parquet (chartqa)") == card.text.count("### On val.parquet (pope)") == 1
    assert card.text.index("### On val.parquet (pope)") < card.text.index("format_weight 0.5")


def test_a_card_written_before_results_named_their_datas_content_keeps_its_other_benchmarks(tmp_path, tiny_model):
    model = shutil.copytree(tiny_model, tmp_path / "qwen-mixed")
    evaluate_into_card(tmp_path, model, "chartqa", "chartqa")
    card_file = model / "README.md"
    # As such a card was written: results without a revision, a block marker naming the files alone.
    earlier = re.sub(r"\n +revision: [0-9a-f]+", "", card_file.read_text())
    card_file.write_text(re.sub(r"(<!-- mixed-r1 eval: val.parquet) sha256=[0-9a-f]+", r"\1", earlier))
    card, results = card_results(card_file)
    assert [r.dataset_revision for r in card.data.eval_results] == [None] * 3

    card, results = evaluate_into_card(tmp_path, model, "pope", "pope")

    assert {source for source, _ in results} == {"chartqa", "pope"}
    assert "<!-- mixed-r1 eval: val.parquet -->\n### On val.parquet (chartqa)" in card.text
    assert "### On val.parquet (pope)" in card.text

    # Evaluated again on those file names, the benchmark's earlier results and block are replaced.
    card, results = evaluate_into_card(tmp_path, model, "chartqa", "chartqa_again")
    assert sorted((r.dataset_type, r.dataset_revision is None) for r in card.data.eval_results) == sorted(
        [("chartqa", False)] * 3 + [("pope", False)] * 3
    )
    assert "<!-- mixed-r1 eval: val.parquet -->" not in card.text
    assert card.text.count("### On val.parquet (chartqa)") == card.text.count("### On val.parquet (pope)") == 1


@pytest.mark.parametrize(
    "setting, message",
    [
        ("device=gpu", "ValueError: device=gpu: not a device torch knows"),
        ("device=cuda:64", "ValueError: device=cuda:64: no such CUDA GPU here"),
        pytest.param(
            "backend=vllm", "ValueError: backend=vllm: vLLM is not installed",
            marks=pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed"),
        ),
    ],
)  # fmt: skip
def test_a_generator_that_cannot_start_stops_the_run_before_the_cache_is_touched(
    tmp_path, parquet, tiny_model, setting, message
):
    out = tmp_path / "run"
    cached_responses(out, parquet, RESPONSES)
    args = [f"data={parquet}", f"model={tiny_model}", "backend=hf", f"out_dir={out}", "max_new_tokens=4"]
    discard_generations_made_otherwise(out, tiny_model, sampling_record(checked_settings(args)), HF_ON_CPU)
    cached = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(SystemExit) as stopped:
        main([*args, setting])
    assert str(stopped.value.code).startswith(message)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == cached


def test_an_embedding_model_that_cannot_load_stops_the_run_before_any_generation(tmp_path, parquet, tiny_model):
    out = tmp_path / "run"
    args = [f"data={parquet}", f"model={tiny_model}", "backend=hf", "device=cpu", f"out_dir={out}"]
    with pytest.raises(SystemExit, match=r"ValueError: embedding_model=.*no_table: BMAS embedding model .* load"):
        main([*args, f"embedding_model={tmp_path / 'no_table'}"])
    assert not (out / "generations.jsonl").exists() and not (out / "scores.jsonl").exists()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("format_weight={matchng: 0.5}", "format_weight: 'matchng' is not a task"),
        ("format_weight=1.5", "format_weight: 1.5 is not a number in [0, 1]"),
        ("format_weight={matching:0.5}", "format_weight: 'matching:0.5' is not a task"),  # YAML wants "key: value"
        ("correct_threshold=1.5", "correct_threshold: 1.5 is not a number in [0, 1]"),
        ("correct_threshold={groundng: 0.5}", "correct_threshold: 'groundng' is not a task"),
        ("iou_threshold=1.5", "iou_threshold: 1.5 is not a number in (0, 1]"),
        ("iou_threshold=0", "iou_threshold: 0.0 is not a number in (0, 1]"),
    ],
)
def test_reward_options_naming_no_task_or_out_of_range_stop_the_run(
    tmp_path, parquet, tiny_model, setting, message, capsys
):
    with pytest.raises(SystemExit) as stopped:
        score_saved(parquet, RESPONSES, tmp_path / "run", tiny_model, setting)
    assert stopped.value.code == EXIT_USAGE and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "refused before anything is read or written"


def test_data_without_rows_stops_the_run(tmp_path, tiny_model):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS).slice(0, 0), empty)
    with pytest.raises(SystemExit, match=r"ValueError: data=.*empty.parquet: no rows to evaluate"):
        main([f"data={empty}", f"model={tiny_model}", "backend=hf", "device=cpu", f"out_dir={tmp_path / 'run'}"])


def test_data_that_is_a_directory_or_not_parquet_stops_the_run_naming_the_converters_parquet(
    tmp_path, parquet, tiny_model
):
    source = tmp_path / "source.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in [{"id": "m1", "question": "?"}]))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        score_saved(tmp_path, RESPONSES, out, tiny_model)
    assert str(stopped.value) == (
        f"IsADirectoryError: data={tmp_path}: a directory; eval reads the parquet files "
        f"python -m mixed_r1_verl.data.prepare writes, e.g. data={parquet}"
    )
    with pytest.raises(SystemExit) as stopped:
        score_saved(source, RESPONSES, out, tiny_model)
    assert str(stopped.value) == (
        f"ValueError: data={source}: not a parquet file; eval reads the parquet files "
        "python -m mixed_r1_verl.data.prepare writes, e.g. data=<output_dir>/val.parquet"
    )
    assert not out.exists(), "refused before anything is written"


def test_compare_names_a_limit_against_a_run_of_every_row_and_labels_summary_paths_by_their_directory(
    tmp_path, parquet, tiny_model, capsys
):
    score_saved(parquet, RESPONSES, tmp_path / "every_row", tiny_model)
    limited = tmp_path / "first_three"
    assert main([f"data={parquet}", f"generations={tmp_path / 'every_row.jsonl'}", f"out_dir={limited}", "limit=3",
                 f"embedding_model={tiny_model}"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main([f"compare=[{tmp_path / 'every_row' / 'summary.json'},{limited / 'summary.json'}]"]) == 0
    printed = capsys.readouterr().out
    assert "(limit: every_row None, first_three 3)" in printed
    assert "accuracy every_row" in printed and "accuracy first_three" in printed


def test_card_true_is_refused_for_a_model_that_is_not_the_directory_published(tmp_path, parquet, tiny_model, capsys):
    out = tmp_path / "run"
    copy = tmp_path / "checkpoints" / "global_step_3" / "actor" / "huggingface"
    shutil.copytree(tiny_model, copy)

    def refusal(*settings):
        with pytest.raises(SystemExit) as stopped:
            main([f"data={parquet}", "backend=hf", "device=cpu", f"out_dir={out}", "card=true", *settings])
        return f"{stopped.value.code} {capsys.readouterr().err}"

    assert "is the Hugging Face copy of checkpoint global_step_3: export it (python -m mixed_r1_verl.export" in refusal(
        f"model={copy}"
    )
    assert "a hub id's snapshot in the cache is not the copy you publish" in refusal("model=Qwen/Qwen2.5-VL-3B-Instruct")
    assert "card=true records a model's results in its card (README.md): it needs model=" in refusal(
        "generations=responses.jsonl"
    )
    assert "card=true records results on whole data files, and limit= scores a part" in refusal(
        f"model={tiny_model}", "limit=2"
    )
    unreadable = tmp_path / "unreadable"
    shutil.copytree(tiny_model, unreadable)
    (unreadable / "README.md").write_text("---\nbase_model: [unclosed\n---\n\n# unreadable\n")
    assert f"{unreadable / 'README.md'}: its metadata cannot be read (while parsing a flow sequence" in refusal(
        f"model={unreadable}"
    )
    assert not out.exists() and not (copy / "README.md").exists()


def test_card_true_writes_a_card_for_a_model_directory_without_one(tmp_path, parquet, tiny_model):
    model = tmp_path / "my-model"
    shutil.copytree(tiny_model, model)
    out = tmp_path / "eval"
    cached_responses(out, parquet, RESPONSES)

    assert main([f"data={parquet}", f"model={model}", "backend=hf", "device=cpu", f"out_dir={out}", "card=true"]) == 0

    card, results = card_results(model / "README.md")
    metadata = card.data.to_dict()
    assert (metadata["library_name"], metadata["pipeline_tag"], card.data.model_name) == (
        "transformers", "image-text-to-text", "my-model"
    )  # fmt: skip
    assert len(results) == 3 * 4
    digest = hashlib.sha256(parquet.read_bytes()).hexdigest()
    assert card.text.startswith(f"\n# my-model\n\n## Evaluation\n\n<!-- mixed-r1 eval: val.parquet sha256={digest} -->")


def test_open_ended_without_embedding_model_fails_before_scoring(tmp_path, parquet):
    with pytest.raises(SystemExit, match="embedding_model="):
        score_saved(parquet, RESPONSES, tmp_path / "run")


def test_a_record_whose_task_comes_from_its_data_source_is_checked_as_that_task(tmp_path):
    caption = row("o1", "open_ended", "coco_caption", "Describe the image.", "A man rides a red bicycle.")
    del caption["extra_info"]["task"]
    parquet = tmp_path / "val.parquet"
    pq.write_table(pa.Table.from_pylist([caption]), parquet)
    assert [record.task for record in load_records([parquet])] == ["open_ended"]
    with pytest.raises(SystemExit, match="open_ended records need embedding_model="):
        score_saved(parquet, RESPONSES, tmp_path / "run")
    with pytest.raises(SystemExit, match=r"ValueError: embedding_model=.*no_table: BMAS embedding model"):
        score_saved(parquet, RESPONSES, tmp_path / "run", str(tmp_path / "no_table"))


def test_bad_rows_name_the_record(tmp_path):
    mismatched = row("x7", "chart", "chartqa", "<image> two placeholders, one image", "1")
    pq.write_table(pa.Table.from_pylist([mismatched]), tmp_path / "bad.parquet")
    with pytest.raises(RecordError, match=r"id 'x7'.*2 <image> placeholder\(s\) but 1 image\(s\)"):
        load_records([tmp_path / "bad.parquet"])

    duplicate = [row("d1", "chart", "chartqa", "q", "1"), row("d1", "chart", "chartqa", "q", "2")]
    pq.write_table(pa.Table.from_pylist(duplicate), tmp_path / "dup.parquet")
    with pytest.raises(RecordError, match=r"row 1: id 'd1' already used"):
        load_records([tmp_path / "dup.parquet"])


def test_an_image_that_cannot_be_decoded_names_its_record_and_image(tmp_path, tiny_model):
    broken = row("m9", "matching", "mmbench", "Which animal? A. cat B. dog", "B", images=2, options=["cat", "dog"])
    broken["images"][1] = {"bytes": b"not an image", "path": None}
    parquet = tmp_path / "broken.parquet"
    pq.write_table(pa.Table.from_pylist([broken]), parquet)
    named = rf"ValueError: {parquet}: generation request m9: image 2 of 2: not an image PIL can decode"
    with pytest.raises(SystemExit, match=named):
        main([f"data={parquet}", f"model={tiny_model}", "backend=hf", "device=cpu", f"out_dir={tmp_path / 'run'}"])


def test_rows_without_a_ground_truth_or_with_other_than_structs_name_the_record(tmp_path):
    for ground_truth in (None, " "):
        rows = [row("c1", "chart", "chartqa", "q", "1"), row("c2", "chart", "chartqa", "q", ground_truth)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "no_truth.parquet")
        named = r"no_truth.parquet: row 1 \(id 'c2'\): its ground truth is (None|blank).*\(reward_model.ground_truth\)"
        with pytest.raises(RecordError, match=named):
            load_records([tmp_path / "no_truth.parquet"])

    table = pa.table(
        {"prompt": [[{"role": "user", "content": "q"}]], "data_source": ["s"], "reward_model": [{"ground_truth": "4"}]}
    )
    pq.write_table(table.append_column("extra_info", pa.array(["id1"])), tmp_path / "flat_extra_info.parquet")
    with pytest.raises(RecordError, match=r"row 0: extra_info must be a struct with id and task, got str 'id1'"):
        load_records([tmp_path / "flat_extra_info.parquet"])


def test_a_generations_file_that_is_not_utf8_names_its_line(tmp_path):
    generations = tmp_path / "responses.jsonl"
    generations.write_bytes(b'{"id": "m1", "response": "B"}\n{"id": "m2", "response": "\xe9"}\n')
    with pytest.raises(GenerationFileError, match=rf"{generations}: line 2: not UTF-8 text"):
        read_generations(generations)


def test_a_run_that_stops_before_scoring_leaves_no_earlier_results_in_its_directory(tmp_path, parquet, tiny_model):
    """compare= would read an earlier run's summary beside this run's generations as this run's results."""
    out = tmp_path / "run"
    assert score_saved(parquet, RESPONSES, out, tiny_model) == 0
    assert {"scores.jsonl", "summary.json", "summary.md", "summary.csv"} <= {path.name for path in out.iterdir()}
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"id": "m1", "response": "B"}\n{"id": "m2", "response": "\xe9"}\n')
    with pytest.raises(SystemExit):
        main([f"data={parquet}", f"generations={broken}", f"out_dir={out}", f"embedding_model={tiny_model}"])
    assert not {"scores.jsonl", "summary.json", "summary.md", "summary.csv"} & {path.name for path in out.iterdir()}


def test_module_entry_point_lists_its_settings_and_defaults():
    result = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.eval", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "compare=" in result.stdout
    assert "max_new_tokens: 1024" in result.stdout and "backend: auto" in result.stdout
    assert result.stderr == "", "evaluation should not import verl (its import warnings)"


def test_the_command_line_ends_on_bad_input_with_its_message_and_no_traceback(tmp_path):
    missing = tmp_path / "missing"
    result = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.eval", f"compare=[{missing},{tmp_path / 'other'}]"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"FileNotFoundError: {missing}: no summary.json" in result.stderr and "Traceback" not in result.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.eval", f"compare=[{missing},{tmp_path / 'other'}]"],
        capture_output=True, text=True, check=False, env={**os.environ, "MIXED_R1_TRACEBACK": "1"},
    )  # fmt: skip
    assert shown.returncode == 1 and "Traceback" in shown.stderr


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["data=x.parquet", "out_dir=o"], "exactly one of model=, generations= or compare="),
        (["data=x.parquet", "model=m", "generations=g", "out_dir=o"], "exactly one of"),
        (["model=m", "out_dir=o"], "scoring needs data= and out_dir="),
        (["data=x.parquet", "model=m", "out_dir=o", "backend=tpu"], "backend=tpu"),
        (["compare=[a]"], "compare= takes two or more run directories"),
        (["compare=[a,b,c]", "labels=[x,y]"], "labels= gives 2 labels for 3 runs: give one per run"),
        (["compare=[one/ckpt,two/ckpt]"], "the runs' labels ['ckpt', 'ckpt'] repeat"),
        (["--data", "x.parquet"], "expected key=value"),
        (["data=x.parquet", "model=m", "out_dir=o", "max_new_tokens=many"], "max_new_tokens"),
        (["data=x.parquet", "model=m", "out_dir=o", "no_such_setting=1"], "no_such_setting"),
        (["data=x.parquet", "model=m", "out_dir=o", "limit=0"], "limit=0: expected a positive number"),
        (["data=x.parquet", "model=m", "out_dir=o", "max_images=0"], "max_images=0: expected at least 1"),
        (["data=x.parquet", "model=m", "out_dir=o", "batch_size=0"], "batch_size=0: expected at least 1 prompt"),
        (["data=x.parquet", "model=m", "out_dir=o", "batch_size=-1"], "batch_size=-1: expected at least 1 prompt"),
    ],
)
def test_bad_settings_stop_with_the_setting_named(argv, reason, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    message = f"{stopped.value.code} {capsys.readouterr().err}"
    assert reason in message


def test_vllm_makes_room_for_the_most_images_a_record_holds_unless_told(tmp_path, parquet, capsys):
    records = load_records([parquet])
    settings = ["data=x.parquet", "model=m", "out_dir=o"]
    assert sorted({len(record.image_blobs) for record in records}) == [1, 2]
    assert images_per_prompt(checked_settings(settings), records) == 2
    assert images_per_prompt(checked_settings(settings), records[:1]) == len(records[0].image_blobs) == 1
    records[0].image_blobs = records[0].image_blobs * 5
    assert images_per_prompt(checked_settings(settings), records) == 5
    assert images_per_prompt(checked_settings([*settings, "max_images=6"]), records) == 6
    with pytest.raises(SystemExit):
        images_per_prompt(checked_settings([*settings, "max_images=4"]), records)
    assert f"max_images=4: record {records[0].id!r} holds 5 images" in capsys.readouterr().err


@pytest.mark.parametrize("temperature", [2.5, 0.005])
def test_a_temperature_vllm_would_not_sample_at_is_refused_before_it_starts(temperature, capsys):
    with pytest.raises(SystemExit) as stopped:
        checked_settings(["data=x.parquet", "model=m", "out_dir=o", "backend=vllm", f"temperature={temperature}"])
    assert stopped.value.code == 2
    message = f"backend=vllm, temperature={temperature}: vLLM samples greedily (0) or at 0.01 to 2"
    assert message in capsys.readouterr().err
    settings = ["data=x.parquet", "model=m", "out_dir=o"]
    assert checked_settings([*settings, "backend=vllm", "temperature=2.0"]).temperature == 2.0
    assert checked_settings([*settings, "backend=hf", f"temperature={temperature}"]).temperature == temperature


@pytest.mark.parametrize(
    "argument, instead",
    [("seed=3", "seed="), ("limit_mm_per_prompt={image: 2}", "max_images="), ("model=other", "model="),
     ("max_images_per_prompt=2", "max_images=")],
)  # fmt: skip
def test_a_vllm_argument_the_command_sets_is_refused_naming_the_setting(argument, instead, capsys):
    settings = ["data=x.parquet", "model=m", "out_dir=o", "backend=vllm"]
    with pytest.raises(SystemExit) as stopped:
        checked_settings([*settings, f"vllm_kwargs.{argument}"])
    assert stopped.value.code == 2
    name = argument.split("=")[0]
    assert f"vllm_kwargs.{name}: the command sets it for vLLM; set {instead} instead" in capsys.readouterr().err


def test_vllm_engine_arguments_are_settings():
    settings = checked_settings(
        ["data=x.parquet", "model=m", "out_dir=o", "vllm_kwargs.enforce_eager=true", "vllm_kwargs.max_model_len=2048"]
    )
    assert settings.vllm_kwargs == {"enforce_eager": True, "max_model_len": 2048}
    assert checked_settings(["data=x.parquet", "model=m", "out_dir=o"]).vllm_kwargs == {}


def test_data_may_be_a_glob_pattern_over_shards(tmp_path, tiny_model):
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[:2]), shards / "val-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[2:]), shards / "val-00001-of-00002.parquet")
    generations = tmp_path / "responses.jsonl"
    generations.write_text("".join(json.dumps({"id": key, "response": text}) + "\n" for key, text in RESPONSES.items()))
    out = tmp_path / "run"

    settings = [f"generations={generations}", f"out_dir={out}", f"embedding_model={tiny_model}"]
    assert main([f"data={shards / 'val-*.parquet'}", *settings]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["data"] == [str(shards / f"val-0000{n}-of-00002.parquet") for n in (0, 1)]
    assert summary["tasks"]["all"]["n"] == len(ROWS)
    with pytest.raises(SystemExit, match=r"data=.*test-\*\.parquet: the pattern matches no file"):
        main([f"data={shards / 'test-*.parquet'}", *settings])
    with pytest.raises(SystemExit, match=r"data=.*missing\.parquet: no such file"):
        main([f"data={shards / 'missing.parquet'}", *settings])


def test_the_gpu_suites_check_of_the_per_task_table_holds_on_a_real_evaluation(tmp_path, parquet, tiny_model, capsys):
    """The GPU evaluation test reads the table this command prints: its check is run here on a CPU-scored
    evaluation (the table ends with the row of all records)."""
    spec = importlib.util.spec_from_file_location("gpu_checks", Path(__file__).parent / "gpu" / "gpu_checks.py")
    gpu_checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_checks)
    assert score_saved(parquet, RESPONSES, tmp_path / "run", tiny_model) == 0
    printed = capsys.readouterr().out
    gpu_checks.assert_every_val_row_of_every_task_scored(printed, parquet)
    with pytest.raises(AssertionError, match="open_ended: n 1 != 2 val rows"):
        extra = [{**ROWS[-1], "extra_info": {**ROWS[-1]["extra_info"], "id": "o2"}}]
        pq.write_table(pa.Table.from_pylist(ROWS + extra), tmp_path / "more.parquet")
        gpu_checks.assert_every_val_row_of_every_task_scored(printed.replace("| all | 5 |", "| all | 6 |"),
                                                             tmp_path / "more.parquet")  # fmt: skip


@pytest.mark.parametrize(
    "content, kept",
    [
        (b"", b""),
        (b'{"a": 1}\n', b'{"a": 1}\n'),
        (b'{"a": 1}\n{"b": 2', b'{"a": 1}\n'),
        (b'{"b": 2', b""),
        (b'{"a": 1}\n' + b"x" * (5 << 19), b'{"a": 1}\n'),  # a cut line longer than a block read
        (b"x" * (5 << 19), b""),
    ],
)
def test_an_interrupted_runs_half_line_is_cut_and_the_lines_before_it_kept(tmp_path, content, kept):
    cache = tmp_path / "generations.jsonl"
    cache.write_bytes(content)
    drop_unfinished_last_line(cache)
    assert cache.read_bytes() == kept

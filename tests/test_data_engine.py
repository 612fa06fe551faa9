import io
import random
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from data_helpers import read_jsonl, rows_with_embedded_images, run_module

from mixed_r1_verl.data.engine import EmptySourceError, Engine, EngineConfig, NearDuplicateIndex, hamming, main
from mixed_r1_verl.data.engine_plots import pass_rate_figure
from mixed_r1_verl.data.prepare import MappedColumnNotFoundError, PrepareConfig, prepare
from mixed_r1_verl.data.records import SpilledBytes
from mixed_r1_verl.data.sampling import ResponseCache
from mixed_r1_verl.data.synthetic import write_synthetic_dataset
from mixed_r1_verl.eval.cache import Completion
from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl
from mixed_r1_verl.rewards.tasks import task_names
from mixed_r1_verl.settings import parse_settings


def source_with_problems(tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=4, seed=11, val_rows_per_task=0)
    rows = read_jsonl(jsonl)
    chart = next(r for r in rows if r["task"] == "chart")
    Image.open(image_root / chart["images"][0]).save(image_root / "chart" / "copy.jpg", quality=95)
    extra = [
        {**chart, "id": "dup-exact", "problem": "<image>" + chart["problem"][len("<image>") :].upper() + "  "},
        {**chart, "id": "dup-near", "images": ["chart/copy.jpg"]},
        {
            **chart,
            "id": "long-chart",
            "problem": "Describe the tallest bar.",
            "answer": "the bar that is the tallest of them all",
        },
        {
            "id": "bad-letter",
            "task": "matching",
            "data_source": "s",
            "images": [chart["images"][0]],
            "problem": "Pick.",
            "answer": "E",
            "options": ["a", "b", "c", "d"],
        },
        {
            "id": "long-matching",
            "task": "matching",
            "data_source": "s",
            "images": [chart["images"][0]],
            "problem": "Why?",
            "answer": "because the chart rises every single year",
        },
        {
            "id": "no-image",
            "task": "chart",
            "data_source": "s",
            "images": ["chart/none.png"],
            "problem": "Q",
            "answer": "1",
        },
    ]
    with open(jsonl, "a") as out:
        for row in extra:
            out.write(json.dumps(row) + "\n")
    return jsonl, image_root, rows + extra


def engine_config(jsonl, image_root, out, *overrides) -> EngineConfig:
    return parse_settings(
        EngineConfig, [f"input={jsonl}", f"image_root={image_root}", f"output_dir={out}", "progress=false", *overrides]
    )


def dropped_reasons(out: Path) -> dict:
    return {row["id"]: (row["stage"], row["reason"]) for row in read_jsonl(out / "dropped.jsonl")}


def test_validate_dedup_verify_balance_and_report(tmp_path):
    jsonl, image_root, rows = source_with_problems(tmp_path)
    out = tmp_path / "out"
    report = Engine(
        engine_config(
            jsonl,
            image_root,
            out,
            "difficulty.enabled=false",
            "dedup.perceptual=true",
            "balance.targets={matching: 2, grounding: 9}",
            "convert=true",
            "val_ratio=0",
        )
    ).run()
    assert dropped_reasons(out) == {
        "no-image": ("validate", "missing_image"),
        "dup-exact": ("dedup", "duplicate"),
        "dup-near": ("dedup", "near_duplicate"),
        "long-chart": ("verify", "chart_answer_not_short"),
        "bad-letter": ("validate", "answer_not_an_option"),
        "long-matching": ("verify", "matching_answer_too_long"),
        **{
            row["id"]: ("balance", "over_target")
            for row in read_jsonl(out / "dropped.jsonl")
            if row["stage"] == "balance"
        },
    }
    details = {row["id"]: row["detail"] for row in read_jsonl(out / "dropped.jsonl") if row["stage"] == "verify"}
    assert details["long-chart"].endswith(", over verify.max_short_answer_words=3")
    assert details["long-matching"].startswith("not an option letter or yes/no, and ")
    stages = {stage["name"]: stage for stage in report["stages"]}
    assert list(stages) == ["validate", "dedup", "verify", "difficulty", "balance"]
    assert stages["validate"]["rows_in"] == {"matching": 6, "chart": 8, "grounding": 4, "open_ended": 4, "other": 0}
    assert report["selected"] == {"matching": 2, "chart": 4, "grounding": 4, "open_ended": 4}
    assert stages["balance"]["details"]["shortfall"] == {"grounding": 5}
    for earlier, later in zip(report["stages"], report["stages"][1:]):
        assert earlier["rows_out"] == {k: v for k, v in later["rows_in"].items()}
    for stage in report["stages"]:
        for task, rows_in in stage["rows_in"].items():
            drops = stage["dropped_by_task"].get(task, {})
            assert rows_in == stage["rows_out"].get(task, 0) + sum(drops.values()), (stage["name"], task)
    assert stages["verify"]["dropped_by_task"] == {
        "chart": {"chart_answer_not_short": 1}, "matching": {"matching_answer_too_long": 1},
    }  # fmt: skip
    selected = read_jsonl(out / "selected.jsonl")
    assert len(selected) == 14 and all(set(r) >= {"id", "task", "images", "problem", "answer"} for r in selected)
    for plot in ("rows_per_stage.png", "pass_rate_hist.png"):
        assert Image.open(out / plot).size[0] > 100
    assert json.loads((out / "report.json").read_text())["selected"] == report["selected"]
    assert report["conversion"]["rows_written"] == 14 and report["conversion"]["rows_rejected"] == 0
    assert pq.read_metadata(out / "parquet" / "train.parquet").num_rows == 14

    again = tmp_path / "again"
    Engine(
        engine_config(
            jsonl,
            image_root,
            again,
            "difficulty.enabled=false",
            "dedup.perceptual=true",
            "balance.targets={matching: 2, grounding: 9}",
        )
    ).run()
    assert read_jsonl(again / "selected.jsonl") == selected


def test_source_targets_draw_each_data_source_down_before_the_task_targets(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=6, seed=5, val_rows_per_task=0)
    rows = read_jsonl(jsonl)
    chart_rows = [row for row in rows if row["task"] == "chart"]
    for row in chart_rows[:4]:
        row["data_source"] = "chart_a"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    balance = ["difficulty.enabled=false", "balance.source_targets={chart_a: 1, synthetic_matching: 9}"]

    report = Engine(engine_config(jsonl, image_root, out, *balance, "balance.targets={chart: 2}")).run()

    selected = read_jsonl(out / "selected.jsonl")
    sources = [row["data_source"] for row in selected if row["task"] == "chart"]
    assert len(sources) == 2 and sources.count("chart_a") <= 1
    dropped = Counter(row["reason"] for row in read_jsonl(out / "dropped.jsonl") if row["stage"] == "balance")
    assert dropped == {"over_source_target": 3, "over_target": 1}
    details = report["stages"][-1]["details"]
    assert details["source_shortfall"] == {"synthetic_matching": 3} and details["shortfall"] == {}
    assert report["selected"] == {"matching": 6, "chart": 2, "grounding": 6, "open_ended": 6}
    assert report["selected_by_data_source"] == {
        "chart_a": sources.count("chart_a"), "synthetic_chart": 2 - sources.count("chart_a"),
        "synthetic_grounding": 6, "synthetic_matching": 6, "synthetic_open_ended": 6,
    }  # fmt: skip

    with pytest.raises(ValueError, match=r"names data_sources no valid row has: \['chart_b'\]; the rows': chart_a, "):
        Engine(engine_config(jsonl, image_root, out, balance[0], "balance.source_targets={chart_b: 1}")).run()


def test_near_duplicates_are_kept_unless_asked(tmp_path):
    jsonl, image_root, _ = source_with_problems(tmp_path)
    out = tmp_path / "out"
    Engine(engine_config(jsonl, image_root, out, "difficulty.enabled=false")).run()
    assert "dup-near" not in dropped_reasons(out) and dropped_reasons(out)["dup-exact"] == ("dedup", "duplicate")


def test_a_dense_page_saved_again_as_a_low_quality_jpeg_is_a_near_duplicate(tmp_path):
    """Its thumbnail differs by about 2 grey levels on average, more than a photo's copy does."""
    image_root = tmp_path / "images"
    image_root.mkdir()
    page = Image.new("RGB", (1200, 1600), "white")
    draw = ImageDraw.Draw(page)
    for y in range(20, 1580, 14):
        draw.text((20, y), "The quick brown fox jumps over the lazy dog 0123456789 " * 2, fill="black")
    page.save(image_root / "page.png")
    page.save(image_root / "page_copy.jpg", quality=50)
    row = {"task": "chart", "data_source": "docs", "problem": "<image>How many lines does the page hold?",
           "answer": "111"}  # fmt: skip
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({**row, "id": f"r{i}", "images": [name]}) + "\n"
                             for i, name in enumerate(["page.png", "page_copy.jpg"])))  # fmt: skip
    out = tmp_path / "out"
    Engine(engine_config(jsonl, image_root, out, "difficulty.enabled=false", "dedup.perceptual=true")).run()
    assert dropped_reasons(out) == {"r1": ("dedup", "near_duplicate")}


def test_distinct_charts_of_one_template_are_no_near_duplicates(tmp_path):
    """Bar charts of the same axes and bar count hash within a few bits; their thumbnails tell them apart."""
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=60, seed=7, val_rows_per_task=0)
    out = tmp_path / "out"
    report = Engine(engine_config(jsonl, image_root, out, "difficulty.enabled=false", "dedup.perceptual=true")).run()
    dedup = next(stage for stage in report["stages"] if stage["name"] == "dedup")
    assert "near_duplicate" not in dedup["dropped_by_reason"]


def test_dedup_keeps_other_items_on_one_image_and_names_the_kept_row(tmp_path):
    image_root = tmp_path / "images"
    image_root.mkdir()
    Image.new("RGB", (300, 200), "white").save(image_root / "a.png")
    Image.new("RGB", (300, 200), "white").save(image_root / "a_copy.jpg", quality=95)
    base = {"data_source": "s", "images": ["a.png"], "problem": "<image>Which one is shown?"}
    rows = [
        {**base, "id": "cats", "task": "matching", "answer": "A", "options": ["cat", "dog"]},
        {**base, "id": "cars", "task": "matching", "answer": "B", "options": ["car", "bus"]},
        {**base, "id": "yes-no", "task": "matching", "answer": "yes"},
        {**base, "id": "chart", "task": "chart", "answer": "12"},
        {**base, "id": "caption", "task": "open_ended", "answer": "A white image."},
        {**base, "id": "box", "task": "grounding", "answer": "[10, 10, 50, 50]"},
        {**base, "id": "cats-again", "task": "matching", "answer": "a", "options": ["Cat", "dog"]},
        {**base, "id": "cats-relabelled", "task": "matching", "answer": "B", "options": ["cat", "dog"]},
        {**base, "id": "chart-copy", "task": "chart", "answer": "13", "images": ["a_copy.jpg"]},
    ]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    Engine(engine_config(jsonl, image_root, out, "difficulty.enabled=false", "dedup.perceptual=true")).run()
    dropped = {row["id"]: row for row in read_jsonl(out / "dropped.jsonl")}
    assert sorted(dropped) == ["cats-again", "cats-relabelled", "chart-copy"]
    same = "the same image(s) as kept row 'cats', with the same task, question and options"
    assert dropped["cats-again"]["reason"] == "duplicate" and dropped["cats-again"]["detail"] == same
    assert dropped["cats-relabelled"]["detail"] == f"{same}; its answer 'B' differs from the kept row's 'A'"
    assert dropped["chart-copy"]["reason"] == "near_duplicate"
    assert dropped["chart-copy"]["detail"] == (
        "image(s) within hash distance 4, thumbnail difference 4 of kept row 'chart', with the same task, question "
        "and options; "
        "its answer '13' differs from the kept row's '12'"
    )


def test_an_empty_selection_stops_before_converting_and_keeps_the_report(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=3)
    out = tmp_path / "out"
    settings = [f"input={jsonl}", f"image_root={image_root}", f"output_dir={out}", "progress=false", "convert=true"]
    targets = "balance.targets={matching: 0, chart: 0, grounding: 0, open_ended: 0}"
    with pytest.raises(SystemExit) as stopped:
        main([*settings, "difficulty.enabled=false", targets])
    message = str(stopped.value.code)
    assert message.startswith(
        "EmptySelectionError: no row was selected, so nothing is converted: of 8 rows read, balance dropped 8 "
        "over_target."
    )
    assert str(out / "report.json") in message and str(out / "dropped.jsonl") in message
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][-1]["dropped_by_reason"] == {"over_target": 8} and "conversion" not in report
    assert (out / "rows_per_stage.png").is_file() and (out / "pass_rate_hist.png").is_file()
    assert not (out / "parquet").exists()


def test_a_failed_conversion_keeps_the_report(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=3, val_rows_per_task=0)
    out = tmp_path / "out"
    config = engine_config(jsonl, image_root, out, "difficulty.enabled=false", "convert=true", "val_ratio=0.001")
    with pytest.raises(ValueError, match="val.parquet would be empty"):
        Engine(config).run()
    report = json.loads((out / "report.json").read_text())
    assert sum(report["selected"].values()) == 8 and "conversion" not in report


def test_a_rerun_leaves_no_earlier_conversion_beside_its_selection(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=3, val_rows_per_task=0)
    out = tmp_path / "out"
    settings = ["difficulty.enabled=false", "val_ratio=0"]
    Engine(engine_config(jsonl, image_root, out, *settings, "convert=true")).run()
    assert pq.read_metadata(out / "parquet" / "train.parquet").num_rows == 8

    one_chart = "balance.targets={matching: 0, chart: 1, grounding: 0, open_ended: 0}"
    with pytest.raises(ValueError, match="val.parquet would be empty"):
        Engine(engine_config(jsonl, image_root, out, *settings, one_chart, "convert=true", "val_ratio=0.001")).run()
    assert len(read_jsonl(out / "selected.jsonl")) == 1 and not list(out.glob("parquet/*"))

    Engine(engine_config(jsonl, image_root, out, *settings, "convert=true")).run()
    Engine(engine_config(jsonl, image_root, out, *settings, one_chart)).run()
    assert not list(out.glob("parquet/*"))

    (out / "parquet" / "notes.md").write_text("kept: not written by a run")
    Engine(engine_config(jsonl, image_root, out, *settings))  # a run stopped before its first stage ended
    assert sorted(path.name for path in out.iterdir()) == ["dropped.jsonl", "parquet"]
    assert [path.name for path in (out / "parquet").iterdir()] == ["notes.md"]


def test_a_run_on_the_selection_in_its_own_output_dir_is_refused_and_keeps_it(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=3, val_rows_per_task=0)
    out = tmp_path / "out"
    Engine(engine_config(jsonl, image_root, out, "difficulty.enabled=false")).run()
    selected = out / "selected.jsonl"
    rows = read_jsonl(selected)

    again = engine_config(selected, image_root, out, "difficulty.enabled=false", "layout=canonical")
    with pytest.raises(ValueError, match=f"input={selected} is a file this run removes and writes anew"):
        Engine(again)
    assert read_jsonl(selected) == rows


def test_rows_dropped_at_validation_are_named_by_their_file_and_row(tmp_path):
    """Rows without an id are named `row-N`: two files' rows 2 are told apart by their file."""
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=3, val_rows_per_task=0)
    good = read_jsonl(jsonl)[0]
    inputs = []
    for name, bad in (("a", {"answer": ""}), ("b", {"images": ["chart/none.png"]})):
        rows = [good | {"id": f"{name}-good"}, {key: value for key, value in (good | bad).items() if key != "id"}]
        inputs.append(tmp_path / f"{name}.jsonl")
        inputs[-1].write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    Engine(engine_config(f"[{inputs[0]},{inputs[1]}]", image_root, out, "difficulty.enabled=false")).run()
    dropped = [row for row in read_jsonl(out / "dropped.jsonl") if row["stage"] == "validate"]
    assert [(row["id"], row["input"], row["row"], row["reason"]) for row in dropped] == [
        ("row-2", str(inputs[0]), 2, "empty_answer"), ("row-2", str(inputs[1]), 2, "missing_image"),
    ]  # fmt: skip


def test_a_row_dropped_at_validation_leaves_its_id_to_a_later_row(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=3, val_rows_per_task=0)
    chart = next(row for row in read_jsonl(jsonl) if row["task"] == "chart")
    rows = [chart | {"id": "q1", "images": ["chart/none.png"]}, chart | {"id": "q1"},
            chart | {"id": "q1", "problem": "Which bar is tallest?"}]  # fmt: skip
    source = tmp_path / "chart.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = Engine(engine_config(source, image_root, tmp_path / "out", "difficulty.enabled=false")).run()
    dropped = read_jsonl(tmp_path / "out" / "dropped.jsonl")
    assert [(row["row"], row["reason"]) for row in dropped] == [(1, "missing_image"), (3, "duplicate_id")]
    assert dropped[1]["detail"].endswith("at row 2")
    assert report["selected"]["chart"] == 1


def test_a_yes_or_no_chart_answer_is_short_whatever_the_word_limit(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=3, val_rows_per_task=0)
    chart = next(row for row in read_jsonl(jsonl) if row["task"] == "chart")
    rows = [chart | {"id": "yes", "problem": "Does the red bar rise?", "answer": "Yes"},
            chart | {"id": "words", "problem": "Which bar?", "answer": "tallest"}]  # fmt: skip
    source = tmp_path / "chart.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = ["difficulty.enabled=false", "verify.max_short_answer_words=0"]
    report = Engine(engine_config(source, image_root, tmp_path / "out", *settings)).run()
    assert report["selected"]["chart"] == 1
    assert dropped_reasons(tmp_path / "out") == {"words": ("verify", "chart_answer_not_short")}


def correct(answer: str) -> str:
    return f"<think>checked</think><answer>{answer}</answer>"


def test_difficulty_samples_scores_caches_and_filters(tmp_path):
    model = build_tiny_qwen25vl(tmp_path / "model")
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=2)
    out = tmp_path / "out"
    settings = [
        f"difficulty.model_path={model}",
        "difficulty.k=2",
        "difficulty.max_new_tokens=4",
        "difficulty.chunk_size=3",
    ]

    first = Engine(engine_config(jsonl, image_root, out, *settings, "difficulty.inclusive=true")).run()
    stage = next(s for s in first["stages"] if s["name"] == "difficulty")
    assert stage["details"]["sampled_prompts"] == 8 and stage["details"]["cached_prompts"] == 0
    assert sum(first["selected"].values()) == 8  # the band [0, 1] inclusive keeps everything
    assert sum(sum(h.values()) for h in first["pass_rate_histogram"].values()) == 8
    cache = read_jsonl(out / "difficulty_cache.jsonl")
    assert len(cache) == 8 and all(len(entry["responses"]) == 2 for entry in cache)
    # The tiny model never ends within 4 tokens: every response is cut off at max_new_tokens.
    assert all(entry["truncated"] == [True, True] for entry in cache)
    assert {task: summary["truncated_responses"] for task, summary in first["sampled_rewards"].items()} == {
        task: 4 for task in first["sampled_rewards"]
    }

    # Replace the sampled responses (cache order = prompt order) with ones of known correctness.
    records = read_jsonl(out / "selected.jsonl")
    expected_pass_rate, expected_spread = {}, {}
    for i, (entry, record) in enumerate(zip(cache, records)):
        if record["task"] == "grounding":
            # A box off its target either way; the second group differs in format alone.
            box = "[0, 0, 1, 1]"
            entry["responses"] = [[correct(box)] * 2, [correct(box), box], [box] * 2][i % 3]
            expected_pass_rate[record["id"]] = 0.0
            expected_spread[record["id"]] = (i % 3 == 1, False)
        else:
            right = correct(record["answer"])
            entry["responses"] = [[right, right], [right, correct("nothing")], [correct("nothing")] * 2][i % 3]
            expected_pass_rate[record["id"]] = [1.0, 0.5, 0.0][i % 3]
            expected_spread[record["id"]] = (i % 3 == 1, i % 3 == 1)
        del entry["truncated"]  # as lines cached before truncation was recorded
    (out / "difficulty_cache.jsonl").write_text("".join(json.dumps(e) + "\n" for e in cache))

    second = Engine(engine_config(jsonl, image_root, out, *settings)).run()
    stage = next(s for s in second["stages"] if s["name"] == "difficulty")
    assert stage["details"]["sampled_prompts"] == 0 and stage["details"]["cached_prompts"] == 8
    kept = {r["id"] for r in read_jsonl(out / "selected.jsonl")}
    assert kept == {i for i, p in expected_pass_rate.items() if 0 < p < 1}
    for task, summary in second["sampled_rewards"].items():
        spreads = [expected_spread[r["id"]] for r in records if r["task"] == task]
        assert summary["prompts"] == len(spreads) == 2
        assert summary["share_with_score_spread"] == sum(score for score, _ in spreads) / 2
        assert summary["share_with_accuracy_spread"] == sum(accuracy for _, accuracy in spreads) / 2
        assert (summary["truncated_responses"], summary["truncation_unknown"]) == (0, 4)
    for task in ("matching", "chart"):
        rates = [expected_pass_rate[r["id"]] for r in records if r["task"] == task]
        assert second["sampled_rewards"][task]["mean_accuracy"] == sum(rates) / 2
    assert second["sampled_rewards"]["grounding"]["mean_accuracy"] == 0.0
    assert json.loads((out / "report.json").read_text())["sampled_rewards"] == second["sampled_rewards"]
    reasons = dropped_reasons(out)
    details = {row["id"]: row["detail"] for row in read_jsonl(out / "dropped.jsonl")}
    for record_id, rate in expected_pass_rate.items():
        if rate == 1.0:
            assert reasons[record_id] == ("difficulty", "too_easy")
            assert details[record_id] == "2 of 2 rollouts correct (pass rate 1); kept: 0 < p < 1"
        elif rate == 0.0:
            assert reasons[record_id] == ("difficulty", "too_hard")
            assert details[record_id] == "0 of 2 rollouts correct (pass rate 0); kept: 0 < p < 1"


def test_a_cache_line_cut_short_by_an_interrupted_run_costs_only_its_own_prompt(tmp_path):
    """The run that follows an interrupted one samples the cut line's prompt again and appends it whole: the
    next run reads every line back."""
    path = tmp_path / "difficulty_cache.jsonl"
    ResponseCache(path, 1).add({"k1": [Completion("a", False)]})
    with open(path, "a") as cache:
        cache.write('{"key": "k2", "respon')  # the run was killed while writing this line
    rerun = ResponseCache(path, 1)
    assert sorted(rerun.offsets) == ["k1"]
    rerun.add({"k2": [Completion("b", False)], "k3": [Completion("c", True)]})
    assert rerun.responses("k3") == [Completion("c", True)]
    read_back = ResponseCache(path, 1)
    assert sorted(read_back.offsets) == ["k1", "k2", "k3"]
    assert [read_back.responses(key) for key in ("k1", "k2", "k3")] == [
        [Completion("a", False)], [Completion("b", False)], [Completion("c", True)]
    ]


def test_a_cache_line_without_k_responses_is_left_out_and_its_prompt_sampled_again(tmp_path, caplog):
    path = tmp_path / "difficulty_cache.jsonl"
    ResponseCache(path, 2).add({"whole": [Completion("a", False), Completion("b", True)]})
    edited = [
        {"key": "one response", "responses": ["a"], "truncated": [False]},
        {"key": "no responses", "responses": [], "truncated": []},
        {"key": "not texts", "responses": [1, 2]},
        {"responses": ["a", "b"]},
        [],
    ]
    with open(path, "a") as cache:
        cache.writelines(json.dumps(line) + "\n" for line in edited)
    reopened = ResponseCache(path, 2)
    assert sorted(reopened.offsets) == ["whole"]
    assert reopened.responses("whole") == [Completion("a", False), Completion("b", True)]
    assert f"{path}: 5 line(s) hold no entry of 2 responses (line 2 first)" in caplog.text


def difficulty_details(report: dict) -> dict:
    return next(stage for stage in report["stages"] if stage["name"] == "difficulty")["details"]


def test_cached_responses_are_not_reused_for_images_resized_within_other_bounds(tmp_path, tiny_model_dir):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=2, val_rows_per_task=0)
    out = tmp_path / "out"
    settings = [f"difficulty.model_path={tiny_model_dir}", "difficulty.k=2", "difficulty.max_new_tokens=2"]
    Engine(engine_config(jsonl, image_root, out, *settings)).run()
    smaller = Engine(engine_config(jsonl, image_root, out, *settings, "max_pixels=50176")).run()
    assert difficulty_details(smaller)["sampled_prompts"] == 4 and difficulty_details(smaller)["cached_prompts"] == 0
    again = Engine(engine_config(jsonl, image_root, out, *settings, "max_pixels=50176")).run()
    assert difficulty_details(again)["sampled_prompts"] == 0 and difficulty_details(again)["cached_prompts"] == 4


def test_one_model_directory_however_written_keeps_its_cached_responses(tmp_path, tiny_model_dir, monkeypatch):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=2, val_rows_per_task=0)
    out = tmp_path / "out"
    settings = ["difficulty.k=2", "difficulty.max_new_tokens=2"]
    Engine(engine_config(jsonl, image_root, out, f"difficulty.model_path={tiny_model_dir}", *settings)).run()
    monkeypatch.chdir(tiny_model_dir.parent)
    for written in (f"{tiny_model_dir}/", f"./{tiny_model_dir.name}"):
        again = Engine(engine_config(jsonl, image_root, out, f"difficulty.model_path={written}", *settings)).run()
        assert difficulty_details(again)["sampled_prompts"] == 0 and difficulty_details(again)["cached_prompts"] == 4


def test_cached_responses_are_sampled_again_for_an_edited_chat_template_of_the_same_model(
    tmp_path, tiny_model_dir, capsys
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=2, val_rows_per_task=0)
    out = tmp_path / "out"
    settings = [f"difficulty.model_path={model}", "difficulty.k=2", "difficulty.max_new_tokens=2"]
    Engine(engine_config(jsonl, image_root, out, *settings)).run()
    again = Engine(engine_config(jsonl, image_root, out, *settings)).run()
    assert difficulty_details(again)["sampled_prompts"] == 0 and difficulty_details(again)["cached_prompts"] == 4
    template = model / "chat_template.jinja"
    template.write_text("{{- '<|im_start|>system\nThink first.<|im_end|>\n' -}}" + template.read_text())
    assert "sampling every prompt" not in capsys.readouterr().err
    edited = Engine(engine_config(jsonl, image_root, out, *settings)).run()
    assert difficulty_details(edited)["sampled_prompts"] == 4 and difficulty_details(edited)["cached_prompts"] == 0
    assert f"{out / 'difficulty_cache.jsonl'}: none of its 4 cached prompts' responses is for this run" in (
        capsys.readouterr().err
    )


def test_cached_responses_are_keyed_by_the_vllm_arguments_that_change_what_is_sampled(tiny_model_dir):
    """A smaller max_model_len cuts responses short; memory settings change nothing sampled, nor does the
    backend, as either samples the model."""
    from mixed_r1_verl.data.engine import DifficultyConfig, sampled_model
    from mixed_r1_verl.eval.cache import model_fingerprint

    def sampled(backend="vllm", **vllm_kwargs) -> dict:
        return sampled_model(DifficultyConfig(model_path=str(tiny_model_dir), backend=backend, vllm_kwargs=vllm_kwargs))

    model = model_fingerprint(str(tiny_model_dir))
    assert sampled("transformers") == sampled() == sampled(gpu_memory_utilization=0.4, max_num_seqs=16) == model
    assert sampled(max_model_len=4096, gpu_memory_utilization=0.4) == {**model, "engine_arguments": {"max_model_len": 4096}}


def test_an_embedding_model_that_cannot_load_stops_the_difficulty_stage_before_it_samples(
    tmp_path, tiny_model_dir, monkeypatch
):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=2, val_rows_per_task=0)
    out = tmp_path / "out"
    settings = [f"difficulty.model_path={tiny_model_dir}", "difficulty.embedding_model=nobody/no-such-embedder"]
    with pytest.raises(ValueError, match=r"difficulty.embedding_model=nobody/no-such-embedder: BMAS embedding model"):
        Engine(engine_config(jsonl, image_root, out, *settings)).run()
    assert not (out / "difficulty_cache.jsonl").exists()


def test_another_balance_draw_keeps_the_cached_responses(tmp_path, tiny_model_dir):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=4, seed=2, val_rows_per_task=0)
    out = tmp_path / "out"
    settings = [
        f"difficulty.model_path={tiny_model_dir}",
        "difficulty.k=2",
        "difficulty.max_new_tokens=2",
        "difficulty.inclusive=true",
        "balance.targets={matching: 2, chart: 2, grounding: 2, open_ended: 2}",
    ]
    first = Engine(engine_config(jsonl, image_root, out, *settings)).run()
    assert difficulty_details(first)["sampled_prompts"] == 16
    assert next(s for s in first["stages"] if s["name"] == "balance")["details"]["seed"] == 0
    selections = {}
    for balance_seed in range(1, 5):
        report = Engine(engine_config(jsonl, image_root, out, *settings, f"balance.seed={balance_seed}")).run()
        assert difficulty_details(report)["sampled_prompts"] == 0 and difficulty_details(report)["cached_prompts"] == 16
        assert report["selected"] == first["selected"]
        selections[balance_seed] = frozenset(row["id"] for row in read_jsonl(out / "selected.jsonl"))
    assert len(set(selections.values())) > 1, "each balance seed drew the same rows"


def test_one_tasks_target_changes_no_other_tasks_rows(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=8, seed=4, val_rows_per_task=0)
    selected = {}
    for chart_target in (4, 2):
        out = tmp_path / f"chart_{chart_target}"
        targets = f"balance.targets={{matching: 4, chart: {chart_target}, grounding: 4, open_ended: 4}}"
        Engine(engine_config(jsonl, image_root, out, "difficulty.enabled=false", targets)).run()
        rows = read_jsonl(out / "selected.jsonl")
        selected[chart_target] = {task: {row["id"] for row in rows if row["task"] == task} for task in task_names()}
    assert len(selected[2]["chart"]) == 2 and selected[2]["chart"] < selected[4]["chart"]
    for task in ("matching", "grounding", "open_ended"):
        assert len(selected[4][task]) == 4 and selected[2][task] == selected[4][task]


def test_the_pass_rate_plot_draws_each_rate_of_the_report_histogram_as_its_own_bar():
    """With k=10, 0.2 and 0.3 (or 0.9 and 1.0, which the default band drops) share no bar."""
    histograms = {"matching": {"0.2": 3, "0.3": 5, "0.9": 1, "1.0": 7}, "chart": {"0.0": 4}}
    figure = pass_rate_figure(histograms, k=10)
    for ax, task in zip(figure.axes, ("matching", "chart", "grounding", "open_ended")):
        bars = {round(bar.get_x() + bar.get_width() / 2, 6): bar.get_height() for bar in ax.patches}
        assert bars == {float(rate): count for rate, count in histograms.get(task, {}).items()}


def test_vllm_backend_without_vllm_fails_before_the_first_stage(tmp_path, tiny_model_dir):
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=2)
    out = tmp_path / "out"
    config = engine_config(jsonl, image_root, out, "difficulty.backend=vllm", f"difficulty.model_path={tiny_model_dir}")
    with pytest.raises(ValueError, match="difficulty.backend=vllm needs vLLM"):
        Engine(config)
    assert not out.exists()


@pytest.mark.parametrize(
    "settings, error, message",
    [
        ([], ValueError, "difficulty.model_path is required when difficulty.enabled=true"),
        (["difficulty.model_path=/no/such/model"], FileNotFoundError, "difficulty.model_path: model '/no/such"),
        (["difficulty.model_path={model}", "difficulty.backend=hf"], ValueError, "difficulty.backend=hf: expected"),
        (["difficulty.model_path={model}", "difficulty.temperature=0"], ValueError, "difficulty.k=8, difficulty.temp"),
        (["difficulty.model_path={model}", "difficulty.chunk_size=0"], ValueError, "difficulty.chunk_size=0"),
        (["difficulty.model_path={model}", "difficulty.max_new_tokens=0"],
         ValueError, "max_new_tokens=0: sampling max_new_tokens must be at least 1"),
        (["difficulty.model_path={model}", "difficulty.top_p=0"], ValueError, "sampling top_p must lie in"),
        (["difficulty.model_path={model}", "difficulty.backend=vllm", "difficulty.temperature=2.5"],
         ValueError, r"difficulty.backend=vllm, difficulty.temperature=2.5: vLLM samples greedily \(0\) or at 0.01"),
        (["difficulty.model_path={model}", "difficulty.backend=vllm", "difficulty.vllm_kwargs.seed=3"],
         ValueError, "difficulty.vllm_kwargs.seed: the command sets it for vLLM; set seed instead"),
        (["difficulty.model_path={model}", "difficulty.backend=vllm",
          "difficulty.vllm_kwargs.limit_mm_per_prompt={image: 2}"],
         ValueError, "limit_mm_per_prompt: the command sets it for vLLM; leave it out: vLLM makes room for the most"),
        (["difficulty.model_path={model}", "difficulty.min_pass_rate=0.5", "difficulty.max_pass_rate=0.5"],
         ValueError, "no pass rate that k=8 responses give"),
        (["difficulty.model_path={model}", "difficulty.k=4", "difficulty.min_pass_rate=0.8"],
         ValueError, "no pass rate that k=4 responses give"),
        (["difficulty.model_path={model}", "difficulty.correct_threshold.chart=2"],
         ValueError, r"difficulty.correct_threshold.chart=2: expected a reward accuracy in \(0, 1\]"),
        (["difficulty.enabled=false", "dedup.max_hash_distance=-1"], ValueError, "dedup.max_hash_distance=-1"),
        (["difficulty.enabled=false", "verify.max_short_answer_words=-1"],
         ValueError, "verify.max_short_answer_words=-1: expected 0 or more"),
        (["difficulty.model_path={model}", "difficulty.min_pass_rate=0.8", "difficulty.max_pass_rate=0.2"],
         ValueError, "expected 0 <= min_pass_rate <= max_pass_rate <= 1"),
        (["difficulty.model_path={model}", "difficulty.correct_threshold.grouding=0.3"],
         ValueError, r"correct_threshold names unknown tasks \['grouding'\]"),
        (["difficulty.model_path={model}", "difficulty.embedding_model=./no/such/embedder"],
         FileNotFoundError, "difficulty.embedding_model=./no/such/embedder: no such directory"),
        (["difficulty.enabled=false", "balance.targets={charts: 3}"], ValueError, r"unknown tasks \['charts'\]"),
        (["difficulty.enabled=false", "balance.targets={chart: -1}"], ValueError, "balance.targets.chart=-1"),
        (["difficulty.enabled=false", "balance.source_targets={chartqa: 1.5}"],
         ValueError, "balance.source_targets.chartqa=1.5: expected a number of rows"),
        (["difficulty.enabled=false", "image_root=/no/such/images"], FileNotFoundError, "image_root=/no/such/images"),
    ],
)  # fmt: skip
def test_settings_are_checked_before_the_first_stage(tmp_path, tiny_model_dir, settings, error, message):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=2)
    out = tmp_path / "out"
    config = engine_config(jsonl, image_root, out, *[s.replace("{model}", str(tiny_model_dir)) for s in settings])
    with pytest.raises(error, match=message):
        Engine(config)
    assert not out.exists()  # no stage ran: no dropped.jsonl


def test_cli_help():
    text = run_module("mixed_r1_verl.data.engine", "--help")
    assert "difficulty" in text and "balance" in text and "targets" in text


def test_other_layouts_are_counted_under_their_mapped_task(tmp_path):
    _, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=4)
    source = tmp_path / "chartqa.jsonl"
    rows = [
        {"imgname": "chart/000000.png", "query": "Peak?", "label": ["12"]},
        {"imgname": "chart/000001.png", "query": "Lowest?", "label": ["3"]},
        {"imgname": "chart/none.png", "query": "Peak?", "label": ["1"]},
    ]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    report = Engine(engine_config(source, image_root, out, "layout=chartqa", "difficulty.enabled=false")).run()
    assert report["stages"][0]["rows_in"]["chart"] == 3 and report["selected"]["chart"] == 2
    assert dropped_reasons(out) == {"row-3": ("validate", "missing_image")}


def test_convert_reads_the_selection_as_canonical_rows_whatever_the_source_layout(tmp_path):
    """RefCOCO's mapping widens xywh boxes and wraps the problem: the selection holds the result, which
    the conversion must not map again."""
    _, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=4)
    source = tmp_path / "refcoco.jsonl"
    rows = [{"ref_id": f"r{i}", "file_name": f"grounding/00000{i}.png", "sent": "the shape", "bbox": [4, 6, 20, 10]}
            for i in range(2)]  # fmt: skip
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = ["layout=refcoco", "difficulty.enabled=false", "val_ratio=0"]
    report = Engine(engine_config(source, image_root, tmp_path / "engine", *settings, "convert=true")).run()
    assert report["conversion"]["rows_written"] == 2
    direct = prepare(PrepareConfig(input=str(source), image_root=str(image_root), output_dir=str(tmp_path / "direct"),
                                   layout="refcoco", val_ratio=0, progress=False))  # fmt: skip
    assert direct["rows_written"] == 2

    def converted(path: Path) -> list[tuple]:
        return sorted((row["extra_info"]["id"], row["prompt"][-1]["content"], row["reward_model"]["ground_truth"])
                      for row in pq.read_table(path).to_pylist())  # fmt: skip

    assert converted(tmp_path / "engine" / "parquet" / "train.parquet") == converted(tmp_path / "direct" / "train.parquet")
    assert converted(tmp_path / "direct" / "train.parquet")[0][1].count("Locate the object described as") == 1


def test_convert_reads_option_indices_once_a_source_gave_them_with_answer_index_base(tmp_path):
    """The selection holds the letters the indices name: read as indices again, none would be one."""
    _, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=4)
    source = tmp_path / "scienceqa.jsonl"
    rows = [{"id": "q1", "image": "chart/000000.png", "question": "Which?", "choices": ["3", "2", "1"], "answer": 2},
            {"id": "q2", "image": "chart/000000.png", "question": "Which?", "choices": ["up", "down"], "answer": 1}]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    mapping = ["columns.images=image", "columns.problem=question", "columns.options=choices", "constants.task=matching",
               "constants.data_source=scienceqa", "answer_index_base=1"]  # fmt: skip
    settings = [*mapping, "difficulty.enabled=false", "val_ratio=0", "convert=true"]
    report = Engine(engine_config(source, image_root, tmp_path / "engine", *settings)).run()
    assert report["conversion"]["rows_written"] == 2
    written = pq.read_table(tmp_path / "engine" / "parquet" / "train.parquet").to_pylist()
    assert {row["extra_info"]["id"]: row["reward_model"]["ground_truth"] for row in written} == {"q1": "B", "q2": "A"}


def test_rows_embedding_their_images_are_selected_into_parquet_and_converted_as_files_are(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=4, seed=11, val_rows_per_task=0)
    embedded = tmp_path / "embedded.parquet"
    rows_with_embedded_images(jsonl, image_root, embedded)
    stages = ["difficulty.enabled=false", "dedup.perceptual=true", "balance.targets={matching: 3}", "convert=true"]
    Engine(engine_config(jsonl, image_root, tmp_path / "files", *stages, "val_ratio=0")).run()
    out = tmp_path / "out"

    report = Engine(
        parse_settings(
            EngineConfig, [f"input={embedded}", f"output_dir={out}", "progress=false", *stages, "val_ratio=0"]
        )
    ).run()

    assert not (out / "selected.jsonl").exists()
    selected = pq.read_table(out / "selected.parquet").to_pylist()
    from_files = {row["id"]: row for row in read_jsonl(tmp_path / "files" / "selected.jsonl")}
    assert [row["id"] for row in selected] == list(from_files) and report["selected"]["matching"] == 3
    for row in selected:
        assert [image["path"] for image in row["images"]] == from_files[row["id"]]["images"]
        assert [image["bytes"] for image in row["images"]] == [
            (image_root / path).read_bytes() for path in from_files[row["id"]]["images"]
        ]
    converted = pq.read_table(out / "parquet" / "train.parquet").to_pylist()
    assert converted == pq.read_table(tmp_path / "files" / "parquet" / "train.parquet").to_pylist()

    # A later run on files replaces the parquet selection with its own.
    Engine(engine_config(jsonl, image_root, out, *stages[:3])).run()
    assert (out / "selected.jsonl").exists() and not (out / "selected.parquet").exists()


def test_embedded_images_wait_on_disk_once_each_until_the_selection_is_written(tmp_path):
    """The engine holds a place in one file per distinct embedded image, not every row's bytes; the file
    goes when the selection is written, and one a killed run left goes when the next run starts."""
    jsonl, image_root = write_synthetic_dataset(
        tmp_path / "src", rows_per_task=4, seed=11, val_rows_per_task=0, distinct_images_per_task=2
    )
    embedded = tmp_path / "embedded.parquet"
    rows = rows_with_embedded_images(jsonl, image_root, embedded)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".embedded_images").write_bytes(b"left by a killed run")
    settings = [f"input={embedded}", f"output_dir={out}", "progress=false", "difficulty.enabled=false"]
    engine = Engine(parse_settings(EngineConfig, settings))
    assert not (out / ".embedded_images").exists()

    validated = engine.validate()

    images = [image for row in validated for image in row.record.images]
    places = {image.data for image in images}
    assert all(isinstance(place, SpilledBytes) and place.file == out / ".embedded_images" for place in places)
    distinct = {image["bytes"] for row in rows for image in row["images"]}
    assert len(images) == len(rows) > len(places) and {place.read() for place in places} == distinct
    assert (out / ".embedded_images").stat().st_size == sum(len(data) for data in distinct)

    Engine(parse_settings(EngineConfig, settings)).run()
    assert not (out / ".embedded_images").exists() and (out / "selected.parquet").exists()


def test_an_input_of_several_files_is_selected_from_as_one(tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=4, seed=11, val_rows_per_task=0)
    lines = jsonl.read_text().splitlines(keepends=True)
    parts = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    parts[0].write_text("".join(lines[:5]))
    parts[1].write_text("".join(lines[5:]))
    stages = ["difficulty.enabled=false", "balance.targets={matching: 3, chart: 2}"]
    Engine(engine_config(jsonl, image_root, tmp_path / "whole", *stages)).run()

    report = Engine(engine_config(f"[{parts[0]},{parts[1]}]", image_root, tmp_path / "out", *stages)).run()

    assert report["stages"][0]["rows_in"] == {"matching": 4, "chart": 4, "grounding": 4, "open_ended": 4, "other": 0}
    assert read_jsonl(tmp_path / "out" / "selected.jsonl") == read_jsonl(tmp_path / "whole" / "selected.jsonl")
    with pytest.raises(ValueError, match="is a file this run removes and writes anew"):
        Engine(engine_config(f"[{parts[0]},{tmp_path / 'out' / 'selected.jsonl'}]", image_root, tmp_path / "out"))


def test_selections_with_embedded_images_mix_sources_of_other_settings_in_a_later_run(tmp_path):
    """Two sources that need other settings (a photo turned by EXIF with a 0-1 box, and synthetic rows
    with pixel boxes) selected apart with embed_images=true, then mixed: the mix converts as each source
    converts alone."""
    synthetic, synthetic_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=3, val_rows_per_task=0)
    photos = tmp_path / "photos"
    photos.mkdir()
    stored = Image.new("RGB", (400, 200), (0, 0, 0))
    stored.paste((255, 0, 0), (300, 20, 380, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown upright: 200x400, the red patch at about x 100-180, y 300-380
    stored.save(photos / "sideways.jpg", format="JPEG", quality=95, exif=exif)
    photo_rows = tmp_path / "photos.jsonl"
    photo = {"id": "photo", "task": "grounding", "data_source": "photos", "images": ["sideways.jpg"],
             "problem": "Where is the red patch?", "answer": "[0.5, 0.75, 0.9, 0.95]"}  # fmt: skip
    # Under a pixel: dropped at validation, where in pixels it would later read as a normalized box.
    under_a_pixel = {**photo, "id": "under-a-pixel", "answer": "[0, 0, 0.004, 0.002]"}
    photo_rows.write_text(json.dumps(photo) + "\n" + json.dumps(under_a_pixel) + "\n")
    sources = {
        "synthetic": (synthetic, synthetic_root, []),
        "photos": (photo_rows, photos, ["box_units=normalized"]),
    }
    alone = {}
    for name, (rows, root, settings) in sources.items():
        selecting = ["difficulty.enabled=false", "embed_images=true", *settings]
        Engine(engine_config(rows, root, tmp_path / name, *selecting)).run()
        prepare(
            parse_settings(
                PrepareConfig,
                [f"input={rows}", f"image_root={root}", f"output_dir={tmp_path / 'alone' / name}", "val_ratio=0",
                 "progress=false", *settings],
            )  # fmt: skip
        )
        alone[name] = pq.read_table(tmp_path / "alone" / name / "train.parquet").to_pylist()

    selections = [tmp_path / name / "selected.parquet" for name in sources]
    mix = ["difficulty.enabled=false", "convert=true", "val_ratio=0"]
    Engine(parse_settings(EngineConfig, [f"input=[{selections[0]},{selections[1]}]", f"output_dir={tmp_path / 'mix'}",
                                         "progress=false", *mix])).run()  # fmt: skip

    [photo] = pq.read_table(selections[1]).to_pylist()
    assert photo["answer"] == "[100, 300, 180, 380]"
    with Image.open(io.BytesIO(photo["images"][0]["bytes"])) as shown:
        assert shown.size == (200, 400) and shown.getexif().get(0x0112) is None

    def without_index(rows):
        return [{**row, "extra_info": {**row["extra_info"], "index": None}} for row in rows]

    mixed = pq.read_table(tmp_path / "mix" / "parquet" / "train.parquet").to_pylist()
    assert without_index(mixed) == without_index(alone["synthetic"] + alone["photos"])

    # One run on both sources, each with its own settings, converts as the selections mixed.
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        f"synthetic: {{input: {synthetic}, image_root: {synthetic_root}}}\n"
        f"photos: {{input: {photo_rows}, image_root: {photos}, box_units: normalized}}\n"
    )
    one_run = tmp_path / "one_run"
    report = Engine(
        parse_settings(EngineConfig, [f"sources={sources}", f"output_dir={one_run}", "progress=false", *mix])
    ).run()

    assert pq.read_table(one_run / "parquet" / "train.parquet").to_pylist() == mixed
    assert report["stages"][0]["details"]["sources"] == {
        "synthetic": {"rows_in": 8, "rows_out": 8},
        "photos": {"rows_in": 2, "rows_out": 1},
    }


def source_settings_of(tmp_path) -> dict[str, str]:
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=2, val_rows_per_task=0)
    return {"jsonl": str(jsonl), "root": str(image_root)}


@pytest.mark.parametrize(
    "settings, error, message",
    [
        (["input={jsonl}", "sources={a: {input: {jsonl}}}"], ValueError, "give input=<file.s.> or sources="),
        ([], ValueError, "give input=<file.s.> or sources="),
        (["sources={a: {image_root: {root}}}"], ValueError, "sources.a: expected the source's settings with its input"),
        (["sources={a: {input: {jsonl}, val_ratio: 0.5}}"], ValueError,
         "sources.a: val_ratio set for the whole run, not per source; a source sets input, image_root"),
        (["sources={a: {input: {jsonl}, image_root: {root}}, b: {input: {jsonl}, image_root: /no/such/images}}"],
         FileNotFoundError, "sources.b.image_root=/no/such/images: no such directory"),
        (["sources={a: {input: {root}/none-*.jsonl}}"], FileNotFoundError, "none-.*jsonl: the pattern matches no file"),
        (["sources={root}/no-such.yaml"], FileNotFoundError, "sources=.*/no-such.yaml: no such file"),
        (["sources={jsonl}"], ValueError, "sources=.*synthetic.jsonl: not YAML"),
        (["sources=[{jsonl}]"], ValueError, "sources: expected a mapping of source names to their settings"),
    ],
)  # fmt: skip
def test_sources_are_checked_before_the_first_stage(tmp_path, settings, error, message):
    paths = source_settings_of(tmp_path)
    out = tmp_path / "out"
    given = [setting.replace("{jsonl}", paths["jsonl"]).replace("{root}", paths["root"]) for setting in settings]
    given += [f"output_dir={out}", "progress=false", "difficulty.enabled=false"]
    with pytest.raises(error, match=message):
        Engine(parse_settings(EngineConfig, given))
    assert not out.exists()


def test_a_source_that_gives_no_valid_row_stops_the_run_after_validation(tmp_path):
    """A source whose every row is dropped (here a wrong image_root) would leave the mix without it."""
    paths = source_settings_of(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "out"

    def run(*sources: str) -> None:
        settings = [*sources, f"output_dir={out}", "progress=false", "difficulty.enabled=false"]
        Engine(parse_settings(EngineConfig, settings)).run()

    with pytest.raises(EmptySourceError) as stopped:
        run(f"sources.good.input={paths['jsonl']}", f"sources.good.image_root={paths['root']}",
            f"sources.wrong_root.input={paths['jsonl']}", f"sources.wrong_root.image_root={tmp_path}")  # fmt: skip
    assert str(stopped.value).startswith(
        "sources.wrong_root: all 4 rows were dropped at validation (missing_image: 4); the first, row 1 (id "
    )
    assert str(stopped.value).endswith(f"not found in {os.path.realpath(tmp_path)}; each is in {out / 'dropped.jsonl'}")
    assert len(read_jsonl(out / "dropped.jsonl")) == 4 and not (out / ".embedded_images").exists()
    with pytest.raises(EmptySourceError, match="sources.none: it holds no rows"):
        run(f"sources.none.input={empty}", f"image_root={paths['root']}")
    # One input as well: a selection of nothing would end the run well, an empty selected.jsonl its output.
    with pytest.raises(EmptySourceError) as stopped:
        run(f"input={paths['jsonl']}", f"image_root={tmp_path}")
    assert str(stopped.value).startswith("input: all 4 rows were dropped at validation (missing_image: 4); the first")


def test_a_mapped_column_that_no_row_holds_stops_validation_naming_the_source(tmp_path):
    """As the converter does: a typo in a column path would drop or convert every row without its field."""
    paths = source_settings_of(tmp_path)
    out = tmp_path / "out"
    typo = "columns.rationale=rationle"
    with pytest.raises(MappedColumnNotFoundError) as stopped:
        Engine(parse_settings(EngineConfig, [
            f"sources.good.input={paths['jsonl']}", f"sources.good.image_root={paths['root']}",
            f"sources.typo.input={paths['jsonl']}", f"sources.typo.image_root={paths['root']}", f"sources.typo.{typo}",
            f"output_dir={out}", "progress=false", "difficulty.enabled=false",
        ])).run()  # fmt: skip
    assert str(stopped.value) == (
        f"sources.typo: {paths['jsonl']}: columns.rationale reads 'rationle', which none of the 4 rows holds; "
        "did you mean 'rationale'?"
    )
    assert not (out / "report.json").exists()
    with pytest.raises(MappedColumnNotFoundError, match=f"^{re.escape(paths['jsonl'])}: columns.rationale reads"):
        Engine(engine_config(paths["jsonl"], paths["root"], out, typo, "difficulty.enabled=false")).run()


def test_a_sources_pixel_boxes_that_all_fit_the_0_1000_grid_are_warned_of(tmp_path, capsys):
    from mixed_r1_verl.data.prepare import GRID_LIKE_BOXES_WARNED_FROM

    image_root = tmp_path / "images"
    image_root.mkdir()
    Image.new("RGB", (1600, 1200)).save(image_root / "large.png")
    source = tmp_path / "refs.jsonl"
    source.write_text("".join(
        json.dumps({"sent_id": i, "file_name": "large.png", "sent": f"object {i}", "bbox": [10 * i, 20, 300, 900]}) + "\n"
        for i in range(GRID_LIKE_BOXES_WARNED_FROM)
    ))  # fmt: skip
    settings = [f"sources.refs.input={source}", f"sources.refs.image_root={image_root}", "sources.refs.layout=refcoco",
                f"output_dir={tmp_path / 'out'}", "progress=false", "difficulty.enabled=false"]  # fmt: skip
    report = Engine(parse_settings(EngineConfig, settings)).run()
    [warning] = report["warnings"]
    assert warning.startswith(f"sources.refs: all {GRID_LIKE_BOXES_WARNED_FROM} grounding boxes on images larger")
    assert f"warning: {warning}\n" in capsys.readouterr().err


def test_an_id_two_sources_share_is_a_duplicate_naming_the_first_source_file(tmp_path):
    paths = source_settings_of(tmp_path)
    rows = read_jsonl(Path(paths["jsonl"]))[:3]
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text(json.dumps(rows[0]) + "\n")
    second.write_text(json.dumps({**rows[1], "id": rows[0]["id"]}) + "\n" + json.dumps(rows[2]) + "\n")
    out = tmp_path / "out"
    sources = f"sources={{a: {{input: {first}}}, b: {{input: {second}}}}}"

    report = Engine(
        parse_settings(
            EngineConfig,
            [sources, f"image_root={paths['root']}", f"output_dir={out}", "progress=false", "difficulty.enabled=false"],
        )
    ).run()

    [dropped] = read_jsonl(out / "dropped.jsonl")
    assert dropped["reason"] == "duplicate_id" and dropped["detail"].endswith(f"at row 1 of {first}")
    assert report["stages"][0]["details"]["sources"]["b"] == {"rows_in": 2, "rows_out": 1}


@pytest.mark.parametrize("max_distance", [0, 1, 4, 10, 63, 64])
def test_the_near_duplicate_index_finds_the_first_kept_row_a_comparison_of_every_pair_finds(max_distance):
    rng = random.Random(max_distance)
    centres = [rng.getrandbits(64) for _ in range(6)]

    def near_centre():
        hashes = []
        for _ in range(rng.choice((1, 1, 2))):
            value = rng.choice(centres)
            for bit in rng.sample(range(64), rng.randint(0, 12)):
                value ^= 1 << bit
            hashes.append(value)
        return tuple(hashes)

    index, kept = NearDuplicateIndex(max_distance, max_difference=1.0), []
    for number in range(400):
        item, hashes = ("q", rng.choice("ab")), near_centre()
        thumbnails = tuple(bytes([rng.choice((0, 1, 3))]) * 1024 for _ in hashes)
        every_pair = next(
            (
                row for other_item, other, other_thumbnails, row in kept
                if other_item == item and len(other) == len(hashes)
                and all(hamming(a, b) <= max_distance for a, b in zip(hashes, other))
                and all(abs(a[0] - b[0]) <= 1 for a, b in zip(thumbnails, other_thumbnails))
            ),
            None,
        )
        assert index.first_near(item, hashes, thumbnails) == every_pair
        if every_pair is None:
            index.add(item, hashes, thumbnails, number)
            kept.append((item, hashes, thumbnails, number))

"""Tasks added by installed packages (`mixed_r1_verl.tasks` entry points): scored by Mixed-Reward, accepted
and prompted by the converter, kept by the data engine, reported by evaluation; broken ones refused by name."""

import json
import logging
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import checkout_env, read_jsonl, score_saved
from task_plugins import (
    COUNTING_INSTRUCTION, VQA_SOURCE, counting_records, write_counting_plugin, write_distribution, write_vqa_plugin,
)  # fmt: skip

from mixed_r1_verl.data.engine import Engine, EngineConfig
from mixed_r1_verl.data.prepare import PrepareConfig, prepare
from mixed_r1_verl.data.prompts import FORMAT_INSTRUCTION
from mixed_r1_verl.data.records import BAD_REWARD_INFO, UNKNOWN_TASK
from mixed_r1_verl.data.synthetic import write_synthetic_dataset
from mixed_r1_verl.rewards import BUILTIN_TASKS, Task, compute_score, task_names
from mixed_r1_verl.cli import main as mixed_r1
from mixed_r1_verl.rewards.tasks import (
    DRIVER_TASKS_ENV_VAR,
    TaskPluginError,
    check_driver_tasks_are_installed,
    driver_tasks_env,
    plugin_tasks,
)
from mixed_r1_verl.settings import parse_settings

THINK = "<think>I count the shapes.</think>"


@pytest.fixture
def counting(install_tasks, tmp_path):
    install_tasks(write_counting_plugin(tmp_path / "site"))


def counting_score(response, ground_truth="3", **options):
    return compute_score("shapes", response, ground_truth, {"task": "counting"}, **options)


def test_an_installed_task_is_scored_with_its_accuracy_and_threshold(counting):
    assert task_names() == (*BUILTIN_TASKS, "counting")
    right = counting_score(f"{THINK}<answer>3</answer>")
    assert (right["task"], right["accuracy"], right["correct"], right["error"]) == ("counting", 1.0, 1.0, 0.0)
    assert right["score"] == pytest.approx(1.0)
    off_by_one = counting_score(f"{THINK}<answer>4</answer>")
    assert (off_by_one["accuracy"], off_by_one["correct"]) == (0.5, 1.0)  # the task's correct_threshold is 0.5
    assert off_by_one["score"] == pytest.approx(0.9 * 0.5 + 0.1)
    assert counting_score(f"{THINK}<answer>9</answer>")["correct"] == 0.0
    assert counting_score(f"{THINK}<answer>4</answer>", correct_threshold={"counting": 1.0})["correct"] == 0.0
    unformatted = counting_score("<answer>3</answer>", format_weight={"counting": 0.5})
    assert unformatted["format"] == 0.0 and unformatted["score"] == pytest.approx(0.5)


def test_an_installed_task_that_raises_or_returns_no_accuracy_is_a_reward_error(install_tasks, tmp_path, caplog):
    source = (
        "from mixed_r1_verl.rewards import Task\n"
        "PERCENT = Task('percent', lambda answer, truth, extra_info: float(answer), 'Answer in percent.')\n"
    )
    install_tasks(write_distribution(tmp_path / "site", "percent_task", source, {"percent": "percent_task:PERCENT"}))
    with caplog.at_level(logging.WARNING, logger="mixed_r1_verl.rewards.scoring"):
        over = compute_score("survey", f"{THINK}<answer>150</answer>", "150", {"task": "percent"})
        words = compute_score("survey", f"{THINK}<answer>half</answer>", "50", {"task": "percent"})
    for result in (over, words):
        assert (result["error"], result["score"], result["accuracy"], result["task"]) == (1.0, 0.0, 0.0, "percent")
    assert "task 'percent''s accuracy returned 150.0, expected a number in [0, 1]" in caplog.text
    assert "ValueError: could not convert string to float: 'half'" in caplog.text


def test_an_installed_tasks_accuracy_may_be_a_numpy_number(install_tasks, tmp_path):
    """An accuracy computed with numpy (np.float32, np.int64) is a number; numpy's bool is not."""
    source = (
        "import numpy as np\n"
        "from mixed_r1_verl.rewards import Task\n"
        "KINDS = {'half': np.float32(0.5), 'one': np.int64(1), 'bool': np.bool_(True)}\n"
        "KIND = Task('kind', lambda answer, truth, extra_info: KINDS[answer], 'Answer with a kind.')\n"
    )
    install_tasks(write_distribution(tmp_path / "site", "kind_task", source, {"kind": "kind_task:KIND"}))
    scored = {kind: compute_score("kinds", f"{THINK}<answer>{kind}</answer>", "x", {"task": "kind"})
              for kind in ("half", "one", "bool")}  # fmt: skip
    assert (scored["half"]["accuracy"], scored["half"]["error"]) == (0.5, 0.0)
    assert (scored["one"]["accuracy"], scored["one"]["error"]) == (1.0, 0.0)
    assert type(scored["half"]["accuracy"]) is float
    assert (scored["bool"]["accuracy"], scored["bool"]["error"]) == (0.0, 1.0)


def test_the_driver_names_its_installed_tasks_and_their_packages_for_the_ray_workers(counting):
    driver_env = driver_tasks_env()
    assert json.loads(driver_env[DRIVER_TASKS_ENV_VAR]) == {"counting": "counting_task"}
    check_driver_tasks_are_installed(driver_env)  # a worker where the package is installed too


def test_without_the_package_the_task_is_unknown(install_tasks, tmp_path):
    install_tasks(tmp_path / "empty")
    assert task_names() == BUILTIN_TASKS
    assert driver_tasks_env() == {}
    result = counting_score(f"{THINK}<answer>3</answer>")
    assert (result["task"], result["error"], result["score"]) == ("unknown", 1.0, 0.0)


BROKEN = [
    ("missing_module", "", {"gone": "no_such_module:GONE"}, "cannot be loaded: ModuleNotFoundError"),
    ("not_a_task", "GONE = {'name': 'gone'}\n", {"gone": "not_a_task:GONE"}, "is a dict, not a mixed_r1_verl.rewards.Task"),
    (
        "misnamed",
        "from mixed_r1_verl.rewards import Task\nT = Task('other_name', len, 'Count.')\n",
        {"gone": "misnamed:T"},
        "holds task 'other_name': the entry point must be named as its task",
    ),
    (
        "builtin_name",
        "from mixed_r1_verl.rewards import Task\nT = Task('chart', len, 'Count.')\n",
        {"chart": "builtin_name:T"},
        "cannot be loaded: ValueError: task name 'chart' is a built-in task",
    ),
]


@pytest.mark.parametrize("name, source, entry_points, reason", BROKEN, ids=[case[0] for case in BROKEN])
def test_a_broken_installed_task_is_refused_naming_its_entry_point(install_tasks, tmp_path, name, source, entry_points, reason):
    install_tasks(write_distribution(tmp_path / "site", name, source, entry_points))
    entry, target = next(iter(entry_points.items()))
    with pytest.raises(TaskPluginError) as refused:
        task_names()
    message = str(refused.value)
    assert message.startswith(f"entry point {entry} = {target} of group mixed_r1_verl.tasks (package {name})")
    assert reason in message


def test_a_broken_installed_task_leaves_the_built_in_tasks_scored(install_tasks, tmp_path):
    install_tasks(write_distribution(tmp_path / "site", "gone_task", "", {"gone": "gone_task:GONE"}))
    chart = compute_score("charts", f"{THINK}<answer>12</answer>", "12", {"task": "chart"})
    assert (chart["task"], chart["error"], chart["accuracy"]) == ("chart", 0.0, 1.0)
    gone = compute_score("shapes", f"{THINK}<answer>3</answer>", "3", {"task": "gone"})
    assert (gone["task"], gone["error"], gone["score"]) == ("unknown", 1.0, 0.0)


def test_a_broken_installed_task_ends_the_data_commands_in_one_line(tmp_path):
    site = write_distribution(tmp_path / "site", "gone_task", "", {"gone": "gone_task:GONE"})
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=1, val_rows_per_task=0)
    run = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.data.prepare", f"input={jsonl}", f"image_root={image_root}",
         f"output_dir={tmp_path / 'out'}", "progress=false"],
        env=checkout_env(site), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1].startswith(
        "TaskPluginError: entry point gone = gone_task:GONE of group mixed_r1_verl.tasks (package gone_task) cannot "
        "be loaded"
    )


def test_mixed_r1_tasks_lists_the_built_in_and_the_installed_tasks(counting, capsys):
    assert mixed_r1(["tasks"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "task        from                   correct at  reward fields  instruction",
        "matching    built-in               1.0",
        "chart       built-in               1.0",
        "grounding   built-in               0.5",
        "open_ended  built-in               0.5",
        "counting    package counting_task  0.5                        Answer with a single whole number.",
    ]
    assert mixed_r1(["tasks", "--help"]) == 0 and mixed_r1(["tasks", "all=true"]) == 2
    assert "mixed-r1 tasks takes no settings, got all=true" in capsys.readouterr().err


def test_mixed_r1_tasks_names_a_broken_installed_task(install_tasks, tmp_path, capsys):
    install_tasks(write_distribution(tmp_path / "site", "gone_task", "", {"gone": "gone_task:GONE"}))
    assert mixed_r1(["tasks"]) == 2
    assert "entry point gone = gone_task:GONE of group mixed_r1_verl.tasks (package gone_task) cannot be loaded" in (
        capsys.readouterr().err
    )


def test_two_packages_adding_one_task_are_refused(counting, install_tasks, tmp_path):
    install_tasks(write_distribution(tmp_path / "other", "counting_too", "from counting_task import COUNTING\n",
                               {"counting": "counting_too:COUNTING"}))  # fmt: skip
    with pytest.raises(TaskPluginError, match="another installed package adds task 'counting' too"):
        plugin_tasks()


@pytest.mark.parametrize(
    "settings, error",
    [
        ({"name": "Counting"}, "expected lower-case letters, digits and _"),
        ({"name": "all"}, "is reserved for report rows"),
        ({"instruction": " "}, "instruction must be a non-empty string"),
        ({"accuracy": 1.0}, "accuracy must be callable"),
        ({"correct_threshold": 0}, "correct_threshold=0, expected a number in (0, 1]"),
        ({"reward_fields": {"answers": dict}}, "reward field 'answers' has type dict, expected one of str, float, int, "
                                               "bool, list[str], list[float], list[int]"),
        ({"reward_fields": {"Answers": str}}, "reward field 'Answers': expected lower-case letters, digits and _"),
    ],
)
def test_a_task_is_checked_when_declared(settings, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        Task(**{"name": "counting", "accuracy": len, "instruction": "Count.", **settings})


def source_with_counting_rows(tmp_path, counting_rows: int):
    """The synthetic set's chart rows and `counting_rows` counting questions on its grounding images."""
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=4, seed=7, val_rows_per_task=0)
    rows = read_jsonl(jsonl)
    chart = [row for row in rows if row["task"] == "chart"]
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in chart + counting_records(rows, counting_rows)))
    return jsonl, image_root


def convert(jsonl, image_root, out):
    config = PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(out), val_ratio=0, progress=False)
    return prepare(config)


def test_the_converter_asks_an_installed_task_with_its_instruction_and_evaluation_reports_it(
    counting, tmp_path, capsys
):
    jsonl, image_root = source_with_counting_rows(tmp_path, counting_rows=3)
    summary = convert(jsonl, image_root, tmp_path / "out")
    assert summary["rows_written"] == 7 and summary["per_task"]["counting"]["train"] == 3
    rows = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    counted = [row for row in rows if row["extra_info"]["task"] == "counting"]
    assert len(counted) == 3 and all(row["ability"] == "counting" for row in counted)
    for row in counted:
        assert row["prompt"][-1]["content"].endswith(f"{COUNTING_INSTRUCTION} {FORMAT_INSTRUCTION}")
        assert row["reward_model"]["ground_truth"] == "1"

    responses = {row["extra_info"]["id"]: f"{THINK}<answer>1</answer>" for row in rows}
    responses[counted[0]["extra_info"]["id"]] = f"{THINK}<answer>2</answer>"  # one off: accuracy 0.5
    responses[counted[1]["extra_info"]["id"]] = f"{THINK}<answer>several</answer>"  # no count: a reward error
    run = tmp_path / "eval"
    assert score_saved(tmp_path / "out" / "train.parquet", responses, run) == 0
    tasks = json.loads((run / "summary.json").read_text())["tasks"]
    assert tasks["counting"]["n"] == 3 and tasks["counting"]["errors"] == 1
    assert tasks["counting"]["accuracy"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert tasks["all"]["n"] == 7
    assert "| counting | 3 |" in capsys.readouterr().out


def test_without_the_package_the_converter_rejects_its_rows_naming_the_known_tasks(install_tasks, tmp_path):
    install_tasks(tmp_path / "empty")
    jsonl, image_root = source_with_counting_rows(tmp_path, counting_rows=2)
    summary = convert(jsonl, image_root, tmp_path / "out")
    assert summary["rows_written"] == 4 and summary["rejects_by_task"]["unknown"] == {UNKNOWN_TASK: 2}
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert {reject["detail"] for reject in rejects} == {
        "task 'counting' is not one of matching, chart, grounding, open_ended"
    }


def test_the_data_engine_counts_and_balances_an_installed_task(counting, tmp_path):
    jsonl, image_root = source_with_counting_rows(tmp_path, counting_rows=5)
    out = tmp_path / "engine"
    settings = [f"input={jsonl}", f"image_root={image_root}", f"output_dir={out}", "progress=false",
                "difficulty.enabled=false", "balance.targets={counting: 2}"]  # fmt: skip
    report = Engine(parse_settings(EngineConfig, settings)).run()
    stages = {stage["name"]: stage for stage in report["stages"]}
    assert stages["validate"]["rows_in"]["counting"] == 5
    assert report["selected"]["counting"] == 2 and report["selected"]["chart"] == 4
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert sum(row["task"] == "counting" for row in selected) == 2



@pytest.fixture
def vqa(install_tasks, tmp_path):
    install_tasks(write_vqa_plugin(tmp_path / "site"))


def vqa_records(synthetic_rows: list[dict], reward_infos: list) -> list[dict]:
    """A VQA question on a synthetic image for each reward_info (the record's field, or left out for None)."""
    images = [row["images"] for row in synthetic_rows]
    return [
        {"id": f"vqa-{i}", "task": "vqa", "data_source": "vqa", "images": images[i], "problem": "What is drawn?",
         "answer": "shape", **({"reward_info": info} if info is not None else {})}
        for i, info in enumerate(reward_infos)
    ]  # fmt: skip


def test_an_installed_tasks_reward_fields_are_written_with_their_types_and_reach_its_accuracy(vqa, tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=4, seed=7, val_rows_per_task=0)
    rows = read_jsonl(jsonl)
    infos = [{"answers": ["shape", "Shape", "square"]}, {"answers": ["square"], "min_matches": 1}, None]
    chart = [row for row in rows if row["task"] == "chart"]
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in chart + vqa_records(rows, infos)))
    summary = convert(jsonl, image_root, tmp_path / "out")
    assert summary["rows_written"] == 7, summary

    table = pq.read_table(tmp_path / "out" / "train.parquet")
    reward_info = table.schema.field("extra_info").type.field("reward_info").type
    answers, min_matches = reward_info
    assert (answers.name, answers.type.value_type, min_matches.name, min_matches.type) == (
        "answers", pa.string(), "min_matches", pa.int64()
    )  # fmt: skip
    written = {row["extra_info"]["id"]: row["extra_info"]["reward_info"] for row in table.to_pylist()}
    assert written["vqa-0"] == {"answers": ["shape", "Shape", "square"], "min_matches": None}
    assert written["vqa-1"] == {"answers": ["square"], "min_matches": 1}
    assert written["vqa-2"] == written[chart[0]["id"]] == {"answers": None, "min_matches": None}

    responses = {key: f"{THINK}<answer>shape</answer>" for key in written}
    responses["vqa-1"] = f"{THINK}<answer>square</answer>"
    run = tmp_path / "eval"
    assert score_saved(tmp_path / "out" / "train.parquet", responses, run) == 0
    scores = {row["id"]: row for row in read_jsonl(run / "scores.jsonl") if row["task"] == "vqa"}
    assert scores["vqa-0"]["accuracy"] == pytest.approx(2 / 3) and scores["vqa-1"]["accuracy"] == 1.0
    # A row without reward fields reaches the accuracy with none: this one raises, a reward error.
    assert scores["vqa-2"]["error"] == 1.0


def test_reward_fields_map_one_by_one_from_a_sources_own_layout_with_constants_added(vqa, tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=7, val_rows_per_task=0)
    image = read_jsonl(jsonl)[0]["images"][0]
    # VQAv2's layout: each annotator's answer in a list of objects.
    vqa_rows = [
        {"question_id": 1, "image": image, "question": "<image>How many?", "multiple_choice_answer": "2",
         "annotations": {"answers": [{"answer": "2"}, {"answer": "two"}, {"answer": "2"}]}},
        {"question_id": 2, "image": image, "question": "<image>What color?", "multiple_choice_answer": "red",
         "annotations": {"answers": []}},
        {"question_id": 3, "image": image, "question": "<image>How many?", "multiple_choice_answer": "3",
         "annotations": {"answers": [{"answer": "3"}, {"answer": 3}]}},
        {"question_id": 4, "image": image, "question": "<image>Is it red?", "multiple_choice_answer": "yes"},
    ]  # fmt: skip
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in vqa_rows))
    out = tmp_path / "out"
    settings = [f"input={jsonl}", f"image_root={image_root}", f"output_dir={out}", "val_ratio=0", "progress=false",
                "columns.id=question_id", "columns.images=image", "columns.problem=question",
                "columns.answer=multiple_choice_answer", "columns.reward_info.answers=annotations.answers.*.answer",
                "constants.task=vqa", "constants.data_source=vqav2", "constants.reward_info.min_matches=2"]  # fmt: skip
    summary = prepare(parse_settings(PrepareConfig, settings))
    assert summary["rows_written"] == 3 and summary["ignored_fields"] == {}, summary

    written = {row["extra_info"]["id"]: row["extra_info"]["reward_info"] for row in pq.read_table(out / "train.parquet").to_pylist()}
    assert written == {
        "1": {"answers": ["2", "two", "2"], "min_matches": 2},
        "2": {"answers": [], "min_matches": 2},
        "4": {"answers": None, "min_matches": 2},
    }
    [reject] = read_jsonl(out / "rejects.jsonl")
    assert (reject["id"], reject["reason"], reject["detail"]) == ("3", BAD_REWARD_INFO, "reward_info.answers: item 1: expected str, got 3")


@pytest.mark.parametrize(
    "setting, message",
    [
        ("columns.problem.text=question", "columns.problem must be a dotted path, got {'text': 'question'}"),
        ("columns.reward_info.answers.text=a", "columns.reward_info must be a dotted path, or reward fields to paths, got "
                                              "{'answers': {'text': 'a'}}"),
        ("constants.reward_info=3", "constants.reward_info must be an object of reward fields, got 3"),
    ],
)  # fmt: skip
def test_a_column_mapping_of_the_wrong_shape_is_refused_by_name(tmp_path, setting, message):
    settings = ["input=rows.jsonl", f"image_root={tmp_path}", f"output_dir={tmp_path / 'out'}", setting]
    with pytest.raises(ValueError) as refused:
        prepare(parse_settings(PrepareConfig, settings))
    assert str(refused.value) == message


def test_mixed_r1_tasks_lists_an_installed_tasks_reward_fields(vqa, capsys):
    assert mixed_r1(["tasks"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "vqa         package vqa_task  1.0         answers: list[str], min_matches: int  Answer with a word or a short phrase."
    )


def test_reward_fields_reach_the_accuracy_as_plain_values_where_the_batch_holds_numpy_arrays(vqa):
    import numpy as np

    reward_info = {"answers": np.array(["shape", "square"], dtype=object), "min_matches": np.int64(1)}
    scored = compute_score("vqa", f"{THINK}<answer>Square</answer>", "shape", {"task": "vqa", "reward_info": reward_info})
    assert (scored["accuracy"], scored["error"]) == (1.0, 0.0)


@pytest.mark.parametrize(
    "task, reward_info, detail",
    [
        ("vqa", {"answers": "shape"}, "reward_info.answers: expected list[str], got 'shape'"),
        ("vqa", {"answers": ["shape", 3]}, "reward_info.answers: item 1: expected str, got 3"),
        ("vqa", {"min_matches": 2.5}, "reward_info.min_matches: expected int, got 2.5"),
        ("vqa", {"weight": 1}, "reward_info.weight: task 'vqa' has no such reward field (answers, min_matches)"),
        ("vqa", ["shape"], "field 'reward_info' must be an object of the reward fields of task 'vqa' (answers, "
                           "min_matches), got ['shape']"),
        ("chart", {"answers": ["1"]}, "reward_info.answers: task 'chart' has no such reward field (none)"),
    ],
)
def test_reward_fields_that_do_not_fit_the_tasks_declaration_are_rejected_by_name(vqa, tmp_path, task, reward_info, detail):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=7, val_rows_per_task=0)
    rows = read_jsonl(jsonl)
    [record] = vqa_records(rows, [reward_info])
    if task == "chart":
        record = {**next(row for row in rows if row["task"] == "chart"), "reward_info": reward_info}
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in [*rows, record]))
    summary = convert(jsonl, image_root, tmp_path / "out")
    assert summary["rows_written"] == 4
    [reject] = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert (reject["reason"], reject["detail"]) == (BAD_REWARD_INFO, detail)


def test_two_tasks_declaring_one_reward_field_with_two_types_are_refused(vqa, install_tasks, tmp_path):
    source = VQA_SOURCE.replace('"vqa", vqa_accuracy', '"vqa_count", vqa_accuracy').replace("list[str]", "list[int]")
    install_tasks(write_distribution(tmp_path / "other", "vqa_count_task", source, {"vqa_count": "vqa_count_task:VQA"}))
    with pytest.raises(TaskPluginError) as refused:
        plugin_tasks()
    # Named from whichever of the two the entry points list second.
    assert re.search(r"\(package vqa(_count)?_task\): reward field 'answers' of task 'vqa(_count)?' is a list\[(str|int)\], "
                     r"and task 'vqa(_count)?' declares it a list\[(str|int)\]: records of both share one parquet column",
                     str(refused.value)), refused.value  # fmt: skip


def test_the_data_engine_keeps_the_reward_fields_of_the_rows_it_selects(vqa, tmp_path):
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=7, val_rows_per_task=0)
    infos = [{"answers": ["shape", "square"], "min_matches": 2}, {"answers": ["circle"]}]
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in vqa_records(read_jsonl(jsonl), infos)))
    out = tmp_path / "engine"
    settings = [f"input={jsonl}", f"image_root={image_root}", f"output_dir={out}", "progress=false",
                "difficulty.enabled=false", "convert=true", "val_ratio=0"]  # fmt: skip
    Engine(parse_settings(EngineConfig, settings)).run()
    selected = {row["id"]: row["reward_info"] for row in read_jsonl(out / "selected.jsonl")}
    assert selected == {"vqa-0": infos[0], "vqa-1": infos[1]}
    converted = pq.read_table(out / "parquet" / "train.parquet").to_pylist()
    assert {row["extra_info"]["id"]: row["extra_info"]["reward_info"]["answers"] for row in converted} == {
        "vqa-0": ["shape", "square"], "vqa-1": ["circle"]
    }
    # Selected with its images embedded: the reward fields are typed columns, and the conversion is the same.
    embedded = tmp_path / "embedded"
    settings[2] = f"output_dir={embedded}"
    Engine(parse_settings(EngineConfig, [*settings, "embed_images=true"])).run()
    table = pq.read_table(embedded / "selected.parquet")
    assert table.schema.field("reward_info").type.field("min_matches").type == pa.int64()
    assert {row["id"]: row["reward_info"] for row in table.to_pylist()} == {
        "vqa-0": infos[0], "vqa-1": {**infos[1], "min_matches": None}
    }
    assert pq.read_table(embedded / "parquet" / "train.parquet").to_pylist() == converted

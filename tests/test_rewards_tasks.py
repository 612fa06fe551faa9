"""Tasks added by installed packages (`mixed_r1_verl.tasks` entry points): scored by Mixed-Reward, accepted
and prompted by the converter, kept by the data engine, reported by evaluation; broken ones refused by name."""

import json
import logging
import re

import pyarrow.parquet as pq
import pytest
from data_helpers import read_jsonl, score_saved
from task_plugins import COUNTING_INSTRUCTION, counting_records, write_counting_plugin, write_distribution

from mixed_r1_verl.data.engine import Engine, EngineConfig
from mixed_r1_verl.data.prepare import PrepareConfig, prepare
from mixed_r1_verl.data.prompts import FORMAT_INSTRUCTION
from mixed_r1_verl.data.records import UNKNOWN_TASK
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


def test_mixed_r1_tasks_lists_the_built_in_and_the_installed_tasks(counting, capsys):
    assert mixed_r1(["tasks"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "task        from                   correct at  instruction",
        "matching    built-in               1.0",
        "chart       built-in               1.0",
        "grounding   built-in               0.5",
        "open_ended  built-in               0.5",
        "counting    package counting_task  0.5         Answer with a single whole number.",
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


"""The learning proof's orchestration: its plan, the evaluation step, the table and the plot."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from data_helpers import REPO, convert_synthetic
from mixed_r1_verl.eval.cache import discard_generations_made_otherwise
from mixed_r1_verl.eval.report import write_summary
from mixed_r1_verl.eval.scoring import summarize
from mixed_r1_verl.learn import (
    CHECKPOINT_MODEL,
    RUNS,
    DoneStepsDiffer,
    Layout,
    LearnConfig,
    Step,
    StepFailed,
    TooLateToStart,
    check_done_steps,
    eval_step,
    execute,
    grpo_ray_cpu_shortfall,
    learning_table,
    main as learn_main,
    plan,
    publish_checkpoint,
    read_step_times,
    recorded_command,
    step_file_prefix,
    target_checks,
    task_curves,
    wall_time,
    write_report,
)
from mixed_r1_verl.run_logs import read_metrics_log
from mixed_r1_verl.settings import EXIT_USAGE
from mixed_r1_verl.data.synthetic import TASKS
from mixed_r1_verl.verl_adapter.stop_by import write_early_end


def run_learn(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.learn", *args], env=env, capture_output=True, text=True, check=True
    )


def test_dry_run_prints_every_command_in_order_and_runs_nothing(tmp_path):
    work = tmp_path / "learn"
    output = run_learn(f"work_dir={work}", "dry_run=true", "seed=7", "sft_overrides=[optim.lr=1e-4]").stdout
    assert not work.exists()
    order = [
        "mixed_r1_verl.models.tiny_qwen25vl",
        "mixed_r1_verl.data.synthetic",
        "mixed_r1_verl.data.prepare",
        f"out_dir={work}/eval/base",
        "mixed_r1_verl.sft recipe=learn",
        f"link {work}/sft_model",
        f"out_dir={work}/eval/sft",
        "mixed_r1_verl.main recipe=learn",
        f"link {work}/grpo_model",
        f"out_dir={work}/eval/grpo",
        f"report {work}/report/learning_table.md",
    ]
    positions = [output.index(fragment) for fragment in order]
    assert positions == sorted(positions)
    assert f"VERL_FILE_LOGGER_PATH={work}/logs/grpo.jsonl" in output and "optim.lr=1e-4" in output
    assert output.count("seed=7") >= 5
    assert f"actor_rollout_ref.model.path={work}/sft_model" in output
    for artefact in ("table", "plot", "GRPO metrics", "evaluation grpo"):
        assert artefact in output.split("Artefacts")[1]


def test_dry_run_marks_the_steps_done_earlier_and_names_those_that_no_longer_fit(tmp_path):
    work = tmp_path / "learn"
    build = plan(LearnConfig(work_dir=str(work)))[0]
    (work / "base_model").mkdir(parents=True)
    (work / "base_model" / "config.json").write_text("{}")
    (work / "logs").mkdir()
    record = {"seconds": 1.0, "execution": "earlier", "command": recorded_command(build, work)}
    (work / "logs" / "step_times.json").write_text(json.dumps({build.name: record}))

    output = run_learn(f"work_dir={work}", "dry_run=true").stdout
    assert "[1/11] build the base model (done earlier: skipped)" in output
    assert "[2/11] write the synthetic set\n" in output

    refused = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.learn", f"work_dir={work}", "dry_run=true", "seed=1"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "build the base model: done with --seed=0; this command asks for --seed=1" in refused.stderr


def test_stop_after_ends_the_plan_with_that_models_evaluation(tmp_path):
    names = [step.name for step in plan(LearnConfig(work_dir=str(tmp_path), stop_after="sft"))]
    assert names[-1] == "evaluate sft" and not any(name.startswith("GRPO") for name in names)
    assert [step.name for step in plan(LearnConfig(work_dir=str(tmp_path), stop_after="base"))][-1] == "evaluate base"
    refused = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.learn", f"work_dir={tmp_path}", "stop_after=grpo", "dry_run=true"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode != 0 and "stop_after=grpo: must be one of base, sft" in refused.stderr


def test_model_overrides_build_a_larger_base_model_and_bad_ones_stop_the_plan(tmp_path):
    larger = ["num_hidden_layers=8", "hidden_size=768", "intermediate_size=2304"]
    build = plan(LearnConfig(work_dir=str(tmp_path), model_overrides=larger))[0]
    subprocess.run(build.command(), env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, capture_output=True)
    text_config = json.loads((tmp_path / "base_model" / "config.json").read_text())["text_config"]
    assert [text_config[name.split("=")[0]] for name in larger] == [8, 768, 2304]
    with pytest.raises(ValueError, match="text head width hidden_size/num_attention_heads = 62.5"):
        plan(LearnConfig(work_dir=str(tmp_path), model_overrides=["hidden_size=500"]))
    with pytest.raises(ValueError, match="unknown size fields \\['layers'\\]"):
        plan(LearnConfig(work_dir=str(tmp_path), model_overrides=["layers=8"]))


def test_plan_evaluates_every_model_on_the_held_out_split_with_one_embedding_table(tmp_path):
    steps = plan(LearnConfig(work_dir=str(tmp_path)))
    evaluations = [step.argv for step in steps if step.name.startswith("evaluate")]
    assert len(evaluations) == 3
    for argv in evaluations:
        assert f"data={tmp_path}/data/val.parquet" in argv and f"embedding_model={tmp_path}/base_model" in argv
        assert "backend=hf" in argv and not any(arg.startswith("vllm_kwargs") for arg in argv)
    for backend in ("vllm", "auto"):  # auto is vLLM wherever vLLM is installed
        on_vllm = eval_step(LearnConfig(eval_backend=backend), Layout(tmp_path), "sft", tmp_path / "sft_model").argv
        assert f"backend={backend}" in on_vllm and "vllm_kwargs.enforce_eager=true" in on_vllm
    grpo = next(step for step in steps if step.name.startswith("GRPO"))
    assert f"reward.reward_kwargs.embedding_model={tmp_path}/base_model" in grpo.argv


def test_publish_points_at_the_latest_checkpoint_and_completes_it(tmp_path, tiny_model_dir):
    checkpoints = tmp_path / "sft"
    for step in (3, 6):
        (checkpoints / f"global_step_{step}" / "huggingface").mkdir(parents=True)
        (checkpoints / f"global_step_{step}" / "huggingface" / "config.json").write_text("{}")
    (checkpoints / "latest_checkpointed_iteration.txt").write_text("6")
    link = tmp_path / "sft_model"
    publish_checkpoint(checkpoints, "huggingface", link, Path(tiny_model_dir))
    assert link.resolve() == (checkpoints / "global_step_6" / "huggingface").resolve()
    assert (link / "preprocessor_config.json").read_text() == (tiny_model_dir / "preprocessor_config.json").read_text()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        publish_checkpoint(tmp_path / "nothing", "huggingface", tmp_path / "x", Path(tiny_model_dir))


def test_evaluation_step_scores_a_model_with_the_project_evaluation(tmp_path, tiny_model_dir):
    layout = Layout(tmp_path)
    convert_synthetic(tmp_path / "src", layout.data, rows_per_task=2, seed=4, model_path=str(tiny_model_dir))
    shutil.copytree(tiny_model_dir, layout.base_model)  # every evaluation's BMAS table, as the pipeline builds it
    step = eval_step(LearnConfig(eval_max_new_tokens=4), layout, "base", tiny_model_dir)
    execute([step], env={**os.environ, "PYTHONPATH": str(REPO)})
    out = layout.eval_dir("base")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == set(TASKS) | {"all"} and summary["tasks"]["all"]["n"] == 4
    assert len((out / "generations.jsonl").read_text().splitlines()) == 4


def fabricated_summary(accuracy: dict[str, float], n: int = 10, collapsed: bool = False) -> dict:
    """Rows of which the first rate x n are right; references cycle through four answers, responses give
    the reference when right and "x" when wrong, or "a" always when collapsed."""
    rows = []
    for task, rate in accuracy.items():
        correct = round(rate * n)
        for i in range(n):
            value = 1.0 if i < correct else 0.0
            reference = "abcd"[i % 4]
            answer = "a" if collapsed else (reference if value else "x")
            rows.append({"id": f"{task}-{i}", "data_source": task, "task": task, "accuracy": value,
                         "correct": value, "format": 1.0, "score": 0.9 * value + 0.1, "error": 0.0,
                         "answer": answer, "reference": reference})  # fmt: skip
    return summarize(rows)


def write_metrics_log(path: Path, steps: int, top_answer_share: bool = False) -> None:
    """verl's file logger: one {"step": n, "data": {...}} object per line."""
    lines = []
    for step in range(1, steps + 1):
        data = {f"mixed_r1/{task}/accuracy/mean": min(1.0, 0.1 * step + i * 0.05) for i, task in enumerate(TASKS)}
        if top_answer_share:
            data.update({f"mixed_r1/{task}/top_answer_share": 0.25 + 0.1 * step for task in TASKS})
        data.update({"mixed_r1/chart/count": 16.0, "actor/pg_loss": 0.1, "timing_s/step": 3.2})
        lines.append(json.dumps({"step": step, "data": data}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


TRAINING_STEPS = {"sft": "SFT (cold start, stopped early)", "grpo": "GRPO with Mixed-Reward from the SFT model"}


def save_checkpoint(layout, run, step, trained: Path, run_ended: bool = True) -> Path:
    """A checkpoint of `run` at `step`, made the latest, whose Hugging Face model is the `trained` model's
    config and weights (written now), as verl's checkpoints hold it; with `run_ended`, the run's command
    recorded in the step times as succeeded."""
    checkpoints = {"sft": layout.sft_checkpoints, "grpo": layout.grpo_checkpoints}[run]
    model = checkpoints / f"global_step_{step}" / CHECKPOINT_MODEL[run]
    model.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(trained / name, model / name)
    (checkpoints / "latest_checkpointed_iteration.txt").write_text(str(step))
    if run_ended:
        times = read_step_times(layout.step_times)
        times[TRAINING_STEPS[run]] = {"seconds": 1.0, "execution": "earlier"}
        layout.step_times.parent.mkdir(parents=True, exist_ok=True)
        layout.step_times.write_text(json.dumps(times))
    return model


def evaluate(layout, run, model, summary=None) -> None:
    """A finished evaluation of `model` in eval/<run> (`summary`, else one of accuracy 0.5 on every task),
    with the evaluation's record of the model it scored."""
    out = layout.eval_dir(run)
    out.mkdir(parents=True, exist_ok=True)
    discard_generations_made_otherwise(out, str(model), {"max_new_tokens": 4}, {"backend": "hf", "dtype": "float32"})
    write_summary(summary or fabricated_summary({task: 0.5 for task in TASKS}), out)


def test_table_has_every_run_and_the_deltas(tmp_path):
    summaries = {
        "base": fabricated_summary({"chart": 0.0, "matching": 0.3}),
        "sft": fabricated_summary({"chart": 0.4, "matching": 0.5}),
        "grpo": fabricated_summary({"chart": 0.6, "matching": 0.3}),
    }
    header, rows = learning_table(summaries)
    by_task = {row[0]: dict(zip(header, row)) for row in rows}
    assert list(by_task) == ["chart", "matching", "all"]
    assert by_task["chart"]["n"] == 10
    assert by_task["chart"]["accuracy grpo"] == pytest.approx(0.6)
    assert by_task["chart"]["Δaccuracy grpo-sft"] == pytest.approx(0.2)
    assert by_task["matching"]["Δaccuracy grpo-sft"] == pytest.approx(-0.2)
    assert by_task["all"]["Δaccuracy grpo-sft"] == pytest.approx(0.0)
    assert by_task["all"]["Δaccuracy sft-base"] == pytest.approx(0.3)
    checks = target_checks(header, rows)
    assert checks["overall accuracy up by >= 0.05"] is False and checks["no task down by more than 0.02"] is False
    summaries["grpo"] = fabricated_summary({"chart": 0.6})
    with pytest.raises(ValueError, match="'matching' has no evaluation in run"):
        learning_table(summaries)


def test_targets_met_exactly_by_counts_are_met():
    """Rates are ratios of counts: 200/400 - 180/400 is a gain of 0.05, and 50/100 - 52/100 a loss of 0.02,
    however the floats round."""
    summaries = {
        "sft": fabricated_summary({"chart": 0.42, "grounding": 0.42, "matching": 0.44, "open_ended": 0.52}, n=100),
        "grpo": fabricated_summary({task: 0.5 for task in TASKS}, n=100),
    }
    header, rows = learning_table(summaries)
    by_task = {row[0]: dict(zip(header, row)) for row in rows}
    assert by_task["all"]["Δaccuracy grpo-sft"] == pytest.approx(0.05)
    assert by_task["open_ended"]["Δaccuracy grpo-sft"] == pytest.approx(-0.02)
    assert all(target_checks(header, rows).values()), target_checks(header, rows)

    summaries["grpo"] = fabricated_summary({"chart": 0.5, "grounding": 0.5, "matching": 0.5, "open_ended": 0.49}, n=100)
    header, rows = learning_table(summaries)
    checks = target_checks(header, rows)
    assert checks["overall accuracy up by >= 0.05"] is False and checks["no task down by more than 0.02"] is False


def test_under_a_time_budget_grpo_stops_by_the_budget_less_the_time_its_evaluation_and_the_report_take(tmp_path):
    started = 1_800_000_000.0

    def grpo_command(config):
        grpo = next(step for step in plan(config, started) if step.name.startswith("GRPO"))
        return [arg for arg in grpo.command() if arg.startswith("mixed_r1.stop_by=")], grpo.describe()

    assert grpo_command(LearnConfig(work_dir=str(tmp_path)))[0] == []
    budget = LearnConfig(work_dir=str(tmp_path), time_budget_s=600)
    stop_by, described = grpo_command(budget)
    assert stop_by == [f"mixed_r1.stop_by={int(started) + 600 - 120}"] and stop_by[0] in described
    layout = Layout(tmp_path)
    layout.logs.mkdir()
    timed = {"evaluate base": 40.0, "SFT (cold start, stopped early)": 300.0}
    layout.step_times.write_text(json.dumps({name: {"seconds": s, "execution": "x"} for name, s in timed.items()}))
    assert grpo_command(budget)[0] == [f"mixed_r1.stop_by={int(started) + 600 - 60}"]  # 1.25 x 40 s + 10 s


def test_under_a_time_budget_sft_ends_by_its_share_of_the_budget(tmp_path):
    started = time.time()

    def sft_stop_by(config):
        sft = next(step for step in plan(config, started) if step.name.startswith("SFT"))
        return [arg for arg in sft.command() if arg.startswith("mixed_r1.stop_by=")]

    assert sft_stop_by(LearnConfig(work_dir=str(tmp_path))) == []
    assert sft_stop_by(LearnConfig(work_dir=str(tmp_path), time_budget_s=600)) == [f"mixed_r1.stop_by={int(started + 240)}"]
    shorter = LearnConfig(work_dir=str(tmp_path), time_budget_s=600, sft_budget_share=0.25)
    assert sft_stop_by(shorter) == [f"mixed_r1.stop_by={int(started + 150)}"]
    # Started so late that its share has passed: SFT still gets a minute to train and save a step.
    started = time.time() - 1000
    [late] = sft_stop_by(shorter)
    assert time.time() + 55 <= int(late.partition("=")[2]) <= time.time() + 60


@pytest.mark.parametrize(
    "setting, refusal",
    [
        ("sft_budget_share=1.5", "sft_budget_share=1.5: must lie between 0 and 1"),
        ("time_budget_s=0", "time_budget_s=0: must be more than 0 seconds, or null"),
        ("time_budget_s=-60", "time_budget_s=-60: must be more than 0 seconds, or null"),
        ("eval_batch_size=0", "eval_batch_size=0: must be at least 1 prompt per generation call"),
        ("eval_backend=vlm", "eval_backend=vlm: must be one of auto, vllm, hf"),
    ],
)
def test_settings_the_proof_would_refuse_later_are_refused_at_its_start(tmp_path, capsys, setting, refusal):
    with pytest.raises(SystemExit) as stopped:
        learn_main([f"work_dir={tmp_path}", "dry_run=true", setting])
    assert stopped.value.code == EXIT_USAGE and f"{refusal} (see --help)" in capsys.readouterr().err


def test_grpo_left_too_little_time_is_not_started_and_the_table_shows_the_models_evaluated(
    tmp_path, tiny_model_dir, capsys
):
    layout = Layout(tmp_path)
    shutil.copytree(tiny_model_dir, layout.base_model)
    layout.data.mkdir()
    (layout.data / "summary.json").write_text("{}")
    evaluate(layout, "base", layout.base_model, fabricated_summary({task: 0.1 for task in TASKS}))
    evaluate(layout, "sft", save_checkpoint(layout, "sft", 500, tiny_model_dir))
    times = {**read_step_times(layout.step_times), "evaluate base": {"seconds": 100.0, "execution": "earlier"}}
    layout.step_times.write_text(json.dumps(times))
    # 560 s in all, 440 s of them spent: GRPO's stop_by, 135 s (1.25 x 100 s + 10 s) before the end, has passed.
    steps = plan(LearnConfig(work_dir=str(tmp_path), time_budget_s=560), started=time.time() - 440)
    with pytest.raises(TooLateToStart) as late:
        execute(steps, env=dict(os.environ), times_log=layout.step_times, work_dir=tmp_path)
    assert re.fullmatch(
        r"GRPO with Mixed-Reward from the SFT model was not started: the time budget's end less the 135 s kept "
        r"for the last evaluation and the report passed \d+ s ago, less than the 60 s needed to train and save "
        r"a step",
        str(late.value),
    )
    assert "[8/11] GRPO with Mixed-Reward from the SFT model: not started: the time budget's" in capsys.readouterr().out
    assert not layout.grpo_checkpoints.exists()

    write_report(layout, steps, not_started=str(late.value))
    table = layout.table.read_text()
    assert "| grounding | 10 | 0.100 | 0.500 | +0.400 |" in table and "GRPO steps trained: 0." in table
    assert f"Not in the table: GRPO has no checkpoint.\n\n{late.value}.\n\n" in table
    assert "- not checked: the table has no SFT and GRPO models to compare" in table
    assert (layout.report / "base_vs_sft" / "compare.md").exists() and not layout.plot.exists()

    # A GRPO that the budget ended at step 12 of 40 is not continued either; its evaluation stays in the table.
    evaluate(layout, "grpo", save_checkpoint(layout, "grpo", 12, tiny_model_dir))
    end_grpo(layout, 12, planned_last_step=40)
    write_metrics_log(layout.grpo_log, steps=12)
    steps = plan(LearnConfig(work_dir=str(tmp_path), time_budget_s=560, continue_grpo=True), time.time() - 440)
    with pytest.raises(TooLateToStart) as late:
        execute(steps, env=dict(os.environ), times_log=layout.step_times, work_dir=tmp_path)
    write_report(layout, steps, not_started=str(late.value))
    table = layout.table.read_text()
    assert "| grounding | 10 | 0.100 | 0.500 | 0.500 | +0.000 | +0.400 |" in table and layout.plot.exists()
    assert "GRPO steps trained: 12 of 40 (the time budget ended it" in table and "Not in the table" not in table
    assert layout.eval_dir("grpo").exists() and not layout.eval_dir("grpo_step_12").exists()


def test_a_dry_run_says_when_the_time_budget_would_not_start_grpo(tmp_path, capsys):
    learn_main([f"work_dir={tmp_path}", "dry_run=true", "time_budget_s=100"])
    out = capsys.readouterr().out
    assert "[8/11] GRPO with Mixed-Reward from the SFT model (would not be started: the time budget's end less " in out
    assert "kept for the last evaluation and the report passed 2" in out


def test_report_writes_the_table_the_comparisons_and_the_plot(tmp_path, tiny_model_dir):
    layout = Layout(tmp_path)
    shutil.copytree(tiny_model_dir, layout.base_model)
    models = {
        "base": layout.base_model, "sft": save_checkpoint(layout, "sft", 170, tiny_model_dir),
        "grpo": save_checkpoint(layout, "grpo", 5, tiny_model_dir),
    }  # fmt: skip
    for run, rate in zip(RUNS, (0.1, 0.4, 0.6)):
        evaluate(layout, run, models[run], fabricated_summary({task: rate for task in TASKS}, collapsed=run == "grpo"))
    write_metrics_log(layout.grpo_log, steps=5, top_answer_share=True)
    steps = plan(LearnConfig(work_dir=str(tmp_path)))
    commands = [step.name for step in steps if step.run is None]
    layout.step_times.parent.mkdir(parents=True, exist_ok=True)
    layout.step_times.write_text(json.dumps({name: {"seconds": 90.0, "execution": "one"} for name in commands}))
    write_report(layout, steps)
    table = layout.table.read_text()
    assert "| grounding | 10 | 0.100 | 0.400 | 0.600 | +0.200 | +0.300 |" in table
    assert "- [x] overall accuracy up by >= 0.05" in table and "- [x] format rate >= 0.95 after GRPO" in table
    assert "| SFT (cold start, stopped early) | 90.0 |" in table
    assert f"| total | {90.0 * len(commands):.1f} ({1.5 * len(commands):.1f} min) |" in table
    assert "- [x] whole proof <= 20 min wall" in table and "SFT steps trained: 170. GRPO steps trained: 5." in table
    text_config = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]
    assert f"text: {text_config['num_hidden_layers']} layers, hidden {text_config['hidden_size']}," in table
    # base: 9 of 10 wrong answer "x"; SFT: 6 of 10; GRPO answers "a" to all; references: "a" 3 of 10.
    assert "| grounding | 0.30 | 0.90 'x' | 0.60 'x' | 1.00 'a' |" in table
    report = json.loads((layout.report / "learning_table.json").read_text())
    assert report["sft_steps"] == 170 and report["grpo_steps"] == 5 and report["answer_spread"]["grpo"]["chart"]["distinct"] == 1
    assert report["targets"]["no task down by more than 0.02"] and report["wall_time_target_met"] is True
    assert (layout.report / "sft_vs_grpo" / "compare.md").exists()
    assert Image.open(layout.plot).size[0] >= 1600  # accuracy and top answer share side by side


def end_grpo(layout, saved_step, planned_last_step=None):
    """GRPO's checkpoint tracker at `saved_step` and, if given, mixed_r1.stop_by's record of the planned step."""
    layout.grpo_checkpoints.mkdir(parents=True, exist_ok=True)
    (layout.grpo_checkpoints / "latest_checkpointed_iteration.txt").write_text(str(saved_step))
    if planned_last_step is not None:
        write_early_end(layout.grpo_checkpoints, saved_step, planned_last_step, stop_by=0.0)


def test_continue_grpo_trains_on_a_grpo_the_budget_ended_early_and_evaluates_it_again(tmp_path, tiny_model_dir):
    layout = Layout(tmp_path)
    trained = tiny_model_dir

    def steps(**settings):
        return {step.name: step for step in plan(LearnConfig(work_dir=str(tmp_path), **settings))}

    grpo, keep = "GRPO with Mixed-Reward from the SFT model", "keep the evaluation of GRPO step 12"
    evaluate(layout, "grpo", save_checkpoint(layout, "grpo", 12, trained))
    end_grpo(layout, 12, planned_last_step=40)
    assert steps()[grpo].done_earlier() and steps()["evaluate grpo"].done_earlier() and keep not in steps()
    continued = steps(continue_grpo=True)
    assert "after step 12 of 40; it goes on from that checkpoint" in continued[grpo].again
    assert not continued[grpo].done_earlier() and not continued["evaluate grpo"].done_earlier()
    names = list(continued)
    assert names.index("publish the GRPO model") < names.index(keep) == names.index("evaluate grpo") - 1
    # The earlier steps are not there, so the dry run marks the plan and then refuses to reuse GRPO.
    dry_run = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.learn", f"work_dir={tmp_path}", "dry_run=true", "continue_grpo=true"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "[8/12] GRPO with Mixed-Reward from the SFT model (again: the time budget ended it after step 12" in (
        dry_run
    )
    assert "[11/12] evaluate grpo (again: its model trained on from step 12 (continue_grpo=true))" in dry_run

    continued[keep].run()
    assert (layout.eval_dir("grpo_step_12") / "summary.json").exists() and not layout.eval_dir("grpo").exists()
    continued[keep].run()  # nothing left to keep
    layout.eval_dir("grpo").mkdir()
    with pytest.raises(FileExistsError, match="grpo_step_12 exists"):
        continued[keep].run()

    shutil.rmtree(layout.eval_dir("grpo"))
    evaluate(layout, "grpo", save_checkpoint(layout, "grpo", 40, trained))
    end_grpo(layout, 40, planned_last_step=40)  # the budget's estimate moved the end back to where it was planned
    assert steps(continue_grpo=True)[grpo].done_earlier() and steps(continue_grpo=True)["evaluate grpo"].done_earlier()
    assert not any(name.startswith("keep") for name in steps(continue_grpo=True))


def test_an_evaluation_of_another_checkpoint_than_the_latest_is_kept_and_done_again(tmp_path, tiny_model_dir):
    layout = Layout(tmp_path)
    trained = tiny_model_dir

    def steps(**settings):
        return {step.name: step for step in plan(LearnConfig(work_dir=str(tmp_path), **settings))}

    # The budget ended GRPO at step 12 of 40, which was evaluated; continue_grpo then saved step 40 but
    # failed before publishing it, so the published GRPO model is still step 12's.
    evaluate(layout, "grpo", save_checkpoint(layout, "grpo", 12, trained))
    end_grpo(layout, 12, planned_last_step=40)
    publish_checkpoint(layout.grpo_checkpoints, CHECKPOINT_MODEL["grpo"], layout.grpo_model, tiny_model_dir)
    save_checkpoint(layout, "grpo", 40, trained)
    for settings in ({}, {"continue_grpo": True}):
        planned = steps(**settings)
        assert planned["GRPO with Mixed-Reward from the SFT model"].done_earlier()
        assert not planned["evaluate grpo"].done_earlier()
        assert planned["evaluate grpo"].again == "it scored step 12; the latest checkpoint is step 40"
    names = list(planned)
    assert names.index("publish the GRPO model") + 1 == names.index("keep the evaluation of GRPO step 12")
    for name in ("publish the GRPO model", "keep the evaluation of GRPO step 12"):
        planned[name].run()
    assert evaluated_accuracy(layout.eval_dir("grpo_step_12")) == 0.5 and not layout.eval_dir("grpo").exists()
    evaluate(layout, "grpo", layout.grpo_model, fabricated_summary({task: 0.7 for task in TASKS}))
    assert steps()["evaluate grpo"].done_earlier() and not any(name.startswith("keep") for name in steps())

    # GRPO trained on from step 40 to 45 and ended early there without being evaluated; the same command
    # later trains on from 45: the evaluation kept is named by the step it scored, 40.
    save_checkpoint(layout, "grpo", 45, trained)
    end_grpo(layout, 45, planned_last_step=60)
    continued = steps(continue_grpo=True)
    assert "keep the evaluation of GRPO step 40" in continued
    assert continued["evaluate grpo"].again == "its model trained on from step 45 (continue_grpo=true)"

    # An SFT checkpoint saved again at the same step (other trained) is another model too.
    sft_model = save_checkpoint(layout, "sft", 500, trained)
    evaluate(layout, "sft", sft_model)
    assert steps()["evaluate sft"].done_earlier()
    time.sleep(0.01)
    save_checkpoint(layout, "sft", 500, trained)
    assert steps()["evaluate sft"].again == "it scored step 500 before that checkpoint was written again"
    assert "keep the evaluation of SFT step 500" in steps()


def evaluated_accuracy(eval_dir: Path) -> float:
    return json.loads((eval_dir / "summary.json").read_text())["tasks"]["all"]["accuracy"]


def test_a_step_run_again_adds_its_time_to_the_earlier_time(tmp_path):
    times_log = tmp_path / "logs" / "step_times.json"
    done = tmp_path / "done"
    code = "import pathlib, sys, time; time.sleep(0.2); pathlib.Path(sys.argv[1]).write_text('')"
    first = Step("train", [sys.executable, "-c", code, str(done)], skip_if_exists=done)
    execute([first], env=dict(os.environ), times_log=times_log, work_dir=tmp_path)
    earlier = json.loads(times_log.read_text())["train"]
    again = dataclasses.replace(first, again="the budget ended it early")
    execute([again], env=dict(os.environ), times_log=times_log, work_dir=tmp_path)
    entry = json.loads(times_log.read_text())["train"]
    assert entry["seconds"] >= earlier["seconds"] + 0.2 and entry["earlier_executions"] == [earlier["execution"]]
    table, _ = wall_time([again], {"train": {**entry, "seconds": 50.0, "execution": "second"}})
    assert "| train | 50.0 (2 runs) |" in table and "summed over 2 executions" in table


def test_the_report_says_when_the_budget_ended_grpo_before_its_planned_step(tmp_path, tiny_model_dir):
    layout = Layout(tmp_path)
    shutil.copytree(tiny_model_dir, layout.base_model)
    evaluate(layout, "base", layout.base_model)
    evaluate(layout, "sft", save_checkpoint(layout, "sft", 500, tiny_model_dir))
    evaluate(layout, "grpo", save_checkpoint(layout, "grpo", 12, tiny_model_dir))
    write_metrics_log(layout.grpo_log, steps=12)
    end_grpo(layout, 12, planned_last_step=40)
    write_report(layout, plan(LearnConfig(work_dir=str(tmp_path))))
    table = layout.table.read_text()
    assert "GRPO steps trained: 12 of 40 (the time budget ended it; continue_grpo=true trains on" in table
    report = json.loads((layout.report / "learning_table.json").read_text())
    assert (report["grpo_steps"], report["grpo_planned_steps"]) == (12, 40)


def test_curves_come_from_the_file_logger_per_task(tmp_path):
    log = tmp_path / "grpo.jsonl"
    write_metrics_log(log, steps=3)
    curves = task_curves(read_metrics_log(log), "accuracy/mean")
    assert sorted(curves) == sorted(TASKS)
    assert curves["matching"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2)), (3, pytest.approx(0.3))]
    assert task_curves(read_metrics_log(log), "top_answer_share") == {}
    log.write_text('{"step": 1, "data": {}}\nnot json\n')
    with pytest.raises(ValueError, match="grpo.jsonl:2"):
        read_metrics_log(log)


def test_each_command_records_its_wall_time_and_a_skipped_one_keeps_the_earlier_time(tmp_path):
    times_log, done = tmp_path / "logs" / "step_times.json", tmp_path / "done"
    steps = [
        Step("wait", [sys.executable, "-c", "import time; time.sleep(0.5)"]),
        Step("done before", [sys.executable, "-c", "raise SystemExit(1)"], skip_if_exists=done),
        Step("in process", ["nothing"], run=lambda: None),
    ]
    times_log.parent.mkdir()
    times_log.write_text(json.dumps({"done before": {"seconds": 41.0, "execution": "earlier"}}))
    done.write_text("")
    execute(steps, env=dict(os.environ), times_log=times_log)
    times = json.loads(times_log.read_text())
    assert sorted(times) == ["done before", "wait"]
    assert times["wait"]["seconds"] >= 0.5 and times["done before"] == {"seconds": 41.0, "execution": "earlier"}
    table, met = wall_time(steps, times)
    assert met is True and "| done before | 41.0 |" in table and "; summed over 2 executions)" in table


def test_the_wall_time_target_is_checked_on_the_sum_once_every_command_has_its_time():
    steps = [Step("first", ["a"]), Step("second", ["b"]), Step("report", ["r"], run=lambda: None)]
    one = {"seconds": 500.0, "execution": "x"}
    assert wall_time(steps, {"first": one, "second": one})[1] is True
    assert wall_time(steps, {"first": one, "second": {**one, "seconds": 701.0}})[1] is False
    table, met = wall_time(steps, {"first": one})
    assert met is None and "| total | 500.0 (8.3 min; 1 of 2 commands untimed) |" in table
    table, met = wall_time(steps, {"first": one, "second": {**one, "seconds": 701.0, "execution": "y"}})
    assert met is False and "| total | 1201.0 (20.0 min; summed over 2 executions) |" in table


def test_training_steps_are_skipped_once_their_checkpoint_exists_from_a_run_that_ended_well(
    tmp_path, tiny_model_dir, capsys
):
    layout = Layout(tmp_path)
    steps = {step.name: step for step in plan(LearnConfig(work_dir=str(tmp_path)))}
    sft, grpo = steps[TRAINING_STEPS["sft"]], steps[TRAINING_STEPS["grpo"]]
    assert sft.skip_if_exists == tmp_path / "sft" / "latest_checkpointed_iteration.txt"
    assert grpo.skip_if_exists == tmp_path / "grpo" / "latest_checkpointed_iteration.txt"
    save_checkpoint(layout, "sft", 100, tiny_model_dir)
    execute([sft], env=dict(os.environ), times_log=layout.step_times, work_dir=tmp_path)
    assert "done earlier" in capsys.readouterr().out

    # A GRPO that saved step 40 of 80 and then failed recorded no success: it runs again (verl resumes).
    save_checkpoint(layout, "grpo", 40, tiny_model_dir, run_ended=False)
    assert not grpo.done_earlier()
    dry_run = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.learn", f"work_dir={tmp_path}", "dry_run=true"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert f"] {TRAINING_STEPS['sft']} (done earlier: skipped)" in dry_run
    assert f"] {TRAINING_STEPS['grpo']}\n" in dry_run
    save_checkpoint(layout, "grpo", 80, tiny_model_dir)
    assert grpo.done_earlier()


def test_a_training_run_that_failed_after_saving_its_last_step_is_done_when_run_again(tmp_path, capsys):
    """The entry of a run whose checkpoints hold its last step says so with exit code 3: its step is done."""
    times_log, tracker = tmp_path / "logs" / "step_times.json", tmp_path / "grpo" / "latest_checkpointed_iteration.txt"
    tracker.parent.mkdir()
    tracker.write_text("40")
    grpo = Step(TRAINING_STEPS["grpo"], [sys.executable, "-c", "raise SystemExit(3)"], skip_if_exists=tracker,
                recorded_in=times_log)  # fmt: skip
    assert not grpo.done_earlier()
    execute([grpo], env=dict(os.environ), times_log=times_log, work_dir=tmp_path)
    assert f"{TRAINING_STEPS['grpo']}: its checkpoints hold its last step: done" in capsys.readouterr().out
    assert grpo.done_earlier()
    failing = dataclasses.replace(grpo, name="other", argv=[sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(StepFailed, match="failed with exit code 1"):
        execute([failing], env=dict(os.environ), times_log=times_log, work_dir=tmp_path)


def writing_step(name, work_dir, *settings, feeds_later_steps=True):
    """A step whose command writes its settings to `<work_dir>/<name>/done`, its mark of being done."""
    done = work_dir / name / "done"
    code = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]); p.parent.mkdir(parents=True); "
        "p.write_text(' '.join(sys.argv[2:]))"
    )
    argv = [sys.executable, "-c", code, str(done), *settings]
    return Step(name, argv, skip_if_exists=done, feeds_later_steps=feeds_later_steps)


def test_a_step_done_with_other_settings_or_from_results_made_again_stops_the_proof_first(tmp_path, capsys):
    def run(work_dir, model_settings, train_settings):
        steps = [writing_step("model", work_dir, *model_settings), writing_step("train", work_dir, *train_settings)]
        execute(steps, env=dict(os.environ), times_log=work_dir / "logs" / "step_times.json", work_dir=work_dir)

    first, moved = tmp_path / "first", tmp_path / "moved"
    run(first, ["size=small"], ["lr=1", "steps=5"])
    assert (first / "train" / "done").read_text() == "lr=1 steps=5"
    first.rename(moved)
    capsys.readouterr()
    run(moved, ["size=small"], ["lr=1", "steps=5"])  # the same commands in a moved work dir
    assert capsys.readouterr().out.count("done earlier") == 2

    with pytest.raises(DoneStepsDiffer) as other_settings:
        run(moved, ["size=small"], ["lr=2", "steps=5"])
    assert "  - train: done with lr=1; this command asks for lr=2\n" in str(other_settings.value)
    assert f"delete {moved / 'train'} to do them again" in str(other_settings.value)

    shutil.rmtree(moved / "model")
    with pytest.raises(DoneStepsDiffer) as made_again:
        run(moved, ["size=small"], ["lr=1", "steps=5"])
    assert "  - train: made from the results of 'model', which this command makes again\n" in str(made_again.value)
    assert not (moved / "model").exists()  # nothing ran
    assert (moved / "train" / "done").read_text() == "lr=1 steps=5"


def test_settings_in_another_order_are_the_same_command_unless_a_key_is_given_twice(tmp_path, capsys):
    times_log = tmp_path / "logs" / "step_times.json"

    def run(work_dir, *settings):
        execute([writing_step("train", work_dir, *settings)], env=dict(os.environ), times_log=times_log,
                work_dir=work_dir)  # fmt: skip

    run(tmp_path, "lr=1", "steps=5")
    capsys.readouterr()
    run(tmp_path, "steps=5", "lr=1")
    assert "train: done earlier" in capsys.readouterr().out
    with pytest.raises(DoneStepsDiffer, match="train: done with steps=5; this command asks for steps=6\n"):
        run(tmp_path, "steps=6", "lr=1")

    shutil.rmtree(tmp_path / "train")
    run(tmp_path, "lr=1", "steps=5", "lr=2")
    with pytest.raises(DoneStepsDiffer) as reordered:
        run(tmp_path, "lr=2", "steps=5", "lr=1")
    assert "  - train: done with lr=1 lr=2; this command asks for lr=2 lr=1 (the same in another order" in str(
        reordered.value
    )


def test_overrides_in_another_order_reuse_the_steps_done_with_them(tmp_path):
    def evaluate_base(*eval_overrides):
        return plan(LearnConfig(work_dir=str(tmp_path), eval_overrides=list(eval_overrides)))[3]

    done = evaluate_base("limit=8", "format_weight=0.5")
    done.skip_if_exists.parent.mkdir(parents=True)
    done.skip_if_exists.write_text("{}")
    times = {done.name: {"seconds": 1.0, "execution": "earlier", "command": recorded_command(done, tmp_path)}}
    check_done_steps([evaluate_base("format_weight=0.5", "limit=8")], times, tmp_path)
    with pytest.raises(DoneStepsDiffer, match="evaluate base: done with limit=8; this command asks for limit=16"):
        check_done_steps([evaluate_base("format_weight=0.5", "limit=16")], times, tmp_path)


def test_training_done_with_its_hydra_directory_elsewhere_is_reused(tmp_path):
    """Hydra's settings say where a run's config and log go, not what it trains: a training step done with
    another `hydra.run.dir` (or none, as a proof started before the proof set one) is done."""
    training = [step for step in plan(LearnConfig(work_dir=str(tmp_path))) if step.name.startswith(("SFT", "GRPO"))]
    times = {}
    for step in training:
        assert any(argument.startswith("hydra.run.dir=") for argument in step.argv)
        step.skip_if_exists.parent.mkdir(parents=True)
        step.skip_if_exists.write_text("2")
        elsewhere = [argument for argument in step.argv[1:] if not argument.startswith("hydra.")]
        times[step.name] = {"seconds": 1.0, "execution": "earlier", "command": elsewhere}
    Layout(tmp_path).logs.mkdir()
    Layout(tmp_path).step_times.write_text(json.dumps(times))
    check_done_steps(training, times, None)
    sft_elsewhere = times[training[0].name]["command"] + ["trainer.seed=7"]
    times[training[0].name]["command"] = sft_elsewhere
    with pytest.raises(DoneStepsDiffer, match="SFT .*: done with trainer.seed=7"):
        check_done_steps(training, times, None)


def test_a_step_done_after_an_evaluation_made_again_is_reused(tmp_path, capsys):
    steps = [
        writing_step("model", tmp_path), writing_step("evaluate", tmp_path, feeds_later_steps=False),
        writing_step("train", tmp_path),
    ]  # fmt: skip
    times_log = tmp_path / "logs" / "step_times.json"
    execute(steps, env=dict(os.environ), times_log=times_log, work_dir=tmp_path)
    shutil.rmtree(tmp_path / "evaluate")
    capsys.readouterr()
    execute(steps, env=dict(os.environ), times_log=times_log, work_dir=tmp_path)
    assert (tmp_path / "evaluate" / "done").exists() and capsys.readouterr().out.count("done earlier") == 2


def test_without_a_gpu_the_proof_stops_before_building_anything(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.learn", f"work_dir={tmp_path / 'learn'}"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr and "dry_run=true" in result.stderr
    assert not (tmp_path / "learn").exists()


def test_a_grpo_that_its_ray_would_lack_the_cpus_for_is_named_before_any_step_runs(tmp_path):
    """The GRPO entry refuses such a Ray at its start, after the model, SFT and two evaluations have run."""
    cpus = "ray_kwargs.ray_init.num_cpus"
    steps = plan(LearnConfig(work_dir=str(tmp_path), grpo_overrides=[f"{cpus}=5"]))
    assert grpo_ray_cpu_shortfall(steps, {}) == (
        f"GRPO with Mixed-Reward from the SFT model would stop at its start, once the steps before it had run: "
        f"{cpus}=5, but verl reserves 3 CPUs beside each GPU and TransferQueue's controller and its 2 storage units "
        "(transfer_queue.backend.SimpleStorage.num_data_storage_units) hold 1 each: trainer.n_gpus_per_node=1 needs "
        f"6, and Ray would wait for them forever. Run with more CPUs (Slurm: --cpus-per-task) or set {cpus}=6 (Ray's "
        f"CPUs are slots, not cores). For the proof, give it as grpo_overrides=[{cpus}=<CPUs>].\n"
    )
    for enough in ([f"{cpus}=6"], [f"{cpus}=8"]):
        assert grpo_ray_cpu_shortfall(plan(LearnConfig(work_dir=str(tmp_path), grpo_overrides=enough)), {}) is None
    assert grpo_ray_cpu_shortfall(plan(LearnConfig(work_dir=str(tmp_path))), {"RAY_ADDRESS": "auto"}) is None
    no_grpo = plan(LearnConfig(work_dir=str(tmp_path), stop_after="sft", grpo_overrides=[f"{cpus}=5"]))
    assert grpo_ray_cpu_shortfall(no_grpo, {}) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="without a GPU the proof stops at the GPU check first")
def test_a_grpo_its_ray_would_lack_the_cpus_for_stops_the_proof_before_building_anything(tmp_path):
    work, too_few = tmp_path / "learn", "grpo_overrides=[ray_kwargs.ray_init.num_cpus=5]"
    result = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.learn", f"work_dir={work}", too_few],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "would stop at its start, once the steps before it had run" in result.stderr
    assert not work.exists()


def test_a_step_still_running_when_the_budget_is_spent_is_stopped_with_its_stacks(tmp_path):
    waiting = "import time\ndef waiting_for_vllm():\n    time.sleep(60)\nwaiting_for_vllm()"
    steps = [Step("quick", [sys.executable, "-c", "pass"]), Step("GRPO, slow", [sys.executable, "-c", waiting])]
    with pytest.raises(StepFailed, match=r"step 2 \(GRPO, slow\) was stopped at the end of the time budget") as failure:
        execute(steps, env=dict(os.environ), deadline=time.time() + 4, watch_dir=tmp_path)
    stacks = tmp_path / f"{step_file_prefix(2, steps[1])}.stacks.txt"
    assert stacks.name == "02_grpo_slow.stacks.txt" and str(stacks) in str(failure.value)
    assert "line 3 in waiting_for_vllm" in stacks.read_text()
    assert not (tmp_path / "01_quick.stacks.txt").exists()
    with pytest.raises(StepFailed, match="was not started: the time budget is spent"):
        execute(steps, env=dict(os.environ), deadline=time.time() - 1)


def test_a_failing_step_is_named_with_its_exit_code(tmp_path):
    failing = Step("convert it", [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(StepFailed, match=r"step 1 \(convert it\) failed with exit code 3") as failure:
        execute([failing], env=dict(os.environ))
    assert failure.value.returncode == 3

"""Reading verl's file-logger metrics (written here by verl's own FileLogger) and running logged
commands, as the GPU acceptance tests and the benchmarks do."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from concurrency_helpers import handshake_code
from verl.utils.tracking import FileLogger

from mixed_r1_verl import run_logs
from mixed_r1_verl.process_watch import is_running
from mixed_r1_verl.run_logs import (
    DEADLINE_ENV,
    SMOKE_RUN,
    MetricsLogError,
    can_resume,
    median_step_time,
    metric_series,
    non_finite,
    project_command,
    read_metrics_log,
    read_resumed_metrics_log,
    resumed_run_starts,
    run_logged,
    run_succeeded,
    runs_beside,
    smoke_checkpoint_dir,
    smoke_training,
    source_root,
    task_metrics,
)


@pytest.fixture
def verl_log(tmp_path, monkeypatch):
    """Three steps as verl's trainer logs them: training metrics, then validation metrics for step 2."""
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger(project_name="mixed_r1", experiment_name="smoke")
    for step, seconds in ((1, 30.0), (2, 4.0), (3, 6.0)):
        logger.log(
            {
                "timing_s/step": np.float64(seconds),
                "critic/score/mean": np.float32(0.25),
                "mixed_r1/grounding/count": 8.0,
                "mixed_r1/grounding/score/mean": 0.5,
                "mixed_r1/open_ended/error/mean": 0.0,
                "filtering/grounding/kept": np.int64(2),
            },
            step=step,
        )
    logger.log({"val-core/chart/acc/mean": 0.1, "bad": float("nan")}, step=2)
    logger.finish()
    return path


def test_steps_are_read_and_lines_of_one_step_merged(verl_log):
    steps = read_metrics_log(verl_log)
    assert sorted(steps) == [1, 2, 3]
    assert steps[2]["val-core/chart/acc/mean"] == 0.1 and steps[2]["timing_s/step"] == 4.0
    assert steps[3]["filtering/grounding/kept"] == 2
    assert non_finite(steps[2]) == ["bad"] and non_finite(steps[1]) == []


def test_a_resumed_runs_metrics_come_with_those_of_the_runs_it_resumed_from(tmp_path, monkeypatch):
    """Four runs logging to one path, each keeping the one before as the training entry does: a run
    started afresh and discarded, a new run from step 1, then two resumed from its checkpoints."""
    from mixed_r1_verl.main import prepare_metrics_log

    path = tmp_path / "grpo.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))

    def run(name, steps, validated_first=None):
        prepare_metrics_log(path)
        logger = FileLogger(project_name="mixed_r1", experiment_name="learn")
        if validated_first is not None:  # trainer.val_before_train on a resumed run logs the resumed step
            logger.log({"val-core/chart/acc/mean": 0.5}, step=validated_first)
        only_here = {"stale": 1.0} if name == "discarded" else {}
        for step in steps:
            logger.log({"timing_s/step": 1.0, "run": name, **only_here}, step=step)
        logger.finish()

    run("discarded", range(1, 5))
    run("fresh", range(1, 3))
    run("resumed", [3], validated_first=2)
    run("resumed again", range(4, 6))
    steps = read_resumed_metrics_log(path)
    assert {step: metrics["run"] for step, metrics in steps.items()} == {
        1: "fresh", 2: "fresh", 3: "resumed", 4: "resumed again", 5: "resumed again"
    }
    assert steps[2]["val-core/chart/acc/mean"] == 0.5
    assert not any("stale" in metrics for metrics in steps.values())
    assert resumed_run_starts(path) == [1, 3, 4]


def test_step_time_median_skips_warmup(verl_log):
    steps = read_metrics_log(verl_log)
    assert metric_series(steps, "timing_s/step") == [30.0, 4.0, 6.0]
    assert median_step_time(steps, warmup_steps=1) == 5.0
    with pytest.raises(MetricsLogError, match="past the 3 warm-up steps from step"):
        median_step_time(steps, warmup_steps=3)


def test_step_time_median_skips_the_warm_up_of_each_start():
    """A run resumed at step 4 starts cold there again."""
    times = {1: 30.0, 2: 9.0, 3: 5.0, 4: 30.0, 5: 9.0, 6: 7.0}
    steps = {step: {"timing_s/step": seconds} for step, seconds in times.items()}
    assert median_step_time(steps, warmup_steps=2, starts=[1, 4]) == 6.0
    assert median_step_time(steps, warmup_steps=1, starts=[1, 4]) == 8.0


def load_script(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_suite_and_the_step_time_figure_read_a_training_run_resumed_at_the_deadline_whole(
    tmp_path, monkeypatch, capsys
):
    """The smoke run cut at the deadline after its step-3 checkpoint, then resumed for steps 4-6."""
    from mixed_r1_verl.main import prepare_metrics_log

    path = run_logs.metrics_log_path(tmp_path, run_logs.SMOKE_RUN)
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    for times in ({1: 30.0, 2: 9.0, 3: 5.0}, {4: 30.0, 5: 9.0, 6: 7.0}):
        prepare_metrics_log(path)
        logger = FileLogger(project_name="mixed_r1", experiment_name="smoke")
        for step, seconds in times.items():
            logger.log({"timing_s/step": seconds}, step=step)
        logger.finish()
    gpu_tests = source_root() / "tests" / "gpu"
    monkeypatch.syspath_prepend(str(gpu_tests))
    run = run_logs.LoggedRun(run_logs.SMOKE_RUN, 0, tmp_path / "logs" / "smoke_mixed.log", 1.0, None)
    training_checks = load_script(gpu_tests / "test_gpu_training.py")
    assert sorted(training_checks.steps_of(run, tmp_path)) == [1, 2, 3, 4, 5, 6]
    figures = load_script(source_root() / "benchmarks" / "gpu_figures.py")
    assert figures.print_run("Mixed-Reward", run, tmp_path) == 6.0  # steps 3 and 6
    assert "after 2 warm-up steps of each start (a resumed run: started at steps 1, 4)" in capsys.readouterr().out


def test_task_metrics_group_by_task(verl_log):
    grouped = task_metrics(read_metrics_log(verl_log)[1], "mixed_r1")
    assert grouped == {"grounding": {"count": 8.0, "score/mean": 0.5}, "open_ended": {"error/mean": 0.0}}
    assert task_metrics(read_metrics_log(verl_log)[1], "filtering") == {"grounding": {"kept": 2.0}}
    assert np.isnan(task_metrics({"mixed_r1/chart/score/mean": None}, "mixed_r1")["chart"]["score/mean"])


def test_a_line_that_is_not_file_logger_format_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "data": {}}) + "\n" + json.dumps({"data": {"a": 1}}) + "\n")
    with pytest.raises(MetricsLogError, match=r"metrics.jsonl:2"):
        read_metrics_log(path)


def test_a_run_is_logged_and_a_successful_one_is_not_repeated(tmp_path):
    marker = tmp_path / "runs"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x'); print('hello')"]
    first = run_logged("job", command, tmp_path / "logs")
    again = run_logged("job", command, tmp_path / "logs")
    assert first.returncode == again.returncode == 0
    assert "hello" in first.log_text() and marker.read_text() == "x"
    assert json.loads((tmp_path / "logs" / "job.json").read_text())["returncode"] == 0


def test_runs_that_ran_at_the_same_time_name_each_other(tmp_path):
    logs, a, b = tmp_path / "logs", tmp_path / "a", tmp_path / "b"
    with ThreadPoolExecutor() as pool:
        first = pool.submit(run_logged, "first", [sys.executable, "-c", handshake_code(a, b)], logs)
        second = run_logged("second", [sys.executable, "-c", handshake_code(b, a)], logs)
        assert first.result().returncode == second.returncode == 0
    run_logged("after", [sys.executable, "-c", "pass"], logs)
    run_logged("first", [sys.executable, "-c", "raise SystemExit(3)"], logs, reuse=False)  # keeps first.previous
    assert runs_beside("second", logs) == ["first.previous"]
    assert runs_beside("first.previous", logs) == ["second"]
    assert runs_beside("after", logs) == runs_beside("first", logs) == runs_beside("unknown", logs) == []


def test_a_failed_run_is_recorded_and_run_again(tmp_path):
    marker = tmp_path / "runs"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x'); raise SystemExit(3)"]
    assert run_logged("job", command, tmp_path / "logs").returncode == 3
    assert run_logged("job", command, tmp_path / "logs").returncode == 3
    assert marker.read_text() == "xx"


def test_a_rerun_keeps_the_earlier_attempts_log_and_record(tmp_path):
    logs = tmp_path / "logs"
    run_logged("job", [sys.executable, "-c", "print('first attempt'); raise SystemExit(3)"], logs)
    second = run_logged("job", [sys.executable, "-c", "print('second attempt')"], logs)
    assert "second attempt" in second.log_text() and "first attempt" not in second.log_text()
    assert "first attempt" in (logs / "job.previous.log").read_text()
    assert json.loads((logs / "job.previous.json").read_text())["returncode"] == 3
    assert json.loads((logs / "job.json").read_text())["returncode"] == 0


def test_a_run_cut_at_the_deadline_is_not_retried_with_less_time(tmp_path, monkeypatch):
    logs, marker = tmp_path / "logs", tmp_path / "retried"
    monkeypatch.setattr(run_logs, "MIN_START_S", 0.2)
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 2))
    slow = "print('step:1 - a:1', flush=True); import time; time.sleep(60)"
    first = run_logged("job", [sys.executable, "-c", slow], logs)
    assert first.out_of_time and first.seconds >= 1.5
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 1))
    skipped = run_logged("job", command, logs)
    assert skipped.out_of_time and skipped.returncode == 124 and not marker.exists()
    assert skipped.last_step() == 1 and not (logs / "job.previous.log").exists()
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 3600))
    assert run_logged("job", command, logs).returncode == 0 and marker.exists()
    assert json.loads((logs / "job.previous.json").read_text())["out_of_time"] is True


def test_a_run_that_resumes_is_retried_after_a_deadline_with_whatever_time_is_left(tmp_path, monkeypatch):
    """A training run goes on from its last checkpoint: the same budget again lets it finish."""
    logs, marker = tmp_path / "logs", tmp_path / "retried"
    monkeypatch.setattr(run_logs, "MIN_START_S", 0.2)
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 2))
    first = run_logged("train", [sys.executable, "-c", "import time; time.sleep(60)"], logs, resumes=True)
    assert first.out_of_time and first.seconds >= 1.5
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 1))
    again = run_logged("train", [sys.executable, "-c", f"open({str(marker)!r}, 'w')"], logs, resumes=True)
    assert again.returncode == 0 and marker.exists()


def test_a_training_run_that_saves_no_checkpoint_to_resume_from_is_not_retried_with_less_time(tmp_path, monkeypatch):
    """recipe=smoke_internvl with trainer.save_freq=-1, cut at the deadline: run again, it would start
    from step 0 with less time than it had."""
    logs, overrides = tmp_path / "logs", ("trainer.total_training_steps=2", "trainer.save_freq=-1")
    monkeypatch.setattr(run_logs, "MIN_START_S", 0.2)
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 2))
    trained = "print('(TaskRunnerV1 pid=7) step:1 - actor/loss:0.1', flush=True); import time; time.sleep(60)"
    assert run_logged("smoke_internvl", [sys.executable, "-c", trained], logs).out_of_time
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 1))
    again = smoke_training("smoke_internvl", tmp_path, *overrides, recipe="smoke_internvl")
    assert again.out_of_time and again.last_step() == 1 and not (logs / "smoke_internvl.previous.log").exists()


def test_a_smoke_run_can_resume_where_it_saves_a_checkpoint_before_its_last_step_or_has_one(tmp_path):
    checkpoints = tmp_path / "ckpt"
    assert can_resume(checkpoints, "smoke", ())  # recipes/smoke.yaml: a checkpoint after step 3 of 6
    assert can_resume(checkpoints, "smoke_qwen3vl", ("++trainer.save_freq=1", "trainer.total_training_steps=2"))
    for recipe, overrides in (
        ("smoke_internvl", ("trainer.total_training_steps=2", "trainer.save_freq=-1")),
        ("smoke", ("lora=on", "trainer.total_training_steps=2", "trainer.save_freq=2")),  # only at its last step
    ):
        assert not can_resume(checkpoints, recipe, overrides)
    checkpoints.mkdir()
    (checkpoints / "latest_checkpointed_iteration.txt").write_text("2")
    assert can_resume(checkpoints, "smoke", ("lora=on", "trainer.total_training_steps=2", "trainer.save_freq=2"))


def test_a_training_run_stopped_after_saving_its_last_step_is_done_when_run_again(tmp_path, monkeypatch):
    """The smoke run cut at the deadline in its shutdown, after its step-6 checkpoint: run again, the
    training entry finds nothing to train (exit 3); the run is done and its output is the first try's."""
    logs = tmp_path / "logs"
    monkeypatch.setattr(run_logs, "MIN_START_S", 0.2)
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 2))
    trained = "print('(TaskRunnerV1 pid=7) step:6 - actor/loss:0.1', flush=True); import time; time.sleep(60)"
    cut = run_logged(SMOKE_RUN, [sys.executable, "-c", trained], logs, resumes=True)
    assert cut.out_of_time
    checkpoints = smoke_checkpoint_dir(tmp_path, SMOKE_RUN)
    (checkpoints / "global_step_6" / "actor").mkdir(parents=True)
    (checkpoints / "latest_checkpointed_iteration.txt").write_text("6")
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 600))
    monkeypatch.chdir(tmp_path)  # where Hydra writes the entry's outputs/
    run = smoke_training(SMOKE_RUN, tmp_path)
    assert run.returncode == 0 and not run.out_of_time and run_succeeded(SMOKE_RUN, logs), run.log_tail()
    assert "nothing to train" in run.log_text() and run.last_step() == 6
    done = f"[done: its checkpoints hold its last step, trained by the try in {SMOKE_RUN}.previous.log]"
    assert run.log_tail(1) == done
    assert run.seconds >= cut.seconds  # the time of the try that trained, added
    reused = smoke_training(SMOKE_RUN, tmp_path)
    assert reused.log_text() == run.log_text()
    failed = run_logged("other", [sys.executable, "-c", "raise SystemExit(3)"], logs)  # not a run that resumes
    assert failed.returncode == 3 and not run_succeeded("other", logs)
    # A run that resumes finds its training done after a try that failed, not one cut at the deadline: its
    # exit 3 stays a failure (that try's failure, in its shutdown say, is not passed over).
    crashed = run_logged("crashed", [sys.executable, "-c", "raise SystemExit(1)"], logs, resumes=True)
    assert crashed.returncode == 1
    again = run_logged("crashed", [sys.executable, "-c", "raise SystemExit(3)"], logs, resumes=True)
    assert again.returncode == 3 and not run_succeeded("crashed", logs)


def test_the_last_step_is_read_from_verls_console_lines(tmp_path):
    lines = "(TaskRunnerV1 pid=7) step:1 - actor/loss:0.1\\n(TaskRunnerV1 pid=7) step:2 - actor/loss:0.2"
    logged = run_logged("job", [sys.executable, "-c", f"print('{lines}')"], tmp_path / "logs")
    assert logged.last_step() == 2
    assert run_logged("none", [sys.executable, "-c", "print('timing_s/step:3')"], tmp_path / "logs").last_step() is None


def test_a_run_past_its_limit_is_killed_with_status_124(tmp_path):
    run = run_logged("job", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "logs", timeout_s=1)
    assert run.returncode == 124 and "[killed after 1 s]" in run.log_text()


# A test of the GPU suite's kind timed out by pytest-timeout while its run goes on; the run's command
# writes its own pid and its child's to the file given it.
TIMED_OUT_TEST = """
import sys

import pytest

from mixed_r1_verl.run_logs import run_logged

COMMAND = (
    "import os, pathlib, subprocess, sys, time\\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\\n"
    "pathlib.Path(sys.argv[1]).write_text(f'{{os.getpid()}} {{child.pid}}')\\n"
    "time.sleep(60)\\n"
)


@pytest.mark.timeout(3)
def test_a_run_outlasting_the_test(tmp_path):
    run_logged("long", [sys.executable, "-c", COMMAND, {pids!r}], tmp_path / "logs", timeout_s=60)
"""


def test_a_test_timed_out_by_pytest_timeout_leaves_nothing_of_its_run_running(tmp_path):
    pids = tmp_path / "pids"
    (tmp_path / "test_timed_out.py").write_text(TIMED_OUT_TEST.format(pids=str(pids)))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_timed_out.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(source_root())},
    )  # fmt: skip
    assert result.returncode == 1 and "Timeout (>3.0s) from pytest-timeout" in result.stdout, result.stdout[-3000:]
    assert not any(is_running(int(pid)) for pid in pids.read_text().split())


def test_a_run_is_ended_at_the_deadline_and_marked_out_of_time(tmp_path, monkeypatch):
    monkeypatch.setattr(run_logs, "MIN_START_S", 0.5)
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 2))
    run = run_logged("job", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "logs")
    assert run.returncode == 124 and run.out_of_time
    assert f"at ${DEADLINE_ENV}]" in run.log_text()
    assert json.loads((tmp_path / "logs" / "job.json").read_text())["out_of_time"] is True


def test_a_run_is_not_started_without_the_time_to_start(tmp_path, monkeypatch):
    marker = tmp_path / "started"
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + run_logs.MIN_START_S / 2))
    run = run_logged("job", [sys.executable, "-c", f"open({str(marker)!r}, 'w')"], tmp_path / "logs", timeout_s=1)
    assert run.returncode == 124 and run.out_of_time and not marker.exists()
    assert "[not started:" in run.log_text()


def test_a_run_past_its_own_limit_before_the_deadline_is_not_out_of_time(tmp_path, monkeypatch):
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 3600))
    run = run_logged("job", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "logs", timeout_s=1)
    assert run.returncode == 124 and not run.out_of_time
    assert "[killed after 1 s]" in run.log_text()


def test_a_run_that_succeeded_is_reused_even_past_the_deadline(tmp_path, monkeypatch):
    command = [sys.executable, "-c", "print('done')"]
    assert run_logged("job", command, tmp_path / "logs").returncode == 0
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() - 1))
    again = run_logged("job", command, tmp_path / "logs")
    assert again.returncode == 0 and not again.out_of_time


def test_project_commands_run_this_checkout_with_the_smoke_and_metrics_paths(tmp_path, monkeypatch):
    probe = "checkout_probe"
    (tmp_path / f"{probe}.py").write_text(
        "import os, mixed_r1_verl\n"
        "print(mixed_r1_verl.__file__, os.environ['MIXED_R1_SMOKE_DIR'], os.environ['VERL_FILE_LOGGER_PATH'])\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    run = project_command("probe", tmp_path / "out", probe)
    assert run.returncode == 0, run.log_tail()
    package, smoke_dir, metrics = run.log_text().split()[-3:]
    assert package == str(source_root() / "mixed_r1_verl" / "__init__.py")
    assert (smoke_dir, metrics) == (str(tmp_path / "out" / "smoke"), str(tmp_path / "out" / "metrics" / "probe.jsonl"))

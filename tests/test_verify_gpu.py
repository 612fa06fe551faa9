"""scripts/verify_gpu.py: the time-boxed GPU verification and its report, run here without a GPU (the
suite's pieces run and skip, the figures are not run) and on pieces made for the test."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from concurrency_helpers import handshake_code, interval, overlap, timed_code, wait_for

from mixed_r1_verl import run_logs
from mixed_r1_verl.process_watch import is_running
from mixed_r1_verl.run_logs import DEADLINE_ENV, run_logged, source_root

SCRIPT = source_root() / "scripts" / "verify_gpu.py"


@pytest.fixture(scope="module")
def verify():
    spec = importlib.util.spec_from_file_location("verify_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def run_script(tmp_path, *args):
    env_out = tmp_path / "checks"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MIXED_R1_GPU_OUT": str(env_out)},
    )  # fmt: skip
    return result, env_out / "verify" / "report.md"


def report_rows(report: str) -> dict[str, list[str]]:
    """The piece table of the report: {piece: [command, checks, result, seconds]}."""
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and cells[0] not in ("piece", "---"):
            rows[cells[0]] = cells[1:]
    return rows


def test_without_a_gpu_the_suite_skips_with_its_reason_and_figures_are_not_run(tmp_path):
    result, report_path = run_script(
        tmp_path, "--only", "training,bmas_figure", "--budget-s", "300", "--report-dir", str(tmp_path / "copy")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_path.read_text()
    rows = report_rows(report)
    assert set(rows) == {"training", "bmas_figure"}
    assert rows["training"][0] == "`pytest -m gpu tests/gpu/test_gpu_training.py -k four_task`"
    assert rows["training"][2].startswith("1 skipped (GPU acceptance suite: no CUDA GPU visible")
    assert rows["bmas_figure"][2] == "not run: no CUDA GPU visible"
    assert "GPU: none visible to torch" in report and "verl 0.9.1" in report
    assert (tmp_path / "copy" / "verify" / "report.md").read_text() == report
    assert (tmp_path / "copy" / "verify" / "training.xml").is_file()


def test_with_parallel_and_without_a_gpu_the_suite_still_skips_with_its_reason(tmp_path):
    result, report_path = run_script(tmp_path, "--parallel", "--only", "training,eval,bmas_figure")
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_path.read_text()
    rows = report_rows(report)
    assert [rows[name][2].split(" (")[0] for name in ("training", "eval")] == ["1 skipped"] * 2
    assert rows["bmas_figure"][2] == "not run: no CUDA GPU visible"
    assert "- pieces side by side where their runs allow (--parallel)" in report


def test_the_copy_skips_what_runs_still_going_remove(verify, tmp_path):
    logs = tmp_path / "out" / "logs"
    (logs / "training.stacks").mkdir(parents=True)
    (logs / "training.stacks" / "1234.txt").write_text("stacks of a process")
    (logs / "training.log").write_text("output so far")
    (logs / "eval.log").symlink_to(logs / "eval.previous.log")  # renamed away
    verify.copy_results(tmp_path / "out", tmp_path / "copy")
    assert sorted(path.name for path in (tmp_path / "copy" / "logs").iterdir()) == ["training.log"]
    os.mkfifo(logs / "pipe")  # still there, and cannot be copied: that is an error
    with pytest.raises(shutil.Error, match="pipe"):
        verify.copy_results(tmp_path / "out", tmp_path / "copy")


def test_pieces_that_cannot_start_before_the_deadline_are_listed_as_not_started(tmp_path):
    result, report_path = run_script(tmp_path, "--only", "training,eval", "--budget-s", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = report_rows(report_path.read_text())
    assert [rows[name][2] for name in ("training", "eval")] == ["not started: under 30 s left"] * 2


def test_an_unknown_piece_is_named(tmp_path):
    result, _ = run_script(tmp_path, "--only", "training,trainng")
    assert result.returncode != 0 and "unknown piece(s) trainng" in result.stderr


def test_junit_results_are_counted_and_failures_kept(verify, tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_passes():\n    assert True\n"
        "def test_fails():\n    assert 1 == 2, 'one is not two'\n"
        "def test_skips():\n    pytest.skip('no time left')\n"
    )
    junit = tmp_path / "results.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_sample.py"),
         f"--junitxml={junit}", "--rootdir", str(tmp_path), "-c", "/dev/null"],
        check=False, capture_output=True, timeout=120,
    )  # fmt: skip
    result, failed, failures = verify.junit_outcome(junit)
    assert result == "1 passed, 1 failed, 1 skipped (no time left)"
    assert failed and len(failures) == 1 and "test_fails" in failures[0] and "one is not two" in failures[0]


def test_pieces_import_this_checkout_also_where_it_is_not_pip_installed(verify, tmp_path):
    """The figures run as scripts of benchmarks/: Python puts that directory first on their path, not the
    checkout's root, so the pieces' environment does."""
    env = verify.pieces_env({"PATH": os.environ["PATH"], "PYTHONPATH": "/site"}, tmp_path, deadline=12.5)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(source_root()), "/site"]
    assert (env["MIXED_R1_GPU_OUT"], env[DEADLINE_ENV]) == (str(tmp_path), "12.5")
    script = tmp_path / "benchmarks" / "where.py"
    script.parent.mkdir()
    script.write_text("import sys\nprint(sys.path[1])\n")  # sys.path[0] is the script's own directory
    printed = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == str(source_root())


def test_a_failing_piece_fails_the_verification_and_its_output_is_reported(verify, tmp_path):
    piece = verify.Piece("broken", ("-c", "print('step 1 ok'); raise SystemExit(3)"), "a piece that fails")
    outcome = verify.run_piece(piece, tmp_path, None, {})
    assert outcome.result == "failed (exit 3)" and outcome.failed
    report = verify.report([outcome], ["GPU: test"], None, 1.0, tmp_path / "logs")
    assert "## Failures" in report and "step 1 ok" in report


def test_a_piece_still_running_at_the_deadline_is_stopped_not_failed(verify, tmp_path):
    overrun = "import time\ndef overrunning():\n    time.sleep(120)\noverrunning()"
    piece = verify.Piece("slow", ("-c", overrun), "a piece that overruns")
    outcome = verify.run_piece(piece, tmp_path, time.time(), {})
    assert outcome.result == f"stopped at ${DEADLINE_ENV}" and not outcome.failed
    assert "line 3 in overrunning" in (tmp_path / "slow.stacks.txt").read_text()


def test_the_runs_table_says_how_far_a_run_cut_at_the_deadline_got(verify, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    run_logged("finished", [sys.executable, "-c", "print('step:1 - a:1')"], logs)
    run_logged("failed", [sys.executable, "-c", "raise SystemExit(2)"], logs)
    monkeypatch.setattr(run_logs, "MIN_START_S", 0.2)
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 2))
    slow = "print('step:1 - a:1'); print('step:2 - a:2', flush=True); import time; time.sleep(60)"
    run_logged("cut", [sys.executable, "-c", slow], logs)
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 3600))
    run_logged("cut", [sys.executable, "-c", "raise SystemExit(1)"], logs)
    statuses = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in verify.runs_table(logs)[4:-1]}
    assert statuses == {
        "cut": "exit 1, no step logged",
        "cut.previous": "stopped at the deadline, last step 2",
        "failed": "exit 2, no step logged",
        "finished": "exit 0",
    }


def test_a_record_moved_aside_by_a_new_attempt_while_the_report_lists_them_is_left_out(verify, tmp_path):
    logs = tmp_path / "logs"
    run_logged("done", [sys.executable, "-c", "pass"], logs)
    (logs / "moving.json").symlink_to(logs / "moving.previous.json")  # listed, then gone when read
    assert [row.split("|")[1].strip() for row in verify.runs_table(logs)[4:-1]] == ["done"]
    assert verify.stopped_runs(logs) == [] and run_logs.runs_beside("done", logs) == []


def test_the_report_shows_where_a_run_stopped_at_the_deadline_stood(verify, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    run_logged("done", [sys.executable, "-c", "pass"], logs)
    monkeypatch.setattr(run_logs, "MIN_START_S", 0.2)
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 3))
    waiting = "import time\ndef waiting_for_the_first_batch():\n    time.sleep(60)\nwaiting_for_the_first_batch()"
    run_logged("stuck", [sys.executable, "-c", waiting], logs)
    section = "\n".join(verify.stopped_runs(logs))
    assert section.startswith("## Where runs stood when stopped") and "### done" not in section
    snapshot = section.split("### stuck", 1)[1]
    assert "1 processes, GPU memory in use:" in snapshot and "def waiting_for_the_first_batch()" in snapshot
    assert "`logs/stuck.stacks.txt`" in snapshot
    assert "(pid " in snapshot and ": <string>:3 waiting_for_the_first_batch < <string>:4 <module>" in snapshot
    assert "line 3 in waiting_for_the_first_batch" in (logs / "stuck.stacks.txt").read_text()


def test_the_report_dates_each_stage_a_run_reached_from_its_progress_log(verify, tmp_path):
    logs = tmp_path / "logs"
    stages = (
        "import time\n"
        "print('INFO worker.py -- Started a local Ray instance.', flush=True)\n"
        "time.sleep(5.5)\n"
        "print('(TaskRunnerV1 pid=7) step:1 - a:1', flush=True)\n"
        "time.sleep(5.5)\n"
        "print('(TaskRunnerV1 pid=7) step:2 - a:2', flush=True)\n"
    )  # fmt: skip
    run_logged("staged", [sys.executable, "-c", stages], logs)
    run_logged("silent", [sys.executable, "-c", "pass"], logs)
    [heading, _, line, _] = verify.timelines(logs)
    assert heading == "## Timelines (to within 5 s)" and line.startswith("- staged: ")
    marks = [part.rsplit(" +", 1) for part in line.removeprefix("- staged: ").split(", ")]
    assert [label for label, _ in marks] == ["Ray", "step 1", "step 2", "last snapshot"], line
    ray, first, second, last = (int(seconds.removesuffix(" s")) for _, seconds in marks)
    assert ray <= first and 5 <= first <= second == last, line



def checks_env(tmp_path) -> dict[str, str]:
    return {**os.environ, "MIXED_R1_GPU_OUT": str(tmp_path / "checks")}


def test_parallel_pieces_run_side_by_side_and_a_timed_figure_alone_after_them(verify, tmp_path):
    first, second, figure, third = (tmp_path / name for name in ("first", "second", "figure", "third"))
    pieces = [
        verify.Piece("first", ("-c", handshake_code(first, second)), "needs second beside it"),
        verify.Piece("figure", ("-c", timed_code(figure)), "times itself", alone=True),
        verify.Piece("second", ("-c", handshake_code(second, first)), "needs first beside it"),
        verify.Piece("third", ("-c", timed_code(third)), "after the figure in line, not behind it"),
    ]
    reports = []
    outcomes = verify.run_pieces(pieces, tmp_path, None, checks_env(tmp_path), "test GPU", True, reports.append)
    names = [piece.name for piece in pieces]
    assert [(outcome.piece.name, outcome.result) for outcome in outcomes] == [(name, "done") for name in names]
    assert [outcome.piece.name for outcome in reports[-1]] == names and len(reports) == 4
    # first and second could only end side by side; third, after the figure in line, ran before it.
    others = [interval(path) for path in (first, second, third)]
    assert overlap(others[0], others[1]) and all(end <= interval(figure)[0] for _, end in others)


def test_with_parallel_a_timed_figure_waits_for_the_pieces_still_to_start_after_the_training(verify, tmp_path):
    """bmas_figure, alone and built on nothing, comes before eval in line; eval starts once training is done."""
    logs = tmp_path / "checks" / "logs"
    training = (
        "import sys; from mixed_r1_verl.run_logs import run_logged\n"
        f"run_logged('smoke', [sys.executable, '-c', 'pass'], {str(logs)!r})\n" + timed_code(tmp_path / "training")
    )
    pieces = [
        verify.Piece("training", ("-c", training), "the run others build on", run="smoke"),
        verify.Piece("figure", ("-c", timed_code(tmp_path / "figure")), "times itself", alone=True),
        verify.Piece("eval", ("-c", timed_code(tmp_path / "eval")), "builds on training", after="training"),
    ]
    outcomes = verify.run_pieces(pieces, tmp_path, None, checks_env(tmp_path), "test GPU", True)
    assert [outcome.result for outcome in outcomes] == ["done"] * 3
    assert interval(tmp_path / "training")[1] <= interval(tmp_path / "eval")[0]
    assert interval(tmp_path / "eval")[1] <= interval(tmp_path / "figure")[0]


def test_one_at_a_time_without_parallel(verify, tmp_path):
    paths = [tmp_path / name for name in ("one", "two", "three")]
    pieces = [verify.Piece(path.name, ("-c", timed_code(path)), "times itself") for path in paths]
    outcomes = verify.run_pieces(pieces, tmp_path, None, checks_env(tmp_path), "test GPU")
    assert [outcome.result for outcome in outcomes] == ["done"] * 3
    intervals = [interval(path) for path in paths]
    assert all(earlier[1] <= later[0] for earlier, later in zip(intervals, intervals[1:]))


@pytest.mark.parametrize("parallel", [False, True])
def test_a_piece_starts_after_the_one_whose_run_it_builds_on_and_only_if_that_run_succeeded(verify, tmp_path, parallel):
    logs = tmp_path / "checks" / "logs"

    def making(run, status, marker):
        code = (
            "import sys; from mixed_r1_verl.run_logs import run_logged\n"
            f"run_logged({run!r}, [sys.executable, '-c', 'raise SystemExit({status})'], {str(logs)!r})\n"
            + timed_code(marker)
        )
        return ("-c", code)

    pieces = [
        verify.Piece("uses_good", ("-c", timed_code(tmp_path / "uses_good")), "builds on good", after="good"),
        verify.Piece("uses_bad", ("-c", timed_code(tmp_path / "uses_bad")), "builds on bad", after="bad"),
        verify.Piece("good", making("good_run", 0, tmp_path / "good"), "its run succeeds", run="good_run"),
        verify.Piece("bad", making("bad_run", 2, tmp_path / "bad"), "its run fails", run="bad_run"),
    ]
    ran = verify.run_pieces(pieces, tmp_path, None, checks_env(tmp_path), "test GPU", parallel)
    outcomes = {outcome.piece.name: outcome.result for outcome in ran}
    assert outcomes == {
        "uses_good": "done", "good": "done", "bad": "done",
        "uses_bad": "not started: bad's run (bad_run) did not succeed",
    }  # fmt: skip
    assert interval(tmp_path / "good")[1] <= interval(tmp_path / "uses_good")[0]
    assert not (tmp_path / "uses_bad").exists()


def test_with_parallel_a_piece_whose_prerequisite_is_not_selected_needs_its_run_done_before(verify, tmp_path):
    """Two pieces built on the training run, selected without it, would each start it, side by side."""
    marker = tmp_path / "ran"
    piece = verify.Piece("uses_training", ("-c", timed_code(marker)), "builds on the smoke run", after="training")
    [outcome] = verify.run_pieces([piece], tmp_path, None, checks_env(tmp_path), "test GPU", parallel=True)
    assert outcome.result == (
        "not started: it builds on training's run (smoke_mixed), which has not succeeded; "
        "with --parallel, select training too"
    )
    assert not marker.exists()
    [outcome] = verify.run_pieces([piece], tmp_path, None, checks_env(tmp_path), "test GPU", parallel=False)
    assert outcome.result == "done" and marker.exists()  # one at a time, its own test runs the training


# Runs two pieces side by side and a third built on the first, as `verify_gpu --parallel` does, with
# Ctrl-C delivered as in a terminal; the outcomes go to a JSON file after each piece.
INTERRUPTED_VERIFY = """
import importlib.util, json, pathlib, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
script, work = sys.argv[1], pathlib.Path(sys.argv[2])
spec = importlib.util.spec_from_file_location("verify_gpu", script)
verify = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = verify
spec.loader.exec_module(verify)
waiting = "import os, pathlib, sys, time; pathlib.Path(sys.argv[1]).write_text(str(os.getpid())); time.sleep(120)"
pieces = [
    verify.Piece("first", ("-c", waiting, str(work / "first.pid")), "waits"),
    verify.Piece("second", ("-c", waiting, str(work / "second.pid")), "waits beside first"),
    verify.Piece("third", ("-c", "pass"), "builds on first", after="first"),
]
def keep(outcomes):
    (work / "outcomes.json").write_text(json.dumps({o.piece.name: o.result for o in outcomes}))
env = {**verify.os.environ, "MIXED_R1_GPU_OUT": str(work / "checks")}
verify.run_pieces(pieces, work, None, env, "test GPU", True, keep)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_stops_the_pieces_running_side_by_side_and_starts_no_more(tmp_path, signum):
    """The pieces run in threads, which no signal reaches: each must still be stopped, not left running."""
    env = {**os.environ, "PYTHONPATH": str(source_root())}
    driver = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_VERIFY, str(SCRIPT), str(tmp_path)], env=env, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        pids = [int(wait_for(tmp_path / f"{name}.pid")) for name in ("first", "second")]
        driver.send_signal(signum)
        _, stderr = driver.communicate(timeout=60)
    finally:
        driver.kill()
    name = signal.Signals(signum).name
    assert driver.returncode == 128 + signum, stderr
    assert not any(is_running(pid) for pid in pids)
    assert json.loads((tmp_path / "outcomes.json").read_text()) == {
        "first": f"interrupted by {name}", "second": f"interrupted by {name}",
        "third": f"not started: interrupted by {name}",
    }  # fmt: skip
    assert f"[interrupted by {name}: stopped " in (tmp_path / "first.log").read_text()


# A pytest plugin printing the timeout marker each collected test ends up with.
TIMEOUT_PROBE = """
def pytest_collection_finish(session):
    for item in session.items:
        marker = item.get_closest_marker("timeout")
        print("timeout:", item.nodeid, None if marker is None else marker.args)
"""


def test_the_gpu_suite_is_limited_by_its_runs_limits_not_by_pytest_inis_timeout(tmp_path):
    """A GPU test runs its runs one after another, each within its own limit and the deadline."""
    (tmp_path / "timeout_probe.py").write_text(TIMEOUT_PROBE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "timeout_probe", "-p", "no:cacheprovider", "--collect-only", "-q",
         "tests/gpu/test_gpu_training.py", "tests/gpu/test_gpu_lora.py", "tests/test_run_logs.py"],
        cwd=source_root(), capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(source_root())])},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    markers = dict(line.split()[1:3] for line in result.stdout.splitlines() if line.startswith("timeout: "))
    gpu = {test: marker for test, marker in markers.items() if test.startswith("tests/gpu/")}
    assert len(gpu) >= 5 and set(gpu.values()) == {"(0,)"}, markers
    assert len(markers) > len(gpu) and {marker for test, marker in markers.items() if test not in gpu} == {"None"}

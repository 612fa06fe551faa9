"""A run stopped at its time limit says where it was: the stacks of every Python process of it (also
of Ray actors and of children that left its process group) and snapshots of its process tree."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from concurrency_helpers import wait_for

from mixed_r1_verl.process_watch import (
    ProcessWatch,
    dump_stacks,
    is_running,
    kill_tree,
    last_snapshot,
    process_tree,
    read_process,
    stack_hook_env,
    where_processes_were,
)
from mixed_r1_verl.run_logs import EXIT_OUT_OF_TIME, run_logged, run_with_limit

PARENT_WITH_A_CHILD = textwrap.dedent(
    """
    import subprocess, sys, time
    CHILD = "def waiting_in_the_child():\\n import time; time.sleep(600)\\nwaiting_in_the_child()"

    def waiting_in_the_parent(child):
        child.wait()

    # A session of its own: the child is outside the run's process group.
    child = subprocess.Popen([sys.executable, "-c", CHILD], start_new_session=True)
    open(sys.argv[1], "w").write(str(child.pid))
    print("started the child", flush=True)
    waiting_in_the_parent(child)
    """
)


def test_a_run_stopped_at_its_limit_leaves_every_process_stacks_and_its_process_tree(tmp_path):
    child_pid_file = tmp_path / "child.pid"
    with open(tmp_path / "run.log", "w") as log:
        returncode, _ = run_with_limit(
            [sys.executable, "-c", PARENT_WITH_A_CHILD, str(child_pid_file)], log, 6, watch_prefix=tmp_path / "run"
        )
    assert returncode == EXIT_OUT_OF_TIME
    child_pid = int(child_pid_file.read_text())
    stacks = (tmp_path / "run.stacks.txt").read_text()
    sections = stacks.split("=== pid ")[1:]
    assert len(sections) == 2, stacks
    parent, child = sorted(sections, key=lambda section: int(section.split()[0]) == child_pid)
    assert " in waiting_in_the_parent\n" in parent and " in waiting_in_the_child\n" not in parent
    assert child.startswith(f"{child_pid} ") and " in waiting_in_the_child\n" in child
    assert "most recent call first" in child
    where = where_processes_were(stacks)
    assert len(where) == 2
    assert any(line.endswith("<string>:2 waiting_in_the_child < <string>:3 <module>") for line in where), where
    assert any("<string>:6 waiting_in_the_parent < <string>:12 <module>" in line for line in where), where
    progress = (tmp_path / "run.progress.log").read_text()
    assert progress.startswith("[+") and "2 processes" in progress
    last_header = [line for line in progress.splitlines() if line.startswith("[+")][-1]
    assert last_header.endswith(", output lines: 1"), progress
    assert f"  {child_pid} " in progress and "waiting_in_the_child" in progress
    assert not is_running(child_pid), "the child outside the process group outlived the run"
    assert not (tmp_path / "run.stacks").exists()


def test_a_run_that_ends_by_itself_leaves_no_stacks_and_the_hidden_sitecustomize_still_runs(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "marker"
    (site / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    with open(tmp_path / "run.log", "w") as log:
        returncode, _ = run_with_limit(
            [sys.executable, "-c", "import sitecustomize; print(sitecustomize.__file__)"], log, 60, env,
            watch_prefix=tmp_path / "run",
        )  # fmt: skip
    assert returncode == 0
    assert marker.read_text() == "ran"
    assert "stack_hook" in (tmp_path / "run.log").read_text()
    assert not (tmp_path / "run.stacks").exists() and not (tmp_path / "run.stacks.txt").exists()


def test_the_stacks_of_ray_actors_name_the_method_they_are_in(tmp_path):
    """A real local Ray: the actor is a worker process started by the raylet, not by the run."""
    script = textwrap.dedent(
        f"""
        import os, ray
        ray.init(address="local", num_cpus=1, include_dashboard=False)

        @ray.remote
        class Holder:
            def hold_the_line(self):
                open({str(tmp_path / "actor.pid")!r}, "w").write(str(os.getpid()))
                import time; time.sleep(600)

        ray.get(Holder.remote().hold_the_line.remote())
        """
    )
    # The pieces run_with_limit uses at its limit, called once the actor is in its method: a fixed
    # limit would have to allow for a slow Ray start-up on a loaded machine.
    env = stack_hook_env({**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, tmp_path / "ray.stacks")
    with open(tmp_path / "ray.log", "w") as log:
        driver = subprocess.Popen(
            [sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        actor_pid = int(wait_for(tmp_path / "actor.pid", timeout_s=180))
        ProcessWatch(driver.pid, tmp_path / "ray.progress.log", lambda: None).snapshot()
        dump_stacks(driver.pid, tmp_path / "ray.stacks", tmp_path / "ray.stacks.txt")
    finally:
        kill_tree(driver.pid)
        driver.wait()
    stacks = (tmp_path / "ray.stacks.txt").read_text()
    actor = next(section for section in stacks.split("=== pid ") if section.startswith(f"{actor_pid} "))
    assert "ray::Holder.hold_the_line" in actor.splitlines()[0] and " in hold_the_line\n" in actor
    assert "ray::Holder.hold_the_line" in (tmp_path / "ray.progress.log").read_text()
    where = where_processes_were(stacks)
    assert any(line.startswith(f"ray::Holder.hold_the_line (pid {actor_pid}): <string>:") for line in where), where
    assert not is_running(actor_pid)


def test_a_rerun_keeps_the_earlier_attempts_stacks_and_drops_older_ones(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "job.previous.stacks.txt").write_text("from an attempt before the earlier one")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    first = run_logged("job", sleeper, logs, timeout_s=3)
    assert first.returncode == EXIT_OUT_OF_TIME and "<module>" in (logs / "job.stacks.txt").read_text()
    run_logged("job", [sys.executable, "-c", "raise SystemExit(3)"], logs)
    assert "<module>" in (logs / "job.previous.stacks.txt").read_text()
    assert not (logs / "job.stacks.txt").exists()
    run_logged("job", [sys.executable, "-c", "pass"], logs)
    assert not (logs / "job.previous.stacks.txt").exists() and (logs / "job.previous.json").is_file()


def test_each_snapshot_says_how_many_lines_of_the_output_were_written_by_then(tmp_path):
    output, progress = tmp_path / "run.log", tmp_path / "run.progress.log"
    output.write_text("first\nsecond\n")
    watch = ProcessWatch(os.getpid(), progress, lambda: 512.0, output_path=output)
    watch.snapshot()
    with open(output, "a") as log:
        log.write("third\nfourth\nfif")
    watch.snapshot()
    headers = [line for line in progress.read_text().splitlines() if line.startswith("[+")]
    assert [header.split(", ", 1)[1] for header in headers] == [
        "GPU memory in use: 512 MiB, output lines: 2", "GPU memory in use: 512 MiB, output lines: 4"
    ]


def test_each_snapshot_says_how_busy_the_machine_was_and_what_each_process_was_doing(tmp_path):
    progress = tmp_path / "run.progress.log"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        watch = ProcessWatch(os.getpid(), progress, lambda: None)
        busy_until = time.monotonic() + 1.0
        while time.monotonic() < busy_until or read_process(sleeper.pid).state != "S":
            pass
        watch.snapshot()
    finally:
        sleeper.kill()
        sleeper.wait()
    lines = progress.read_text().splitlines()
    host = re.fullmatch(
        r"  host: cpu (\d+)% busy, (\d+)% iowait, (\d+)% steal of (\d+) CPUs; "
        r"memory ([\d.]+) of ([\d.]+) GiB available, ([\d.]+) GiB cached",
        lines[1],
    )  # fmt: skip
    assert host, lines[1]
    busy, iowait, steal, cpus = (int(host[i]) for i in range(1, 5))
    assert busy * cpus >= 50, "a full second of this process's CPU time is not in the machine's busy share"
    assert busy + iowait + steal <= 100 and cpus == os.cpu_count()
    assert 0 < float(host[5]) <= float(host[6])
    rows = {int(line.split()[0]): line.split()[2] for line in lines[3:]}
    assert (rows[os.getpid()], rows[sleeper.pid]) == ("R", "S")


def test_the_last_snapshot_keeps_its_header_and_host_lines_and_the_busiest_processes(tmp_path):
    progress = tmp_path / "run.progress.log"
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(4)]
    try:
        watch = ProcessWatch(os.getpid(), progress, lambda: None)
        watch.snapshot()
        watch.snapshot()
    finally:
        for child in children:
            child.kill()
            child.wait()
    text = progress.read_text()
    last = last_snapshot(text, max_processes=2).splitlines()
    assert text.count("[+") == 2 and last[0].startswith("[+") and last[1].startswith("  host: cpu ")
    assert last[2].split()[:2] == ["pid", "ppid"] and len(last) == 6
    hidden = len(text.split("\n[+")[1].splitlines()) - 3 - 2
    assert hidden >= 3 and last[-1] == f"  ... {hidden} more"


def test_the_process_tree_holds_a_process_and_its_descendants_only():
    me = read_process(os.getpid())
    assert me is not None and me.cpu_s > 0 and me.rss_mib > 0 and "python" in me.title
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pids = {process.pid for process in process_tree(os.getpid())}
        assert {os.getpid(), child.pid} <= pids and os.getppid() not in pids
    finally:
        child.kill()
        child.wait()


def test_processes_stopped_at_the_same_place_share_one_line(tmp_path):
    twins = textwrap.dedent(
        """
        import subprocess, sys
        TWIN = "def twin():\\n import time; time.sleep(600)\\ntwin()"
        twins = [subprocess.Popen([sys.executable, "-c", TWIN]) for _ in range(2)]
        twins[0].wait()
        """
    )
    with open(tmp_path / "twins.log", "w") as log:
        run_with_limit([sys.executable, "-c", twins], log, 5, watch_prefix=tmp_path / "twins")
    where = where_processes_were((tmp_path / "twins.stacks.txt").read_text())
    assert len(where) == 2, where
    shared = next(line for line in where if line.startswith("2 processes ("))
    assert "def twin():" in shared and shared.endswith("): <string>:2 twin < <string>:3 <module>")


def test_a_forked_child_that_runs_another_program_is_not_signalled(tmp_path):
    """A fork (here with preexec_fn) arms the hook in the child before it execs a non-Python program,
    whose default action on SIGUSR1 would be to end."""
    marker = tmp_path / "signalled"
    shell = f"trap 'echo signalled > {marker}' USR1; while true; do sleep 0.1; done"
    parent = textwrap.dedent(
        f"""
        import subprocess, time
        subprocess.Popen(["sh", "-c", {shell!r}], preexec_fn=lambda: None)
        time.sleep(60)
        """
    )
    with open(tmp_path / "fork.log", "w") as log:
        run_with_limit([sys.executable, "-c", parent], log, 4, watch_prefix=tmp_path / "fork")
    assert not marker.exists()
    stacks = (tmp_path / "fork.stacks.txt").read_text()
    assert stacks.count("=== pid ") == 1 and 'File "<string>", line 4 in <module>' in stacks


# A step with a child in a session of its own (as Ray's processes are): the signal to the step's process
# group does not reach it, so only the kill after the grace period ends it. The step ignores the signal
# itself when told to.
INTERRUPTED_STEP = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    if sys.argv[2] == "ignore":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    open(sys.argv[1], "w").write(f"{child.pid}")
    time.sleep(60)
    """
)
INTERRUPTED_DRIVER = textwrap.dedent(
    """
    import signal, sys
    from pathlib import Path
    from mixed_r1_verl import run_logs

    # As in a terminal: a process started in the background of a script would have SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_logs.INTERRUPT_GRACE_S = 1.0
    step, pids, mode, log_path = sys.argv[1:]
    with open(log_path, "w") as log:
        run_logs.run_with_limit(
            [sys.executable, "-c", step, pids, mode], log, None, watch_prefix=Path(log_path).with_suffix("")
        )
    """
)


def interrupt_a_running_step(tmp_path: Path, signum: int, mode: str) -> tuple[subprocess.CompletedProcess, list[int]]:
    """Runs a step through run_with_limit in a process of its own, sends that process `signum` once the
    step has started its child, and returns how the process ended and the step's and child's pids."""
    pids_file = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    log_path = tmp_path / "step.log"
    argv = [sys.executable, "-c", INTERRUPTED_DRIVER, INTERRUPTED_STEP, str(pids_file), mode, str(log_path)]
    driver = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    try:
        child_pid = int(wait_for(pids_file))
        step_pid = read_process(child_pid).ppid
        os.kill(driver.pid, signum)
        _, stderr = driver.communicate(timeout=30)
    finally:
        driver.kill()
    return subprocess.CompletedProcess(argv, driver.returncode, "", stderr), [step_pid, child_pid]


def test_ctrl_c_stops_the_running_step_and_every_process_it_started(tmp_path):
    ended, pids = interrupt_a_running_step(tmp_path, signal.SIGINT, "end")
    assert ended.returncode == 130, ended.stderr
    assert ended.stderr.startswith("interrupted by SIGINT: stopped ") and ended.stderr.count("\n") == 1, ended.stderr
    assert not any(is_running(pid) for pid in pids)
    assert "[interrupted by SIGINT: stopped " in (tmp_path / "step.log").read_text()
    assert "KeyboardInterrupt" in (tmp_path / "step.log").read_text(), "the step got no SIGINT to end by itself"
    assert (tmp_path / "step.progress.log").read_text().startswith("[+")


def test_sigterm_kills_a_step_that_does_not_end_within_the_grace_period(tmp_path):
    ended, pids = interrupt_a_running_step(tmp_path, signal.SIGTERM, "ignore")
    assert ended.returncode == 143, ended.stderr
    assert ended.stderr.startswith("interrupted by SIGTERM: stopped ") and ended.stderr.count("\n") == 1, ended.stderr
    assert not any(is_running(pid) for pid in pids)


INTERRUPTED_SESSION = textwrap.dedent(
    """
    import signal, sys
    import pytest

    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(pytest.main(["-q", "-p", "interrupts", "-p", "no:cacheprovider", sys.argv[1]]))
    """
)
TWO_RUNS = textwrap.dedent(
    """
    import pathlib, sys
    from mixed_r1_verl.run_logs import run_with_limit

    WORK = pathlib.Path(__file__).parent
    WAITING = "import os, pathlib, sys, time; pathlib.Path(sys.argv[1]).write_text(str(os.getpid())); time.sleep(60)"

    def test_first_run():
        run_with_limit([sys.executable, "-c", WAITING, str(WORK / "first.pid")], None, None)

    def test_second_run():
        run_with_limit([sys.executable, "-c", WAITING, str(WORK / "second.pid")], None, None)
    """
)


def test_ctrl_c_in_a_test_run_ends_the_session_instead_of_starting_the_next_run(tmp_path):
    (tmp_path / "test_two_runs.py").write_text(TWO_RUNS)
    tests_dir = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_dir.parent), str(tests_dir)])}
    session = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_SESSION, str(tmp_path / "test_two_runs.py")], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        first = int(wait_for(tmp_path / "first.pid"))
        session.send_signal(signal.SIGINT)
        output, _ = session.communicate(timeout=60)
    finally:
        session.kill()
    assert session.returncode == pytest.ExitCode.INTERRUPTED, output
    assert not (tmp_path / "second.pid").exists(), output
    assert not is_running(first)
    assert "Interrupted: interrupted by SIGINT" in output and "1 failed" in output, output

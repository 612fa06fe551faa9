"""Reading training runs back: verl's file-logger metrics, and running a command with its output,
exit status and peak GPU memory kept on disk (used by the GPU acceptance tests and the benchmarks).

verl's `file` logger (`trainer.logger=[...,file]`) writes one JSON object per logged step,
`{"step": n, "data": {"metric/name": value, ...}}`, to `$VERL_FILE_LOGGER_PATH`, else to
`$VERL_FILE_LOGGER_ROOT/<project_name>/<experiment_name>.jsonl` (default root: the working directory of
the trainer process). It opens the file for writing, so a resumed run needs its own path.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from mixed_r1_verl.data.model_files import CHECKPOINT_TRACKER
from mixed_r1_verl.process_watch import (
    ProcessWatch,
    dump_stacks,
    kill_tree,
    remove_stacks_dir,
    stack_hook_env,
    stop_tree,
)
from mixed_r1_verl.settings import EXIT_NOTHING_TO_TRAIN

STEP_TIME = "timing_s/step"
CONSOLE_STEP = re.compile(r"\bstep:(\d+) - ")
SMOKE_TIMEOUT_S = 570
# The smoke recipe as shipped, run by the GPU acceptance suite; benchmarks compare against its log.
SMOKE_RUN = "smoke_mixed"
GPU_POLL_INTERVAL_S = 1.0
# The exit status of a command ended at its time limit, as timeout(1) gives it.
EXIT_OUT_OF_TIME = 124
# A Unix time: `run_logged` ends its command there and starts none with less than MIN_START_S left, so a
# time-boxed verification (scripts/verify_gpu.py) stops cleanly instead of being killed mid-run.
DEADLINE_ENV = "MIXED_R1_GPU_DEADLINE"
MIN_START_S = 30.0
# The files of one attempt of a logged run, after its name: output, record, process snapshots, and the
# processes' stacks when it was stopped at its limit.
PROGRESS_SUFFIX, STACKS_SUFFIX = ".progress.log", ".stacks.txt"
# Where a running command's processes write their stacks when asked; removed when it ends.
STACKS_DIR_SUFFIX = ".stacks"
ATTEMPT_SUFFIXES = (".log", ".json", PROGRESS_SUFFIX, STACKS_SUFFIX)
# How long the processes of a command stopped by Ctrl-C or SIGTERM get to end by themselves before they
# are killed (Ray and vLLM shut their workers down on SIGINT).
INTERRUPT_GRACE_S = 10.0
# How often a command run in a thread other than the main one checks for a `StopRequest`.
STOP_POLL_S = 0.2


class MetricsLogError(ValueError):
    """A metrics file that is not verl's file-logger format."""


class Interrupted(SystemExit):
    """Ctrl-C or SIGTERM reached this process while `run_with_limit` ran a command, whose process tree
    was then stopped; exits with the shell's status for the signal, 128 + its number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


class Terminated(BaseException):
    """SIGTERM within `sigterm_raises` (raised like KeyboardInterrupt, so the same cleanup follows)."""


def interrupt_signal(interrupt: BaseException) -> int:
    """The signal behind a KeyboardInterrupt or `Terminated`."""
    return signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT


class StopRequest:
    """Ctrl-C or SIGTERM taken by the main thread, handed on to the commands `run_with_limit` runs in
    other threads, where no signal arrives: each is then stopped as that signal would stop it there."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self.signum = signal.SIGINT

    def request(self, signum: int) -> None:
        self.signum = signum
        self._requested.set()

    @property
    def requested(self) -> bool:
        return self._requested.is_set()


class _StopRequested(BaseException):
    """A `StopRequest` seen by a command's thread."""


def read_metrics_log(path: str | Path) -> dict[int, dict[str, float]]:
    """Metrics per step of a verl file-logger JSONL; lines logged for the same step are merged."""
    steps: dict[int, dict[str, float]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, data = int(record["step"]), record["data"]
        except (ValueError, KeyError, TypeError) as error:
            raise MetricsLogError(f"{path}:{number}: not a verl file-logger line ({error}): {line[:120]!r}") from error
        if not isinstance(data, dict):
            raise MetricsLogError(f"{path}:{number}: 'data' is {type(data).__name__}, expected an object")
        steps.setdefault(step, {}).update(data)
    return steps


def read_resumed_metrics_log(path: str | Path) -> dict[int, dict[str, float]]:
    """Metrics per step of a run together with those of the runs it resumed from: the training entry keeps
    an earlier run's file beside it as `<stem>.<n>.jsonl` (the newest with the highest n). Going back
    from the newest file, each earlier one gives the steps up to the one its successor resumed from, until
    a run whose first trained step is 1 (one started afresh; files older than it are other runs)."""
    return _read_resumed(path)[0]


def resumed_run_starts(path: str | Path) -> list[int]:
    """The first trained step of each run `read_resumed_metrics_log` puts together, oldest first: [1] for a
    run that was not resumed."""
    return _read_resumed(path)[1]


def _read_resumed(path: str | Path) -> tuple[dict[int, dict[str, float]], list[int]]:
    path = Path(path)
    steps = read_metrics_log(path)
    first_trained = _first_trained_step(steps)
    starts = [] if first_trained is None else [first_trained]
    numbers = {kept: kept.stem[len(path.stem) + 1 :] for kept in path.parent.glob(f"{path.stem}.*{path.suffix}")}
    earlier_files = sorted((kept for kept, n in numbers.items() if n.isdigit()), key=lambda kept: -int(numbers[kept]))
    for earlier_path in earlier_files:
        if first_trained is None or first_trained <= 1:
            break
        earlier = {step: metrics for step, metrics in read_metrics_log(earlier_path).items() if step < first_trained}
        for step, metrics in earlier.items():
            steps[step] = {**metrics, **steps.get(step, {})}
        earlier_first = _first_trained_step(earlier)
        if earlier_first is not None:
            first_trained = earlier_first
            starts.insert(0, earlier_first)
    return dict(sorted(steps.items())), starts


def _first_trained_step(steps: Mapping[int, Mapping[str, float]]) -> int | None:
    return min((step for step, metrics in steps.items() if STEP_TIME in metrics), default=None)


def metric_series(steps: Mapping[int, Mapping[str, float]], key: str, after_step: int = 0) -> list[float]:
    """The values of one metric, in step order, for steps after `after_step` that logged it."""
    return [float(metrics[key]) for step, metrics in sorted(steps.items()) if step > after_step and key in metrics]


def median_step_time(
    steps: Mapping[int, Mapping[str, float]], warmup_steps: int, starts: Sequence[int] = (1,)
) -> float:
    """Median `timing_s/step` past the first `warmup_steps` steps of each start: step 1, and for a resumed
    run the first step of each run it was resumed in (see `resumed_run_starts`), whose process starts cold."""
    times = [
        float(metrics[STEP_TIME])
        for step, metrics in sorted(steps.items())
        if STEP_TIME in metrics and not any(start <= step < start + warmup_steps for start in starts)
    ]
    if not times:
        at = ", ".join(str(start) for start in starts)
        raise MetricsLogError(f"no '{STEP_TIME}' logged past the {warmup_steps} warm-up steps from step(s) {at}")
    return statistics.median(times)


def task_metrics(metrics: Mapping[str, float], prefix: str) -> dict[str, dict[str, float]]:
    """`<prefix>/<task>/<name...>` metrics of one step grouped by task: {task: {name: value}}; a null
    (nan or inf in verl's file logger) reads as nan."""
    grouped: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/", 2)
        if len(parts) == 3 and parts[0] == prefix:
            grouped.setdefault(parts[1], {})[parts[2]] = math.nan if value is None else float(value)
    return grouped


def non_finite(metrics: Mapping[str, float | None]) -> list[str]:
    """Keys whose value is nan or infinite; verl's file logger (orjson) writes those as null."""
    return [
        key
        for key, value in metrics.items()
        if value is None or (isinstance(value, (int, float)) and not math.isfinite(value))
    ]


@dataclass(frozen=True)
class LoggedRun:
    """A finished command: its exit status, output file and the peak GPU memory seen while it ran."""

    name: str
    returncode: int
    log_path: Path
    seconds: float
    peak_gpu_memory_mib: float | None
    # Stopped (or never started) at `$MIXED_R1_GPU_DEADLINE`: it says nothing about the command itself.
    out_of_time: bool = False
    # The output of the earlier try that trained what this one, a training run resumed, found done.
    earlier_try_log: Path | None = None

    def log_text(self) -> str:
        """The command's output, after that of the earlier try that did its training where there is one."""
        earlier = self.earlier_try_log
        text = self.log_path.read_text(errors="replace")
        return earlier.read_text(errors="replace") + text if earlier is not None and earlier.is_file() else text

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def last_step(self) -> int | None:
        return last_console_step(self.log_text())


def last_console_step(output: str) -> int | None:
    """The last training step verl's console logger printed (`step:N - ...`), None before the first."""
    steps = CONSOLE_STEP.findall(output)
    return int(steps[-1]) if steps else None


def nvidia_smi_query(field: str) -> list[str] | None:
    """One value per visible GPU of `nvidia-smi --query-gpu=<field>`, or None without nvidia-smi."""
    try:
        output = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in output.splitlines() if line.strip()]


def gpu_memory_used_mib() -> float | None:
    """Memory in use on all visible GPUs together (nvidia-smi), or None without nvidia-smi."""
    used = nvidia_smi_query("memory.used")
    return None if used is None else sum(float(value) for value in used)


class _PeakGpuMemory:
    """Polls GPU memory in a thread while a command runs; `peak` is the highest total seen."""

    def __init__(self):
        self.peak: float | None = None
        self.latest: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            used = gpu_memory_used_mib()
            if used is not None:
                self.latest = used
                self.peak = used if self.peak is None else max(self.peak, used)
            self._stop.wait(GPU_POLL_INTERVAL_S)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


def seconds_left() -> float | None:
    """Seconds until `$MIXED_R1_GPU_DEADLINE`, or None when no deadline is set."""
    deadline = os.environ.get(DEADLINE_ENV)
    return float(deadline) - time.time() if deadline else None


def run_logged(
    name: str,
    argv: Sequence[str],
    log_dir: str | Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 600,
    reuse: bool = True,
    resumes: bool = False,
) -> LoggedRun:
    """Run `argv` with stdout and stderr in `<log_dir>/<name>.log`; the exit status (124 after a
    timeout, when the whole process tree is killed), duration and peak GPU memory go to
    `<log_dir>/<name>.json`, snapshots of its processes to `<name>.progress.log`, and when it is stopped
    at its limit the stacks of its Python processes to `<name>.stacks.txt` (see `run_with_limit`).
    With `reuse`, a run whose record says it exited 0 is not run again (delete its record to rerun it).
    Under `$MIXED_R1_GPU_DEADLINE` the limit is at most the time left, and a command with under
    MIN_START_S left is not started; both come back with `out_of_time` and status 124. An earlier
    attempt that did not succeed keeps its files as `<name>.previous.*`; one that ran until a deadline
    without finishing is not retried with less time than it had, unless it `resumes` (a training run
    goes on from its last checkpoint, with its compile caches warm). A run that `resumes` and exits
    EXIT_NOTHING_TO_TRAIN after a try cut at the deadline (its checkpoints hold its last step: that try
    was stopped after saving it, during its shutdown, say) is done, as exit 0, with that try's time added
    and its peak memory; its `log_text()` starts with that try's output. Any other exit 3 stays a failure."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path, record_path = log_dir / f"{name}.log", log_dir / f"{name}.json"
    earlier = run_record(name, log_dir)
    earlier_try_log = log_dir / f"{name}.previous.log"
    if reuse and earlier is not None and earlier["returncode"] == 0:
        trained_earlier = earlier_try_log if earlier.get("done_by_earlier_try") else None
        return LoggedRun(name, 0, log_path, earlier["seconds"], earlier["peak_gpu_memory_mib"], False, trained_earlier)
    left = seconds_left()
    cut_earlier = cut_at_the_deadline(earlier) and not resumes
    if reuse and left is not None and cut_earlier and earlier["seconds"] > left:
        # Nothing is rerun or overwritten: the earlier log is what there is to read.
        return LoggedRun(name, EXIT_OUT_OF_TIME, log_path, 0.0, None, out_of_time=True)
    if earlier is not None:
        for suffix in ATTEMPT_SUFFIXES:
            path, previous = log_dir / f"{name}{suffix}", log_dir / f"{name}.previous{suffix}"
            previous.unlink(missing_ok=True)
            if path.is_file():
                path.replace(previous)
    limit_s = timeout_s if left is None else min(timeout_s, left)
    out_of_time = limit_s < timeout_s
    started, started_at = time.monotonic(), time.time()
    peak, trained_earlier, earlier_seconds = None, None, 0.0
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(argv)}\n")
        if left is not None and left < MIN_START_S:
            log.write(f"[not started: {max(left, 0):.0f} s left before ${DEADLINE_ENV}]\n")
            returncode, out_of_time = EXIT_OUT_OF_TIME, True
        else:
            log.flush()
            returncode, peak = run_with_limit(argv, log, limit_s, env, watch_prefix=log_dir / name)
            out_of_time = out_of_time and returncode == EXIT_OUT_OF_TIME
            if returncode == EXIT_OUT_OF_TIME:
                reason = f" at ${DEADLINE_ENV}" if out_of_time else ""
                log.write(f"\n[killed after {limit_s:.0f} s{reason}]\n")
            elif resumes and returncode == EXIT_NOTHING_TO_TRAIN and cut_at_the_deadline(earlier):
                trained_earlier, earlier_seconds = earlier_try_log, earlier["seconds"]
                peak = max(filter(None, (peak, earlier["peak_gpu_memory_mib"])), default=None)
                by = f"trained by the try in {earlier_try_log.name}"
                log.write(f"\n[done: its checkpoints hold its last step, {by}]\n")
                returncode = 0
    seconds = round(time.monotonic() - started + earlier_seconds, 1)
    run = LoggedRun(name, returncode, log_path, seconds, peak, out_of_time, trained_earlier)
    record = {
        "argv": list(argv),
        "returncode": returncode,
        "seconds": run.seconds,
        "peak_gpu_memory_mib": peak,
        "out_of_time": out_of_time,
        "done_by_earlier_try": trained_earlier is not None,
        "started_at": started_at,
        "ended_at": time.time(),
    }
    # Whole or not at all, for a reader listing the records while runs go on (verify_gpu --parallel).
    partial = record_path.with_name(f"{record_path.name}.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(record_path)
    return run


def cut_at_the_deadline(record: dict | None) -> bool:
    """Whether a run's record is of a try stopped at `$MIXED_R1_GPU_DEADLINE`."""
    return record is not None and bool(record.get("out_of_time"))


def run_with_limit(
    argv: Sequence[str],
    log,
    limit_s: float | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    watch_prefix: Path | None = None,
    stop: StopRequest | None = None,
) -> tuple[int, float | None]:
    """Run `argv` in a session of its own with its output to the open file `log` (None: this process's
    stdout and stderr): the exit status (124 when its whole process tree was killed at `limit_s`) and
    the peak GPU memory seen. With `watch_prefix`, `<prefix>.progress.log` gets a snapshot of the run's
    processes every 5 s and one at its end (each with the lines of `log` written by then), and a run
    stopped at its limit first writes every Python process's stacks to `<prefix>.stacks.txt`; both
    files of an earlier run of the same prefix are removed first. Ctrl-C or SIGTERM to this process
    (its own session keeps the terminal's from reaching the command) passes the signal on to the
    command's process group, kills what is left of its tree after INTERRUPT_GRACE_S, says so in one line
    and raises `Interrupted`. In a thread other than the main one, where no signal arrives, `stop`
    does that: the command is stopped as by the signal it was requested with. Any other exception
    while it runs kills its process tree before it goes on."""
    stacks_dir = None if watch_prefix is None else watch_prefix.with_name(f"{watch_prefix.name}{STACKS_DIR_SUFFIX}")
    if watch_prefix is not None:
        for suffix in (PROGRESS_SUFFIX, STACKS_SUFFIX):  # from an earlier run of the same name
            watch_prefix.with_name(f"{watch_prefix.name}{suffix}").unlink(missing_ok=True)
        env = stack_hook_env(env or os.environ, stacks_dir)
    with sigterm_raises(), _PeakGpuMemory() as memory, ExitStack() as watching:
        process = subprocess.Popen(
            list(argv), stdout=log, stderr=None if log is None else subprocess.STDOUT,
            env=dict(env) if env else None, cwd=cwd, start_new_session=True,
        )  # fmt: skip
        watch = None
        try:
            if watch_prefix is not None:
                progress = watch_prefix.with_name(f"{watch_prefix.name}{PROGRESS_SUFFIX}")
                named = Path(str(getattr(log, "name", "")))
                output = named if named.is_file() else None
                watch = watching.enter_context(
                    ProcessWatch(process.pid, progress, lambda: memory.latest, output_path=output)
                )
                watching.callback(remove_stacks_dir, stacks_dir)
            try:
                returncode = _wait(process, limit_s, stop)
            except subprocess.TimeoutExpired:
                returncode = None
            if watch is not None:
                watch.stop()
                watch.snapshot()
            if returncode is None:
                if watch is not None:
                    dump_stacks(process.pid, stacks_dir, watch_prefix.with_name(f"{watch_prefix.name}{STACKS_SUFFIX}"))
                kill_tree(process.pid)
                process.wait()
                returncode = EXIT_OUT_OF_TIME
        except (KeyboardInterrupt, Terminated, _StopRequested) as interrupt:
            signum = stop.signum if isinstance(interrupt, _StopRequested) else interrupt_signal(interrupt)
            _stop_interrupted(process, signum, watch)
            command = " ".join(shlex.join(argv).split())  # one line, whatever the arguments hold
            note = f"interrupted by {signal.Signals(signum).name}: stopped {command[:160]} and its processes"
            if log is not None:
                log.write(f"\n[{note}]\n")
                log.flush()
            print(note, file=sys.stderr, flush=True)
            raise Interrupted(signum) from None
        except BaseException:
            # pytest-timeout's Failed, say: nothing of the command may outlive the wait for it.
            kill_tree(process.pid)
            process.wait()
            raise
    return returncode, memory.peak


def _wait(process: subprocess.Popen, limit_s: float | None, stop: StopRequest | None) -> int:
    """`process.wait(limit_s)`, which also ends, raising `_StopRequested`, once `stop` is requested."""
    if stop is None:
        return process.wait(timeout=limit_s)
    end = None if limit_s is None else time.monotonic() + limit_s
    while not stop.requested:
        left = STOP_POLL_S if end is None else min(STOP_POLL_S, max(end - time.monotonic(), 0.0))
        try:
            return process.wait(timeout=left)
        except subprocess.TimeoutExpired:
            if end is not None and time.monotonic() >= end:
                raise
    raise _StopRequested()


def _stop_interrupted(process: subprocess.Popen, signum: int, watch: ProcessWatch | None) -> None:
    try:
        stop_tree(process.pid, signum, INTERRUPT_GRACE_S)
    except (KeyboardInterrupt, Terminated):
        pass  # a second interrupt: stop_tree has killed the processes at once
    process.wait()
    if watch is not None:
        watch.stop()
        watch.snapshot()


@contextmanager
def sigterm_raises():
    """Within, SIGTERM raises `Terminated` where it would end this process (its default), in the main
    thread; a handler or an ignore set by someone else stays."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_terminated(signum, frame):
    raise Terminated()


def run_record(name: str, log_dir: str | Path) -> dict | None:
    """The record `run_logged` wrote for the last attempt of `name` in `log_dir`, None before any (or
    when a new attempt has just moved it to `<name>.previous.json`)."""
    try:
        return json.loads((Path(log_dir) / f"{name}.json").read_text())
    except FileNotFoundError:
        return None


def runs_beside(name: str, log_dir: str | Path) -> list[str]:
    """The other runs logged in `log_dir` (earlier attempts included) that were running at some time
    while the last attempt of `name` ran, so its seconds, step times and peak GPU memory (nvidia-smi's,
    for the whole GPU) were shared with them. Runs recorded without start and end times are not counted."""
    record = run_record(name, log_dir)
    if record is None or "started_at" not in record:
        return []
    beside = []
    for other_path in sorted(Path(log_dir).glob("*.json")):
        other = run_record(other_path.stem, log_dir) if other_path.stem != name else None
        if other is not None and "started_at" in other:
            if other["started_at"] < record["ended_at"] and record["started_at"] < other["ended_at"]:
                beside.append(other_path.stem)
    return beside


def run_succeeded(name: str, log_dir: str | Path) -> bool:
    """Whether `run_logged` has a record of `name` exiting 0 in `log_dir`."""
    record = run_record(name, log_dir)
    return record is not None and record["returncode"] == 0


def source_root() -> Path:
    """The directory holding the `mixed_r1_verl` package this module was imported from."""
    return Path(__file__).resolve().parents[1]


def checks_out_dir() -> Path:
    """Where the GPU acceptance suite and the GPU benchmarks keep their runs: `$MIXED_R1_GPU_OUT`,
    default `outputs/gpu_checks` in the checkout."""
    return Path(os.environ.get("MIXED_R1_GPU_OUT", source_root() / "outputs" / "gpu_checks")).resolve()


def metrics_log_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / "metrics" / f"{name}.jsonl"


def checkout_first_on_path(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with this checkout first on PYTHONPATH: a module or a script of it (`benchmarks/bmas.py`, which
    Python puts its own directory first for) imports this package where it is not pip-installed."""
    return {**environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(source_root()), environ.get("PYTHONPATH")]))}


def project_command(
    name: str, out_dir: str | Path, module: str, *args: str, timeout_s: float = 600, reuse: bool = True,
    resumes: bool = False,
) -> LoggedRun:
    """`python -m module args` through `run_logged` (logs in `<out_dir>/logs`), with this checkout
    first on the path (the training entry registers its verl plugins itself), the smoke recipe's work
    directory in `<out_dir>/smoke` and verl's file logger writing `<out_dir>/metrics/<name>.jsonl`."""
    out_dir = Path(out_dir)
    metrics = metrics_log_path(out_dir, name)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **checkout_first_on_path(os.environ),
        "MIXED_R1_SMOKE_DIR": str(out_dir / "smoke"),
        "VERL_FILE_LOGGER_PATH": str(metrics),
    }
    return run_logged(name, [sys.executable, "-m", module, *args], out_dir / "logs", env, timeout_s, reuse, resumes)


def smoke_training(
    name: str, out_dir: str | Path, *overrides: str, recipe: str = "smoke", timeout_s: float = SMOKE_TIMEOUT_S
) -> LoggedRun:
    """`python -m mixed_r1_verl.main recipe=<smoke recipe> overrides...` via `project_command`,
    checkpointing into `smoke_checkpoint_dir(out_dir, name)`; a run cut at the deadline that can resume
    (`can_resume`) is retried with whatever time is left, and is done when its checkpoints hold its last step."""
    checkpoint_dir = smoke_checkpoint_dir(out_dir, name)
    return project_command(
        name, out_dir, "mixed_r1_verl.main", f"recipe={recipe}", f"trainer.default_local_dir={checkpoint_dir}",
        *overrides, timeout_s=timeout_s, resumes=can_resume(checkpoint_dir, recipe, overrides),
    )  # fmt: skip


def can_resume(checkpoint_dir: Path, recipe: str, overrides: Sequence[str]) -> bool:
    """Whether a run of a smoke recipe that was cut short goes on from a checkpoint when run again: one
    is in `checkpoint_dir`, or it saves one before its last step (verl saves every trainer.save_freq steps
    and at the last, none with -1)."""
    if (checkpoint_dir / CHECKPOINT_TRACKER).is_file():
        return True
    recipes = source_root() / "recipes"
    trainer = OmegaConf.merge(
        OmegaConf.load(recipes / "smoke.yaml").trainer, OmegaConf.load(recipes / f"{recipe}.yaml").get("trainer", {})
    )
    settings = dict(override.lstrip("+").split("=", 1) for override in overrides if "=" in override)
    save_freq = int(settings.get("trainer.save_freq", trainer.save_freq))
    last_step = int(settings.get("trainer.total_training_steps", trainer.total_training_steps))
    return 0 < save_freq < last_step


def smoke_checkpoint_dir(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir).resolve() / "ckpt" / name

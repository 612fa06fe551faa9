"""Verify this checkout on a CUDA GPU: the acceptance suite (`pytest -m gpu`), then the GPU figures,
within a time budget, and one report of what was measured. The first training run goes first, the
checks that take seconds next, so a short budget still covers the most.

    python scripts/verify_gpu.py [--budget-s 540] [--only training,eval] [--report-dir DIR] [--parallel]

Pieces run one after another in the order below; each is a command of the README's "GPU acceptance
suite". With `--parallel` the suite's pieces run side by side where their runs allow, and the figures,
which time their runs, one by one after them with nothing beside them.
With `--budget-s`, runs are ended at the deadline ($MIXED_R1_GPU_DEADLINE, which the suite and the
figures honour), pieces that cannot start in time are listed as not started, and a rerun continues:
runs that succeeded are reused from `$MIXED_R1_GPU_OUT` (default outputs/gpu_checks).

Written to `$MIXED_R1_GPU_OUT/verify/`: `report.md` (the GPU and package versions, each piece's
outcome, the runs with seconds and peak GPU memory, when each training run reached each stage of its
start-up, where runs stopped at the deadline stood, the figures as printed, the failures), and per
piece its output (`<piece>.log`), pytest's JUnit XML and its process snapshots
(`<piece>.progress.log`, and `<piece>.stacks.txt` when it was stopped). Ctrl-C or SIGTERM stops the
pieces running and their processes, starts no more, and leaves the report of how far it got.
`--report-dir` gets a copy of the report, the run logs and the metrics after every piece (not the
checkpoints). Exit status 1 when a piece failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mixed_r1_verl.process_watch import (  # noqa: E402
    SNAPSHOT_INTERVAL_S,
    last_snapshot,
    output_written_by,
    when_written,
    where_processes_were,
)
from mixed_r1_verl.run_logs import (  # noqa: E402
    CONSOLE_STEP,
    DEADLINE_ENV,
    EXIT_OUT_OF_TIME,
    MIN_START_S,
    Interrupted,
    PROGRESS_SUFFIX,
    SMOKE_RUN,
    STACKS_DIR_SUFFIX,
    STACKS_SUFFIX,
    StopRequest,
    Terminated,
    checkout_first_on_path,
    checks_out_dir,
    interrupt_signal,
    last_console_step,
    nvidia_smi_query,
    run_record,
    run_succeeded,
    run_with_limit,
    runs_beside,
    sigterm_raises,
)

# Left after the last piece for pytest to wind down and for the report.
WIND_DOWN_S = 20.0
PACKAGES = ("torch", "vllm", "verl", "ray", "transformers", "flash-attn")
OUTPUT_TAIL_LINES = 15
# Lines of a training run's output (verl 0.9.1) that mark how far its start-up had got.
MILESTONES = (
    ("Ray", "Started a local Ray instance"),
    ("datasets", "train and validate dataloader initialized"),
    ("actor and reference", "actor and ref model engine initialized"),
    ("vLLM server", "(vLLMHttpServer pid="),
    ("rollout servers up", "checkpoint engine manager initialized"),
    ("ready to fit", "all initialize finished, ready to fit"),
)


@dataclass(frozen=True)
class Piece:
    name: str
    argv: tuple[str, ...]
    checks: str
    # A piece whose run this one builds on: it starts after that piece, and only if that run succeeded.
    after: str | None = None
    # The run other pieces build on.
    run: str | None = None
    # A figure that times its runs: with --parallel, nothing else runs beside it.
    alone: bool = False

    @property
    def is_pytest(self) -> bool:
        return self.argv[:2] == ("-m", "pytest")

    def command(self) -> str:
        """The command as a user types it."""
        return shlex.join(("pytest", *self.argv[2:]) if self.is_pytest else ("python", *self.argv))


def suite(*args: str) -> tuple[str, ...]:
    return ("-m", "pytest", "-m", "gpu", *args)


PIECES = (
    Piece("training", suite("tests/gpu/test_gpu_training.py", "-k", "four_task"),
          "recipe=smoke, 6 GRPO steps with vLLM: per-task rewards on four-task batches", run=SMOKE_RUN),
    Piece("image_frames", suite("tests/gpu/test_gpu_image_frames.py"), "verl's image path and MixedR1Dataset agree"),
    Piece("bmas_figure", ("benchmarks/bmas.py", "--device", "cuda"), "BMAS, 2,560 responses at 7B sizes", alone=True),
    Piece("eval", suite("tests/gpu/test_gpu_eval.py"), "export of step 6, evaluation with vLLM: per-task table",
          after="training"),
    Piece("resume_filtering", suite("tests/gpu/test_gpu_training.py", "tests/gpu/test_gpu_bmas.py", "-k",
                                    "not four_task and not gpu_actor"),
          "resume at step 4 with filtering=on and BMAS on the GPU in the reward workers", after="training"),
    Piece("engine", suite("tests/gpu/test_gpu_engine.py"), "data engine difficulty stage with vLLM"),
    Piece("step_time_figure", ("benchmarks/gpu_figures.py", "training"),
          "Mixed-Reward vs constant reward step time, peak GPU memory", after="training", alone=True),
    Piece("eval_figure", ("benchmarks/gpu_figures.py", "eval"), "vLLM evaluation responses/s", alone=True),
    Piece("engine_figure", ("benchmarks/gpu_figures.py", "engine"), "engine difficulty stage prompts/s", alone=True),
    Piece("bmas_gpu_actor", suite("tests/gpu/test_gpu_bmas.py", "-k", "gpu_actor"),
          "BMAS on a GPU actor of its own (bmas_num_gpus)", after="training"),
    Piece("internvl", suite("tests/gpu/test_gpu_model_families.py", "-k", "internvl"),
          "recipe=smoke_internvl, 2 GRPO steps with vLLM"),
    Piece("qwen3vl", suite("tests/gpu/test_gpu_model_families.py", "-k", "qwen3vl"),
          "recipe=smoke_qwen3vl, 2 GRPO steps with vLLM"),
    # On the training run's tiny model and data, which it would otherwise build beside that run.
    Piece("lora", suite("tests/gpu/test_gpu_lora.py"), "recipe=smoke lora=on: vLLM's LoRA rollouts, merged copy evaluated",
          after="training"),
)  # fmt: skip


@dataclass
class Outcome:
    piece: Piece
    result: str
    seconds: float = 0.0
    failed: bool = False
    failures: tuple[str, ...] = ()
    output_tail: str = ""


def cuda_gpu() -> str | None:
    """The visible GPU as "name (N MiB)", or None without a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(0)
    return f"{torch.cuda.device_count()} x {properties.name} ({properties.total_memory // 2**20} MiB)"


def driver_version() -> str:
    versions = nvidia_smi_query("driver_version")
    return versions[0] if versions else "unknown"


def environment(gpu: str | None) -> list[str]:
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package}: not installed")
    lines = [f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", f"GPU: {gpu or 'none visible to torch'}"]
    if gpu:
        import torch

        lines.append(f"driver {driver_version()}, CUDA {torch.version.cuda} (torch build)")
    lines.append(f"Python {platform.python_version()}; " + ", ".join(versions))
    return lines


def junit_outcome(path: Path) -> tuple[str, bool, tuple[str, ...]]:
    """("N passed, N failed, N skipped", whether any failed, failure texts) from pytest's JUnit XML."""
    cases = ElementTree.parse(path).getroot().iter("testcase")
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures, skip_reasons = [], set()
    for case in cases:
        problem = next((child for child in case if child.tag in ("failure", "error")), None)
        skipped = case.find("skipped")
        if problem is not None:
            counts["failed"] += 1
            failures.append(f"{case.get('name')}: {problem.get('message') or ''}\n{problem.text or ''}".strip())
        elif skipped is not None:
            counts["skipped"] += 1
            skip_reasons.add(skipped.get("message") or "")
        else:
            counts["passed"] += 1
    if not any(counts.values()):
        return "no test selected", True, ()
    result = ", ".join(f"{count} {word}" for word, count in counts.items() if count)
    if skip_reasons:
        result += " (" + "; ".join(sorted(skip_reasons)) + ")"
    return result, counts["failed"] > 0, tuple(failures)


def run_piece(
    piece: Piece, verify_dir: Path, deadline: float | None, env: dict[str, str], stop: StopRequest | None = None
) -> Outcome:
    log_path, junit = verify_dir / f"{piece.name}.log", verify_dir / f"{piece.name}.xml"
    junit.unlink(missing_ok=True)
    argv = [sys.executable, *piece.argv] + ([f"--junitxml={junit}"] if piece.is_pytest else [])
    limit = None if deadline is None else deadline + WIND_DOWN_S / 2 - time.time()
    started = time.monotonic()
    interrupted = None
    with open(log_path, "w") as log:
        try:
            returncode, _ = run_with_limit(
                argv, log, limit, env, cwd=ROOT, watch_prefix=verify_dir / piece.name, stop=stop
            )
        except Interrupted as interrupt:
            interrupted = interrupt.signum
    seconds = round(time.monotonic() - started, 1)
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-OUTPUT_TAIL_LINES:])
    if interrupted is not None:
        return Outcome(piece, f"interrupted by {signal.Signals(interrupted).name}", seconds, False, (), tail)
    if piece.is_pytest and junit.is_file():
        result, failed, failures = junit_outcome(junit)
        return Outcome(piece, result, seconds, failed or returncode not in (0, 5), failures, tail)
    if returncode == EXIT_OUT_OF_TIME:
        return Outcome(piece, f"stopped at ${DEADLINE_ENV}", seconds, False, (), tail)
    if returncode != 0:
        return Outcome(piece, f"failed (exit {returncode})", seconds, True, (tail,), tail)
    return Outcome(piece, "done", seconds, False, (), tail)


def runs_table(logs_dir: Path) -> list[str]:
    """One row per logged run of the suite and the figures: exit status, seconds, peak GPU memory and
    the runs it ran beside."""
    rows = []
    for record_path in sorted(logs_dir.glob("*.json")):
        record = run_record(record_path.stem, logs_dir)
        if record is None:  # moved aside by a new attempt since it was listed
            continue
        peak = record.get("peak_gpu_memory_mib")
        status = "stopped at the deadline" if record.get("out_of_time") else f"exit {record['returncode']}"
        log_path = record_path.with_suffix(".log")
        if record["returncode"] != 0 and log_path.is_file():
            step = last_console_step(log_path.read_text(errors="replace"))
            status += ", no step logged" if step is None else f", last step {step}"
        beside = ", ".join(runs_beside(record_path.stem, logs_dir)) or "-"
        rows.append(
            f"| {record_path.stem} | {status} | {record['seconds']} | {'-' if peak is None else f'{peak:.0f}'} "
            f"| {beside} |"
        )
    if not rows:
        return []
    header = "| run | result | seconds | peak GPU memory (MiB, whole GPU) | ran beside |"
    return ["## Runs", "", header, "|---|---|---|---|---|", *rows, ""]


def stopped_runs(logs_dir: Path) -> list[str]:
    """For each run stopped at its limit: its last process snapshot (busiest first) and where its
    Python processes were, from their stacks."""
    lines = []
    for record_path in sorted(logs_dir.glob("*.json")):
        progress = record_path.with_name(record_path.stem + PROGRESS_SUFFIX)
        record = run_record(record_path.stem, logs_dir)
        if record is None or record["returncode"] != EXIT_OUT_OF_TIME or not progress.is_file():
            continue
        lines += [f"### {record_path.stem}", "", "```", last_snapshot(progress.read_text()), "```", ""]
        stacks = record_path.with_name(record_path.stem + STACKS_SUFFIX)
        if stacks.is_file():
            where = where_processes_were(stacks.read_text(errors="replace"))
            lines += [f"Where its Python processes were (`logs/{stacks.name}`):", "", "```", *where, "```", ""]
    return ["## Where runs stood when stopped", "", *lines] if lines else []


def timeline(output: list[str], progress: str) -> str | None:
    """When a run reached each milestone and its first and last training step, to within one snapshot
    interval; None for a run that reached none."""
    written_by = output_written_by(progress)
    marks = [(label, next((i for i, line in enumerate(output) if text in line), None)) for label, text in MILESTONES]
    steps = [(index, match[1]) for index, line in enumerate(output) if (match := CONSOLE_STEP.search(line))]
    marks += [(f"step {step}", index) for index, step in dict.fromkeys([*steps[:1], *steps[-1:]])]
    marks = [(label, index) for label, index in marks if index is not None]
    if not marks or not written_by:
        return None
    parts = []
    for label, index in marks:
        seconds = when_written(written_by, index)
        parts.append(f"{label} +{seconds} s" if seconds is not None else f"{label} after +{written_by[-1][0]} s")
    return ", ".join([*parts, f"last snapshot +{written_by[-1][0]} s"])


def timelines(logs_dir: Path) -> list[str]:
    """One line per run that reached a milestone: when it did, from its output and progress log."""
    lines = []
    for progress in sorted(logs_dir.glob(f"*{PROGRESS_SUFFIX}")):
        name = progress.name.removesuffix(PROGRESS_SUFFIX)
        output = progress.with_name(f"{name}.log")
        if output.is_file():
            line = timeline(output.read_text(errors="replace").splitlines(), progress.read_text())
            lines += [f"- {name}: {line}"] if line else []
    return [f"## Timelines (to within {SNAPSHOT_INTERVAL_S:.0f} s)", "", *lines, ""] if lines else []


def report(
    outcomes: list[Outcome], env_lines: list[str], budget_s: float | None, elapsed_s: float, logs_dir: Path
) -> str:
    budget = f"budget {budget_s:.0f} s, " if budget_s is not None else ""
    lines = ["# GPU verification", "", *[f"- {line}" for line in env_lines], f"- {budget}used {elapsed_s:.0f} s", ""]
    lines += ["| piece | command | checks | result | seconds |", "|---|---|---|---|---|"]
    lines += [
        f"| {o.piece.name} | `{o.piece.command()}` | {o.piece.checks} | {o.result} | {o.seconds} |" for o in outcomes
    ]
    lines += ["", *runs_table(logs_dir), *timelines(logs_dir), *stopped_runs(logs_dir)]
    figures = [o for o in outcomes if not o.piece.is_pytest and o.result == "done"]
    if figures:
        lines += ["## Figures", ""]
        for outcome in figures:
            lines += [
                f"### {outcome.piece.name}: `{outcome.piece.command()}`",
                "",
                "```",
                outcome.output_tail,
                "```",
                "",
            ]
    failed = [o for o in outcomes if o.failed]
    if failed:
        lines += ["## Failures", ""]
        for outcome in failed:
            for failure in outcome.failures or (outcome.output_tail,):
                lines += [f"### {outcome.piece.name}", "", "```", failure[-4000:], "```", ""]
    return "\n".join(lines) + "\n"


def copy_results(out: Path, report_dir: Path) -> None:
    """The report, logs and metrics as they are now. Runs still going (--parallel) rename and remove
    some of their files: one gone by the time it is copied is left for the next copy."""
    for folder in ("verify", "logs", "metrics"):
        if (out / folder).is_dir():
            try:
                shutil.copytree(
                    out / folder, report_dir / folder, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(f"*{STACKS_DIR_SUFFIX}"),
                )  # fmt: skip
            except shutil.Error as error:
                if any(Path(source).exists() for source, _, _ in error.args[0]):
                    raise


def selected(only: str | None) -> list[Piece]:
    if not only:
        return list(PIECES)
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = sorted(set(names) - {piece.name for piece in PIECES})
    if unknown:
        raise SystemExit(f"--only: unknown piece(s) {', '.join(unknown)}; pieces: {', '.join(p.name for p in PIECES)}")
    return [piece for piece in PIECES if piece.name in names]


def not_started(
    piece: Piece, gpu: str | None, deadline: float | None, before: Piece | None, before_done: bool, parallel: bool,
    logs_dir: Path,
) -> str | None:
    """Why `piece` is not started now, or None. `before` is the piece it builds on (its `after`), and
    `before_done` whether that one was run here."""
    if not gpu and not piece.is_pytest:
        return "not run: no CUDA GPU visible"
    if deadline is not None and deadline - time.time() < MIN_START_S:
        return f"not started: under {MIN_START_S:.0f} s left"
    if gpu and before is not None and not run_succeeded(before.run, logs_dir):
        if before_done:
            return f"not started: {before.name}'s run ({before.run}) did not succeed"
        if parallel:  # each piece built on that run would start it, side by side with the others
            return (
                f"not started: it builds on {before.name}'s run ({before.run}), which has not succeeded; "
                f"with --parallel, select {before.name} too"
            )
    return None


def pieces_env(environ, out: Path, deadline: float | None) -> dict[str, str]:
    """What every piece runs with: this checkout first on the path (the figures are scripts of `benchmarks/`,
    which a checkout that is not pip-installed would not import the package from), the checks' output
    directory and the deadline."""
    env = {**checkout_first_on_path(environ), "MIXED_R1_GPU_OUT": str(out)}
    if deadline is not None:
        env[DEADLINE_ENV] = str(deadline)
    return env


def run_pieces(
    pieces: list[Piece],
    verify_dir: Path,
    deadline: float | None,
    env: dict[str, str],
    gpu: str | None,
    parallel: bool = False,
    on_outcome: Callable[[list[Outcome]], None] = lambda outcomes: None,
) -> list[Outcome]:
    """Runs the pieces in their order, one at a time; with `parallel`, every piece whose `after` piece
    has finished starts at once, beside those running, except the `alone` ones, which wait until nothing
    runs and no other piece is left that could start, and run by themselves. `on_outcome` gets the
    outcomes so far, in piece order, after each piece."""
    logs_dir = Path(env["MIXED_R1_GPU_OUT"]) / "logs"
    selected = {piece.name for piece in pieces}
    known = {piece.name: piece for piece in (*PIECES, *pieces)}
    pending, running = list(pieces), {}
    done: dict[str, Piece] = {}
    outcomes: dict[str, Outcome] = {}
    started = time.time()

    def waits(piece: Piece) -> bool:
        return piece.after in selected and piece.after not in done

    def finish(outcome: Outcome) -> None:
        done[outcome.piece.name], outcomes[outcome.piece.name] = outcome.piece, outcome
        elapsed = time.time() - started
        print(f"+{elapsed:.0f} s {outcome.piece.name}: {outcome.result} ({outcome.seconds} s)", flush=True)
        on_outcome([outcomes[piece.name] for piece in pieces if piece.name in outcomes])

    stop = StopRequest()
    with sigterm_raises(), ThreadPoolExecutor(max_workers=len(pieces) or 1) as pool:
        try:
            while pending or running:
                for piece in list(pending):
                    alone_now = piece.alone or any(other.alone for other in running.values())
                    if running and (not parallel or alone_now):
                        continue
                    if waits(piece):
                        continue
                    if parallel and piece.alone and any(not other.alone and not waits(other) for other in pending):
                        continue  # a figure runs after the tests, the later ones built on training included
                    pending.remove(piece)
                    before = known.get(piece.after)
                    reason = not_started(piece, gpu, deadline, before, piece.after in done, parallel, logs_dir)
                    if reason:
                        finish(Outcome(piece, reason))
                        continue
                    print(f"+{time.time() - started:.0f} s {piece.name}: {piece.command()}", flush=True)
                    running[pool.submit(run_piece, piece, verify_dir, deadline, env, stop)] = piece
                    if not parallel or piece.alone:
                        break
                if running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        running.pop(future)
                        finish(future.result())
        except (KeyboardInterrupt, Terminated) as interrupt:
            # The pieces run in threads, which no signal reaches: they are stopped as the signal would.
            stop.request(interrupt_signal(interrupt))
            for future in running:
                finish(future.result())
            for piece in pending:
                finish(Outcome(piece, f"not started: interrupted by {signal.Signals(stop.signum).name}"))
            raise Interrupted(stop.signum) from None
    return [outcomes[piece.name] for piece in pieces]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, help="wall-clock seconds for everything (default: no limit)")
    parser.add_argument("--only", help="comma-separated piece names, run in the built-in order")
    parser.add_argument("--report-dir", type=Path, help="also copy the report, run logs and metrics here")
    parser.add_argument(
        "--parallel", action="store_true", help="run the suite's pieces side by side where their runs allow"
    )
    args = parser.parse_args(argv)
    pieces = selected(args.only)
    started = time.time()
    deadline = None if args.budget_s is None else started + args.budget_s - WIND_DOWN_S
    out = checks_out_dir()
    verify_dir = out / "verify"
    verify_dir.mkdir(parents=True, exist_ok=True)
    env = pieces_env(os.environ, out, deadline)
    gpu = cuda_gpu()
    env_lines = environment(gpu)
    if args.parallel:
        env_lines.append("pieces side by side where their runs allow (--parallel)")

    def write_report(outcomes: list[Outcome]) -> None:
        (verify_dir / "report.md").write_text(
            report(outcomes, env_lines, args.budget_s, time.time() - started, out / "logs")
        )
        if args.report_dir:
            copy_results(out, args.report_dir)

    try:
        outcomes = run_pieces(pieces, verify_dir, deadline, env, gpu, args.parallel, write_report)
    finally:
        print(f"report: {verify_dir / 'report.md'}")
    return 1 if any(outcome.failed for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())

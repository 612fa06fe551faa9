"""Where a long run stands, read from the processes themselves: a progress log of the run's process
tree (each process's title, which for a Ray actor names the method it is in, its state, CPU use and
memory; the GPU memory in use; the machine's CPU shares and memory; how far the run's output had got)
every 5 s, and at the time limit the Python stacks of every process of the run, written by the hook
in `stack_hook/` before the run is killed. Linux only (/proc)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

STACK_HOOK_DIR = Path(__file__).resolve().parent / "stack_hook"
STACKS_DIR_ENV = "MIXED_R1_STACKS_DIR"
SNAPSHOT_INTERVAL_S = 5.0
# How long the processes get to write their stacks before the run is killed.
STACK_DUMP_WAIT_S = 3.0
TITLE_CHARS = 120
SUMMARY_TITLE_CHARS = 40
SECTION_HEADER = re.compile(r"^=== pid (\d+) \(parent \d+\): (.*)$", re.MULTILINE)
FRAME = re.compile(r'^\s*File "(.*)", line (\d+) in (.*)$')
SNAPSHOT_OUTPUT = re.compile(r"^\[\+(\d+) s\] .*, output lines: (\d+)$", re.MULTILINE)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, order=True)
class ProcessInfo:
    pid: int
    ppid: int
    session: int
    title: str
    cpu_s: float
    rss_mib: float
    # R running, S sleeping, D waiting on the disk (uninterruptible), Z exited, ...
    state: str


@dataclass(frozen=True)
class HostSample:
    """The machine's CPU time counters (/proc/stat, in clock ticks) and memory (/proc/meminfo, KiB)."""

    cpu_ticks: tuple[int, ...]
    memory_kib: dict[str, int]

    @classmethod
    def read(cls) -> HostSample:
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        memory = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, value = line.split(":", 1)
            memory[name] = int(value.split()[0])
        return cls(tuple(int(ticks) for ticks in cpu), memory)


def host_line(before: HostSample, now: HostSample) -> str:
    """What the machine did between two samples: CPU busy, waiting on the disk, and taken by the
    hypervisor (steal, on a virtual machine) as shares of all its CPUs; memory available and cached."""
    # user nice system idle iowait irq softirq steal (guest time is counted in user already)
    delta = [b - a for a, b in zip(before.cpu_ticks[:8], now.cpu_ticks[:8])]
    total = max(sum(delta), 1)
    idle, iowait, steal = delta[3], delta[4], delta[7]
    busy = total - idle - iowait - steal
    gib = 2**20
    return (
        f"  host: cpu {100 * busy / total:.0f}% busy, {100 * iowait / total:.0f}% iowait, "
        f"{100 * steal / total:.0f}% steal of {os.cpu_count()} CPUs; memory "
        f"{now.memory_kib.get('MemAvailable', 0) / gib:.1f} of {now.memory_kib.get('MemTotal', 0) / gib:.1f} GiB "
        f"available, {now.memory_kib.get('Cached', 0) / gib:.1f} GiB cached"
    )


def read_stat(pid: int) -> tuple[str, list[str]] | None:
    """The command name and the fields after it (state, ppid, ...) of /proc/<pid>/stat, or None once
    the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces and parentheses itself.
    return stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()


def read_process(pid: int) -> ProcessInfo | None:
    """One process from /proc, or None once it is gone."""
    stat = read_stat(pid)
    if stat is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    name, fields = stat
    title = " ".join(cmdline.decode(errors="replace").replace("\0", " ").split()) or f"[{name}]"
    return ProcessInfo(
        pid=pid,
        ppid=int(fields[1]),
        session=int(fields[3]),
        title=title[:TITLE_CHARS],
        cpu_s=(int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
        rss_mib=int(fields[21]) * _PAGE_BYTES / 2**20,
        state=fields[0],
    )


def process_tree(root_pid: int) -> list[ProcessInfo]:
    """The process `root_pid` and every process started under it: its descendants, and the processes
    of its session whose parent has already exited."""
    processes = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            process = read_process(int(entry.name))
            if process is not None:
                processes[process.pid] = process
    children: dict[int, list[int]] = {}
    for process in processes.values():
        children.setdefault(process.ppid, []).append(process.pid)
    tree, pending = set(), [root_pid]
    while pending:
        pid = pending.pop()
        if pid in processes and pid not in tree:
            tree.add(pid)
            pending.extend(children.get(pid, ()))
    tree |= {pid for pid, process in processes.items() if process.session == root_pid}
    return [processes[pid] for pid in sorted(tree)]


def format_snapshot(
    elapsed_s: float,
    processes: Iterable[ProcessInfo],
    earlier: Mapping[int, ProcessInfo],
    interval_s: float,
    gpu_memory_mib: float | None,
    output_lines: int | None,
    host: str,
) -> str:
    """One block of the progress log; CPU % is over the last interval (since start for a new process).
    `output_lines`, the lines of the run's output so far, places each output line within an interval;
    `host` is a `host_line` over the same interval."""
    gpu = "-" if gpu_memory_mib is None else f"{gpu_memory_mib:.0f} MiB"
    output = "" if output_lines is None else f", output lines: {output_lines}"
    rows = []
    for process in processes:
        before = earlier.get(process.pid)
        used_s = process.cpu_s - (before.cpu_s if before else 0.0)
        rows.append((100 * used_s / max(interval_s, 1e-9), process))
    rows.sort(key=lambda row: (-row[0], row[1].pid))
    lines = [f"[+{elapsed_s:.0f} s] {len(rows)} processes, GPU memory in use: {gpu}{output}", host]
    lines += [f"  {'pid':>7} {'ppid':>7} {'st':>2} {'cpu%':>6} {'rss MiB':>8}  process"]
    lines += [f"  {p.pid:>7} {p.ppid:>7} {p.state:>2} {cpu:>6.0f} {p.rss_mib:>8.0f}  {p.title}" for cpu, p in rows]
    return "\n".join(lines) + "\n"


def last_snapshot(progress: str, max_processes: int = 12) -> str:
    """The last block of a progress log, with its busiest `max_processes` processes."""
    blocks = [block for block in progress.split("\n[+") if block.strip()]
    if not blocks:
        return ""
    lines = ("[+" + blocks[-1].removeprefix("[+")).splitlines()
    first_row = next((i + 1 for i, line in enumerate(lines) if line.split()[:2] == ["pid", "ppid"]), len(lines))
    hidden = len(lines) - first_row - max_processes
    return "\n".join(lines[: first_row + max_processes] + ([f"  ... {hidden} more"] if hidden > 0 else []))


def output_written_by(progress: str) -> list[tuple[int, int]]:
    """(seconds into the run, lines of its output written by then) of each snapshot of a progress log."""
    return [(int(match[1]), int(match[2])) for match in SNAPSHOT_OUTPUT.finditer(progress)]


def when_written(written_by: list[tuple[int, int]], line_index: int) -> int | None:
    """Seconds into the run of the first snapshot by which output line `line_index` (from 0) was written."""
    return next((seconds for seconds, lines in written_by if lines > line_index), None)


class ProcessWatch:
    """Appends a snapshot of the process tree under `root_pid` to `progress_path` every `interval_s`
    until `stop()`, and one more on each `snapshot()`; with `output_path` (the file the run writes its
    output to), each snapshot also says how many lines of it were written by then."""

    def __init__(
        self,
        root_pid: int,
        progress_path: Path,
        gpu_memory: Callable[[], float | None],
        interval_s: float = SNAPSHOT_INTERVAL_S,
        output_path: Path | None = None,
    ):
        self.root_pid, self.progress_path, self.gpu_memory = root_pid, progress_path, gpu_memory
        self.interval_s, self.output_path = interval_s, output_path
        self._output_read, self._output_lines = 0, 0
        self._host = HostSample.read()
        self._started = self._last_time = time.monotonic()
        self._last: dict[int, ProcessInfo] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def snapshot(self) -> None:
        with self._lock:
            now, host = time.monotonic(), HostSample.read()
            processes = process_tree(self.root_pid)
            block = format_snapshot(
                now - self._started, processes, self._last, now - self._last_time, self.gpu_memory(),
                self._count_output_lines(), host_line(self._host, host),
            )  # fmt: skip
            self._host = host
            with open(self.progress_path, "a") as progress:
                progress.write(block)
            self._last, self._last_time = {process.pid: process for process in processes}, now

    def _count_output_lines(self) -> int | None:
        if self.output_path is None:
            return None
        with open(self.output_path, "rb") as output:
            output.seek(self._output_read)
            written = output.read()
        self._output_read += len(written)
        self._output_lines += written.count(b"\n")
        return self._output_lines

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.snapshot()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()


def stack_hook_env(env: Mapping[str, str], stacks_dir: Path) -> dict[str, str]:
    """`env` for a command whose Python processes write their stacks into `stacks_dir` on SIGUSR1."""
    stacks_dir.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, [str(STACK_HOOK_DIR), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path, STACKS_DIR_ENV: str(stacks_dir)}


def dump_stacks(root_pid: int, stacks_dir: Path, out_path: Path, wait_s: float = STACK_DUMP_WAIT_S) -> int:
    """Ask every hooked process of the tree under `root_pid` for its stacks and gather them, each under
    its pid and title, into `out_path`; `stacks_dir` is removed. Returns how many processes answered."""
    running = {process.pid: process for process in process_tree(root_pid)}
    hooked = sorted(running[int(path.stem)] for path in stacks_dir.glob("*.txt") if int(path.stem) in running)
    # Only a process still running the interpreter that loaded the hook may get SIGUSR1: it ends any other.
    hooked = [process for process in hooked if _hook_interpreter(stacks_dir, process.pid) == _executable(process.pid)]
    written = {process.pid: _size(stacks_dir / f"{process.pid}.txt") for process in hooked}
    for process in hooked:
        try:
            os.kill(process.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    _wait_until_written(stacks_dir, written, wait_s)
    answered = 0
    with open(out_path, "w") as out:
        for process in hooked:
            stacks = (stacks_dir / f"{process.pid}.txt").read_text(errors="replace").partition("\n")[2].strip()
            if stacks:
                answered += 1
                out.write(f"=== pid {process.pid} (parent {process.ppid}): {process.title}\n{stacks}\n\n")
    remove_stacks_dir(stacks_dir)
    return answered


def where_processes_were(stacks: str, frames: int = 3, stdlib: str | None = None) -> list[str]:
    """Where the processes of a stacks file were: the innermost `frames` frames, past the standard
    library's, of the thread that answered the signal (the main thread); one line per place, naming the
    processes there (by title, and pid when alone)."""
    stdlib = stdlib or sysconfig.get_paths()["stdlib"]
    headers = list(SECTION_HEADER.finditer(stacks))
    places: dict[str, list[tuple[str, str]]] = {}
    for header, following in zip(headers, [*headers[1:], None]):
        body = stacks[header.end() : following.start() if following else len(stacks)]
        threads = re.split(r"\n\s*\n", body.strip())
        answering = next((thread for thread in threads if thread.startswith("Current thread")), threads[0])
        calls = [call for call in map(FRAME.match, answering.splitlines()[1:]) if call]
        own = [call for call in calls if not call[1].startswith(stdlib)] or calls
        where = " < ".join(f"{short_path(call[1])}:{call[2]} {call[3]}" for call in own[:frames])
        places.setdefault(where or "no Python frame", []).append((header[1], short_title(header[2])))
    lines = []
    for where, processes in places.items():
        if len(processes) == 1:
            (pid, title), = processes
            lines.append(f"{title} (pid {pid}): {where}")
        else:
            titles = ", ".join(dict.fromkeys(title for _, title in processes))
            lines.append(f"{len(processes)} processes ({titles}): {where}")
    return lines


def short_title(title: str) -> str:
    """A process title with file paths cut to their names: `python run_on_cpu.py grpo ...`."""
    words = [Path(word).name if "/" in word and "=" not in word else word for word in title.split()]
    return " ".join(words)[:SUMMARY_TITLE_CHARS]


def short_path(path: str) -> str:
    """A source path from the package on: `verl/trainer/main_ppo.py` for .../site-packages/verl/..."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    return "/".join(Path(path).parts[-3:])


def _hook_interpreter(stacks_dir: Path, pid: int) -> str | None:
    try:
        return (stacks_dir / f"{pid}.txt").read_text(errors="replace").partition("\n")[0]
    except OSError:
        return None


def _executable(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _wait_until_written(stacks_dir: Path, sizes_before: dict[int, int], wait_s: float) -> None:
    """Until every signalled process's file has grown and stopped growing (checked every 0.2 s), at
    most `wait_s`."""
    deadline, last = time.monotonic() + wait_s, None
    while time.monotonic() < deadline:
        time.sleep(0.2)
        sizes = {pid: _size(stacks_dir / f"{pid}.txt") for pid in sizes_before}
        if sizes == last and all(sizes[pid] > before for pid, before in sizes_before.items()):
            return
        last = sizes


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def remove_stacks_dir(stacks_dir: Path) -> None:
    """The per-process stack files; a process started at this moment may still add one, hence no errors."""
    shutil.rmtree(stacks_dir, ignore_errors=True)


def kill_tree(root_pid: int, wait_s: float = 10.0, seen_before: Iterable[ProcessInfo] = ()) -> None:
    """SIGKILL to the process group of `root_pid` and to every process of its tree, also to any that
    moved to a process group of its own, and to those of `seen_before` (an earlier `process_tree`) still
    running; returns once they are gone (or `wait_s` passed), so that the GPU memory they held is free
    for what runs next."""
    tree = {process.pid for process in (*process_tree(root_pid), *seen_before)}
    for kill, target in ((os.killpg, root_pid), *((os.kill, pid) for pid in tree)):
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _wait_until_gone(tree, wait_s)


def stop_tree(root_pid: int, signum: int, grace_s: float) -> None:
    """`signum` to the process group of `root_pid`, as a terminal sends Ctrl-C to the group in the
    foreground, so the command can end its own processes; what is still running after `grace_s` (or
    at once on an exception while waiting, such as a second Ctrl-C) is killed with `kill_tree`, also
    processes that the root's exit left without a parent."""
    tree = process_tree(root_pid)
    try:
        os.killpg(root_pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        _wait_until_gone({process.pid for process in tree}, grace_s)
    finally:
        kill_tree(root_pid, seen_before=tree)


def _wait_until_gone(pids: Iterable[int], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while any(is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def is_running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has)."""
    stat = read_stat(pid)
    return stat is not None and stat[1][0] != "Z"

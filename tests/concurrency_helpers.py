"""Commands for checking that runs were side by side or one after another, from what they write."""

import time
from pathlib import Path


def handshake_code(mine: Path, theirs: Path) -> str:
    """Python code that marks `mine` and ends once `theirs` is marked too (after 60 s without: exit 1), so
    two of them succeed only while both run; at its end `mine` holds its start and end times."""
    return (
        f"import pathlib, time\nmine, theirs = pathlib.Path({str(mine)!r}), pathlib.Path({str(theirs)!r})\n"
        "start = time.time()\nmine.write_text('')\n"
        "while not theirs.exists():\n"
        "    time.sleep(0.05)\n"
        "    if time.time() - start > 60: raise SystemExit(1)\n"
        "mine.write_text(f'{start} {time.time()}')"
    )


def timed_code(path: Path) -> str:
    """Python code that writes its start and end times to `path`."""
    return (
        f"import pathlib, time\nstart = time.time()\ntime.sleep(0.2)\n"
        f"pathlib.Path({str(path)!r}).write_text(f'{{start}} {{time.time()}}')"
    )


def interval(path: Path) -> tuple[float, float]:
    """The start and end times a command above wrote."""
    start, end = Path(path).read_text().split()
    return float(start), float(end)


def overlap(first: tuple[float, float], second: tuple[float, float]) -> bool:
    return first[0] < second[1] and second[0] < first[1]


def wait_for(path: Path, timeout_s: float = 30) -> str:
    """What `path` holds, once something is written there."""
    deadline = time.monotonic() + timeout_s
    while not (path.is_file() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} not written"
        time.sleep(0.1)
    return path.read_text()

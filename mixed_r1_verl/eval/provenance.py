"""What produced a run, as summary.json records it: the data files by content, the code, and the
settings that two runs must share for their deltas to measure the models alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mixed_r1_verl.run_config import file_sha256, installed_version
from mixed_r1_verl.settings import changed_entries

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Settings of a run that shape its scores besides the model: a compare warns where two runs differ.
SHARED_SETTINGS = ("data_sha256", "limit", "reward_kwargs", "sampling", "generator", "code")


def setting_text(value) -> str:
    """A setting as a run records it: a local directory by its absolute path, so that runs started from
    other directories compare."""
    return str(Path(value).resolve()) if Path(str(value)).is_dir() else str(value)


def file_identity(path: str | Path) -> dict:
    """A file by its absolute path, size in bytes and sha256."""
    path = Path(path)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def package_version() -> str | None:
    """The package's version; None where its files run without the package's metadata (a checkout on the
    path, not pip-installed)."""
    return installed_version("mixed_r1_verl")


def package_named(package_version: str | None) -> str:
    """The package as a card names what wrote it."""
    return f"mixed_r1_verl {package_version}" if package_version else "mixed_r1_verl (a checkout not pip-installed)"


def code_identity() -> dict:
    """The package's version and, run from a git checkout, its commit and whether the package's files
    differ from it (None outside one)."""
    return {"version": package_version(), **git_state(PACKAGE_DIR)}


def git_state(directory: Path) -> dict:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--", ".") if commit else None
    return {"git_commit": commit, "git_dirty": None if changes is None else bool(changes)}


def shared_settings(run: dict) -> dict:
    """SHARED_SETTINGS of a summary's `run`, the data by content only; a run that does not record one
    (saved generations have no sampling, older runs no data digest) leaves it out. A `limit` recorded as
    None is recorded: every row."""
    files = run.get("data_files")
    settings = {**run, "data_sha256": [entry["sha256"] for entry in files] if files else None}
    return {
        name: settings[name]
        for name in SHARED_SETTINGS
        if settings.get(name) is not None or (name == "limit" and name in run)
    }


def settings_differences(first: dict, second: dict) -> list[tuple[str, object, object]]:
    """(setting, value in the first run, in the second) for each shared setting the two runs both
    record and set differently, a mapping's entries as `setting.entry` (`sampling.max_new_tokens`)."""
    a, b = shared_settings(first.get("run") or {}), shared_settings(second.get("run") or {})
    both = {name: a[name] for name in a.keys() & b.keys()}, {name: b[name] for name in a.keys() & b.keys()}
    return [(key, dotted(both[0], key), dotted(both[1], key)) for key in changed_entries(*both)]


def dotted(settings: dict, key: str):
    """The value of `setting` or `setting.entry` (entry names hold no dot)."""
    name, _, entry = key.partition(".")
    return settings[name].get(entry) if entry else settings[name]

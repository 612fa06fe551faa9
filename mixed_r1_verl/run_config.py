"""The run's config saved beside each checkpoint: what the export's model card reads, and what a resumed run
is compared with.

The project's trainers save the run's resolved config in every checkpoint directory (`global_step_N/`,
GRPO's and SFT's) before verl records it as the latest, with a digest of each training file and the code
and library versions that ran. A run resumed from a checkpoint prints the settings it changes since then,
and the training files written again since.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from mixed_r1_verl.data.records import lookup
from mixed_r1_verl.settings import changed_entries

RUN_CONFIG = "mixed_r1_run.yaml"
TRAIN_FILES = "mixed_r1_train_files.json"
CODE = "mixed_r1_code.json"
# The libraries whose versions shape a run's numbers; None for one not installed.
RECORDED_LIBRARIES = ("verl", "torch", "transformers", "vllm", "ray", "flash-attn", "peft", "tensordict")
# The changed settings a resumed run lists before it says how many more there are.
SHOWN_CHANGES = 20


def write_run_config(config, checkpoint: Path, train_files: dict[str, dict]) -> None:
    """Saves the run's config (an OmegaConf config), resolved, in the checkpoint directory, the digests of
    the training files as the run read them (`train_file_digests`, taken when its datasets loaded), and the
    code and libraries that ran (`running_code`)."""
    from omegaconf import OmegaConf

    for name, text in ((TRAIN_FILES, json.dumps(train_files, indent=2)),
                       (CODE, json.dumps(running_code(), indent=2)),
                       (RUN_CONFIG, OmegaConf.to_yaml(config, resolve=True))):  # fmt: skip
        written = checkpoint / f".{name}.partial"
        written.write_text(text)
        written.replace(checkpoint / name)


@functools.cache
def running_code() -> dict:
    """This package's version and git state (`code_identity`) and the versions of RECORDED_LIBRARIES."""
    from mixed_r1_verl.eval.provenance import code_identity

    libraries = {name: installed_version(name) for name in RECORDED_LIBRARIES}
    return {"mixed_r1_verl": code_identity(), "libraries": libraries}


def installed_version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def train_file_digests(config) -> dict[str, dict]:
    """Each local parquet file of data.train_files by its path: its bytes, rows and sha256, of the whole file
    (a ground truth corrected to another of the same size leaves the footer's statistics as they were)."""
    import pyarrow.parquet as pq
    from omegaconf import OmegaConf

    files = OmegaConf.select(config, "data.train_files", default=None) or []
    digests = {}
    for path in [files] if isinstance(files, str) else list(files):
        if not os.path.isfile(path):
            continue
        rows = pq.ParquetFile(path).metadata.num_rows
        digests[str(path)] = {"bytes": os.path.getsize(path), "rows": rows, "sha256": file_sha256(path)}
    return digests


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as content:
        for block in iter(lambda: content.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_run_config(checkpoint: Path) -> dict | None:
    """The run config saved in a checkpoint directory; None where it has none."""
    saved = checkpoint / RUN_CONFIG
    return yaml.safe_load(saved.read_text()) if saved.is_file() else None


def changed_settings(saved: dict, current: dict) -> list[str]:
    """`key: saved -> current` for every setting that differs (None where a config lacks it), by key."""
    return [f"{key}: {lookup(saved, key)!r} -> {lookup(current, key)!r}" for key in changed_entries(saved, current)]


def resumed_settings_note(checkpoint: Path, config, train_files: dict[str, dict]) -> str | None:
    """What a run resumed from `checkpoint` (with the OmegaConf `config`, its training files read as
    `train_files` says: `train_file_digests`) sets otherwise than the run that saved it; None where nothing
    differs or the checkpoint holds no run config."""
    from omegaconf import OmegaConf

    saved = read_run_config(checkpoint)
    changes = [] if saved is None else changed_settings(saved, OmegaConf.to_container(config, resolve=True))
    notes = []
    if changes:
        more = len(changes) - SHOWN_CHANGES
        notes.append(
            f"{checkpoint.name}: resumed with {len(changes)} setting(s) changed since it was saved "
            f"({checkpoint / RUN_CONFIG} holds the saved ones):\n  "
            + "\n  ".join(changes[:SHOWN_CHANGES])
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    rewritten = rewritten_train_files(checkpoint, train_files)
    if rewritten:
        notes.append(
            f"{checkpoint.name}: resumed on training data written again since it was saved; the data position "
            "it saved (rows read this epoch) is applied to these files' rows:\n  " + "\n  ".join(rewritten)
        )
    return "\n".join(notes) or None


def rewritten_train_files(checkpoint: Path, now: dict[str, dict]) -> list[str]:
    """`path: rows and bytes then -> now` for each training file whose digest now differs from the one saved
    in the checkpoint (none saved: none listed; one saved by an earlier version, of the file's footer: its
    rows and bytes)."""
    saved_file = checkpoint / TRAIN_FILES
    if not saved_file.is_file():
        return []
    saved = json.loads(saved_file.read_text())
    return [
        f"{path}: {then['rows']} rows, {then['bytes']} bytes -> {now[path]['rows']} rows, {now[path]['bytes']} bytes"
        for path, then in saved.items()
        if path in now and any(now[path][key] != then[key] for key in now[path].keys() & then.keys())
    ]

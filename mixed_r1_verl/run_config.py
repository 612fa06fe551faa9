"""The run's config saved beside each checkpoint: what the export's model card reads, and what a resumed run
is compared with.

The project's trainers save the run's resolved config in every checkpoint directory (`global_step_N/`,
GRPO's and SFT's) before verl records it as the latest. A run resumed from a checkpoint prints the settings
it changes since then.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mixed_r1_verl.data.records import lookup
from mixed_r1_verl.settings import changed_entries

RUN_CONFIG = "mixed_r1_run.yaml"
# The changed settings a resumed run lists before it says how many more there are.
SHOWN_CHANGES = 20


def write_run_config(config, checkpoint: Path) -> None:
    """Saves the run's config (an OmegaConf config), resolved, in the checkpoint directory."""
    from omegaconf import OmegaConf

    written = checkpoint / f".{RUN_CONFIG}.partial"
    written.write_text(OmegaConf.to_yaml(config, resolve=True))
    written.replace(checkpoint / RUN_CONFIG)


def read_run_config(checkpoint: Path) -> dict | None:
    """The run config saved in a checkpoint directory; None where it has none."""
    saved = checkpoint / RUN_CONFIG
    return yaml.safe_load(saved.read_text()) if saved.is_file() else None


def changed_settings(saved: dict, current: dict) -> list[str]:
    """`key: saved -> current` for every setting that differs (None where a config lacks it), by key."""
    return [f"{key}: {lookup(saved, key)!r} -> {lookup(current, key)!r}" for key in changed_entries(saved, current)]


def resumed_settings_note(checkpoint: Path, config) -> str | None:
    """What a run resumed from `checkpoint` (with the OmegaConf `config`) sets otherwise than the run that
    saved it; None where nothing differs or the checkpoint holds no run config."""
    from omegaconf import OmegaConf

    saved = read_run_config(checkpoint)
    if saved is None:
        return None
    changes = changed_settings(saved, OmegaConf.to_container(config, resolve=True))
    if not changes:
        return None
    more = len(changes) - SHOWN_CHANGES
    return (
        f"{checkpoint.name}: resumed with {len(changes)} setting(s) changed since it was saved "
        f"({checkpoint / RUN_CONFIG} holds the saved ones):\n  "
        + "\n  ".join(changes[:SHOWN_CHANGES])
        + (f"\n  ... and {more} more" if more > 0 else "")
    )

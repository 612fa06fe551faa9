"""The run's config saved beside each checkpoint: what the export's model card reads, and what a resumed run
is compared with.

The project's trainers save the run's resolved config in every checkpoint directory (`global_step_N/`,
GRPO's and SFT's) before verl records it as the latest. A run resumed from a checkpoint prints the settings
it changes since then.
"""

from __future__ import annotations

from pathlib import Path

import yaml

RUN_CONFIG = "mixed_r1_run.yaml"
# The changed settings a resumed run lists before it says how many more there are.
SHOWN_CHANGES = 20
# A key one of two configs lacks; shown as "(not set)", apart from any string value.
NOT_SET = object()


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


def setting(run: dict, dotted: str):
    """The value at a dotted key of a run config; None where any part is missing."""
    value = run
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def leaves(config: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as {dotted key: value}; lists are values, and an empty mapping holds none (one that
    gains keys shows as the keys added)."""
    found = {}
    for key, value in config.items():
        if isinstance(value, dict):
            found.update(leaves(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = value
    return found


def changed_settings(saved: dict, current: dict) -> list[str]:
    """`key: saved -> current` for every setting that differs, added or removed included, by key."""
    before, after = leaves(saved), leaves(current)

    def shown(value) -> str:
        return "(not set)" if value is NOT_SET else repr(value)

    return [
        f"{key}: {shown(before.get(key, NOT_SET))} -> {shown(after.get(key, NOT_SET))}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key, NOT_SET) != after.get(key, NOT_SET)
    ]


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

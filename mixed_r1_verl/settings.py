"""`key=value` command lines (verl's convention) for entries whose settings are a dataclass."""

from __future__ import annotations

from typing import TypeVar

from omegaconf import OmegaConf

Settings = TypeVar("Settings")
HELP_FLAGS = ("-h", "--help")


def asks_for_help(argv: list[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


def settings_help(description: str, schema: type) -> str:
    defaults = OmegaConf.to_yaml(OmegaConf.structured(schema))
    return f"{description.rstrip()}\n\nSettings (key=value) and their defaults:\n\n{defaults}"


def parse_settings(schema: type[Settings], argv: list[str]) -> Settings:
    """The dataclass `schema` with `key=value` overrides merged in; an unknown key or a value of the wrong
    type stops with the setting's name."""
    malformed = [arg for arg in argv if "=" not in arg]
    if malformed:
        raise SystemExit(f"expected key=value settings, got {malformed} (see --help)")
    try:
        config = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(argv))
    except Exception as error:  # omegaconf's ValidationError / ConfigKeyError name the key
        raise SystemExit(f"bad setting: {error} (see --help)") from None
    return OmegaConf.to_object(config)

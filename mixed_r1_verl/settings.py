"""`key=value` command lines (verl's convention) for entries whose settings are a dataclass, and the settings
that differ between two nested mappings of them (a generation cache's, two evaluations', a run and its resume)."""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import yaml
from omegaconf import OmegaConf

Settings = TypeVar("Settings")
# Exit statuses every entry shares: a setting or input refused, and a command that needs a CUDA GPU run without one.
EXIT_USAGE = 2
EXIT_NEEDS_GPU = 2
# A training run whose checkpoints already hold its last step.
EXIT_NOTHING_TO_TRAIN = 3
HELP_FLAGS = ("-h", "--help")


def asks_for_help(argv: list[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


def settings_help(description: str, schema: type) -> str:
    defaults = OmegaConf.to_yaml(OmegaConf.structured(schema))
    return f"{description.rstrip()}\n\nSettings (key=value) and their defaults:\n\n{defaults}"


def usage_error(message: str) -> None:
    """Ends the command with `message` and exit code 2: a setting it refuses before anything starts."""
    print(f"{message} (see --help)", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def text_setting_keys(schema: type, prefix: str = "") -> set[str]:
    """The dotted keys of `schema`'s settings typed `str` or `str | None`, its nested dataclasses' included."""
    hints = typing.get_type_hints(schema)
    keys = set()
    for field in dataclasses.fields(schema):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            keys |= text_setting_keys(hint, f"{prefix}{field.name}.")
        elif hint is str or set(typing.get_args(hint)) == {str, type(None)}:
            keys.add(prefix + field.name)
    return keys


NULL_TEXTS = ("", "null", "Null", "NULL", "~")


def text_setting_value(text: str) -> str | None:
    """A text setting's value: `text` as written (`output_dir=0712` is not YAML's octal 458, `out_dir=on` not
    true, `run #1` not `run` with a comment), unquoted where it is quoted (`'Look, then answer.'`), None for
    YAML's nulls."""
    if text in NULL_TEXTS:
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        return value if isinstance(value, str) else text
    return text


def parse_settings(schema: type[Settings], argv: list[str]) -> Settings:
    """The dataclass `schema` with `key=value` overrides merged in, values read as YAML except those of
    text settings (`text_setting_value`); an unknown key, a value of the wrong type or a required setting
    left out (default `???`) stops with the setting's name."""
    malformed = [arg for arg in argv if "=" not in arg]
    if malformed:
        raise SystemExit(f"expected key=value settings, got {malformed} (see --help)")
    text_keys = text_setting_keys(schema)
    overrides = OmegaConf.create()
    try:
        for arg in argv:
            key, text = arg.split("=", 1)
            if key in text_keys:
                OmegaConf.update(overrides, key, text_setting_value(text), merge=True)
            else:
                overrides.merge_with_dotlist([arg])
        config = OmegaConf.merge(OmegaConf.structured(schema), overrides)
    except Exception as error:  # omegaconf's ValidationError / ConfigKeyError name the key
        raise SystemExit(f"bad setting: {error} (see --help)") from None
    missing = [key for key in config if OmegaConf.is_missing(config, key)]
    if missing:
        raise SystemExit(f"missing required settings: {', '.join(missing)} (see --help)")
    return OmegaConf.to_object(config)


@contextmanager
def input_errors_end_the_command() -> Iterator[None]:
    """A bad input or setting (ValueError, OSError) ends the command with the error's type and message
    (which name the record or path and the reason; a bare `FileNotFoundError("x.parquet")` says little
    without its type) and exit code 1, without a traceback. MIXED_R1_TRACEBACK=1 keeps the traceback."""
    try:
        yield
    except (ValueError, OSError) as error:
        if os.environ.get("MIXED_R1_TRACEBACK") == "1":
            raise
        raise SystemExit(f"{type(error).__name__}: {error}") from None


def run_settings_cli(description: str, schema: type[Settings], argv: list[str], run: Callable[[Settings], None]) -> None:
    """`--help` prints the description and every setting with its default; otherwise `run` gets the
    settings, and input errors end it as `input_errors_end_the_command` says."""
    if asks_for_help(argv):
        print(settings_help(description, schema))
        return
    settings = parse_settings(schema, argv)
    with input_errors_end_the_command():
        run(settings)


def changed_entries(earlier: dict, now: dict) -> list[str]:
    """The keys whose values differ, a mapping's own keys as `key.name` (`files.chat_template.jinja`)."""
    changed = []
    for key in sorted(earlier.keys() | now.keys()):
        before, after = earlier.get(key), now.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changed += [f"{key}.{name}" for name in changed_entries(before, after)]
        elif before != after:
            changed.append(key)
    return changed

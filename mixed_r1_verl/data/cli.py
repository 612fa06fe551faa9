"""Hydra-style `key=value` command lines for the data tools, with `--help` listing every setting."""

from __future__ import annotations

from typing import Callable, TypeVar

from omegaconf import OmegaConf

REQUIRED = ("input", "image_root", "output_dir")
Config = TypeVar("Config")


def load_config(schema: type[Config], argv: list[str]) -> Config:
    """The dataclass `schema` with its defaults merged with `key=value` overrides (OmegaConf dotlist)."""
    config = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(argv))
    missing = sorted(key for key in REQUIRED if OmegaConf.is_missing(config, key))
    if missing:
        raise SystemExit(f"missing required settings: {', '.join(missing)} (see --help)")
    return OmegaConf.to_object(config)


def run_cli(description: str, schema: type[Config], argv: list[str], run: Callable[[Config], None]) -> None:
    if any(arg in ("-h", "--help") for arg in argv):
        print(description)
        print("Settings (key=value) and their defaults:\n")
        print(OmegaConf.to_yaml(OmegaConf.structured(schema)))
        return
    run(load_config(schema, argv))

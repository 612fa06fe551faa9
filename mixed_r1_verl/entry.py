"""Command lines of the Hydra entries: `python -m <module> recipe=<name> [key=value ...]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

RECIPE_GROUP = "recipe"
PACKAGE_SETTINGS_KEY = "mixed_r1"
EXIT_USAGE = 2


def register_recipe_files(directory: Path) -> list[str]:
    """Make every <directory>/<name>.yaml selectable as `recipe=<name>` (global package, so a recipe
    sets keys at their usual paths). Returns the recipe names."""
    store = ConfigStore.instance()
    paths = sorted(directory.glob("*.yaml"))
    for path in paths:
        store.store(group=RECIPE_GROUP, name=path.stem, node=OmegaConf.load(path), package="_global_")
    return [path.stem for path in paths]


def package_settings(config_file: Path) -> str:
    """The `mixed_r1.*` settings of an entry's config file with their defaults, as YAML ("" if none)."""
    settings = OmegaConf.load(config_file).get(PACKAGE_SETTINGS_KEY)
    return OmegaConf.to_yaml(OmegaConf.create({PACKAGE_SETTINGS_KEY: settings})) if settings else ""


def usage(module: str, recipes: list[str], recipe_place: str, own_settings: str = "") -> str:
    """The command line, the recipes and, when given, this package's settings with their defaults."""
    text = (
        f"usage: python -m {module} recipe=<name> [key=value ...] [--cfg job] [--help]\n"
        f"recipes ({recipe_place}): {', '.join(recipes)}\n"
    )
    if own_settings:
        text += f"\nSettings of this package (key=value) and their defaults:\n\n{own_settings}\n"
    return text + (
        "Every verl key is set the same way; `recipe=<name> --cfg job` prints the merged config with all\n"
        "defaults, `recipe=<name> --help` its groups.\n"
    )


def run_recipe_entry(
    module: str,
    recipe_dir: Path,
    config_dir: Path,
    config_name: str,
    task: Callable[[DictConfig], None],
) -> None:
    """Print the usage (exit 0 for --help, 2 otherwise) unless a recipe is chosen; then run `task`
    on the composed config through Hydra (which handles --cfg job and --help)."""
    recipes = register_recipe_files(recipe_dir)
    if not any(arg.lstrip("+").startswith(f"{RECIPE_GROUP}=") for arg in sys.argv[1:]):
        asked_for_help = bool({"--help", "-h"} & set(sys.argv[1:]))
        place = f"{recipe_dir.relative_to(config_dir.parent)}/"
        own_settings = package_settings(config_dir / f"{config_name}.yaml")
        print(usage(module, recipes, place, own_settings), file=sys.stdout if asked_for_help else sys.stderr, end="")
        sys.exit(0 if asked_for_help else EXIT_USAGE)
    hydra.main(config_path=str(config_dir), config_name=config_name, version_base=None)(task)()

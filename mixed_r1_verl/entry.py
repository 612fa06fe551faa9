"""Command lines of the Hydra entries: `python -m <module> recipe=<name> [key=value ...]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

RECIPE_GROUP = "recipe"
EXIT_USAGE = 2


def register_recipe_files(directory: Path) -> list[str]:
    """Make every <directory>/<name>.yaml selectable as `recipe=<name>` (global package, so a recipe
    sets keys at their usual paths). Returns the recipe names."""
    store = ConfigStore.instance()
    paths = sorted(directory.glob("*.yaml"))
    for path in paths:
        store.store(group=RECIPE_GROUP, name=path.stem, node=OmegaConf.load(path), package="_global_")
    return [path.stem for path in paths]


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
    own_settings: str = "",
) -> None:
    """Print the usage (exit 0 for --help, 2 otherwise) unless a recipe is chosen; then run `task`
    on the composed config through Hydra (which handles --cfg job and --help)."""
    recipes = register_recipe_files(recipe_dir)
    if not any(arg.lstrip("+").startswith(f"{RECIPE_GROUP}=") for arg in sys.argv[1:]):
        asked_for_help = bool({"--help", "-h"} & set(sys.argv[1:]))
        place = f"{recipe_dir.relative_to(config_dir.parent)}/"
        print(usage(module, recipes, place, own_settings), file=sys.stdout if asked_for_help else sys.stderr, end="")
        sys.exit(0 if asked_for_help else EXIT_USAGE)
    hydra.main(config_path=str(config_dir), config_name=config_name, version_base=None)(task)()

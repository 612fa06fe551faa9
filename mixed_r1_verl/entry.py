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


def usage(module: str, recipes: list[str], recipe_place: str) -> str:
    return (
        f"usage: python -m {module} recipe=<name> [verl.key=value ...] [--cfg job] [--help]\n"
        f"recipes ({recipe_place}): {', '.join(recipes)}\n"
        "With a recipe, --help lists the config groups and the merged config; --cfg job prints it.\n"
    )


def run_recipe_entry(
    module: str, recipe_dir: Path, config_dir: Path, config_name: str, task: Callable[[DictConfig], None]
) -> None:
    """Print the usage (exit 0 for --help, 2 otherwise) unless a recipe is chosen; then run `task`
    on the composed config through Hydra (which handles --cfg job and --help)."""
    recipes = register_recipe_files(recipe_dir)
    if not any(arg.lstrip("+").startswith(f"{RECIPE_GROUP}=") for arg in sys.argv[1:]):
        asked_for_help = bool({"--help", "-h"} & set(sys.argv[1:]))
        place = f"{recipe_dir.parent.name}/{recipe_dir.name}/"
        print(usage(module, recipes, place), file=sys.stdout if asked_for_help else sys.stderr, end="")
        sys.exit(0 if asked_for_help else EXIT_USAGE)
    hydra.main(config_path=str(config_dir), config_name=config_name, version_base=None)(task)()

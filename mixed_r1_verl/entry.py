"""Command lines of the Hydra entries: `python -m <module> recipe=<name> [key=value ...]`."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Callable

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from mixed_r1_verl.settings import EXIT_USAGE

RECIPE_GROUP = "recipe"
PACKAGE_SETTINGS_KEY = "mixed_r1"
CHECKPOINT_DIR_KEY = "trainer.default_local_dir"
# Hydra's options that take a value (hydra._internal.utils.get_args_parser); --info takes one of its topics
# only where one follows.
HYDRA_OPTIONS_WITH_A_VALUE = {
    "--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
    "--experimental-rerun",
}  # fmt: skip
HYDRA_INFO_OPTIONS = {"--info", "-i"}
HYDRA_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
HYDRA_LONG_OPTIONS = (
    "--cfg", "--config-dir", "--config-name", "--config-path", "--experimental-rerun", "--help", "--hydra-help",
    "--info", "--multirun", "--package", "--resolve", "--run", "--shell-completion", "--version",
)  # fmt: skip


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


def config_switches(config_file: Path) -> list[str]:
    """The config groups besides the recipe that an entry's config file selects by default, each as
    `group=default|other options` (`filtering=off|on`)."""
    switches = []
    for entry in OmegaConf.load(config_file).get("defaults") or []:
        if not OmegaConf.is_dict(entry):
            continue
        for group in entry:
            if group != RECIPE_GROUP:
                default = entry[group]
                others = sorted(path.stem for path in (config_file.parent / group).glob("*.yaml") if path.stem != default)
                switches.append(f"{group}={'|'.join([default, *others])}")
    return switches


def usage(
    module: str, recipes: list[str], recipe_place: str, own_settings: str = "", switches: list[str] = ()
) -> str:
    """The command line, the recipes, the other config groups and, when given, this package's settings
    with their defaults."""
    text = (
        f"usage: python -m {module} recipe=<name> [key=value ...] [--cfg job] [--help]\n"
        f"recipes ({recipe_place}): {', '.join(recipes)}\n"
    )
    if switches:
        text += f"switches (default first): {', '.join(switches)}\n"
    if own_settings:
        text += f"\nSettings of this package (key=value) and their defaults:\n\n{own_settings}\n"
    return text + (
        "Every verl key is set the same way; `recipe=<name> --cfg job` prints the merged config with all\n"
        "defaults, `recipe=<name> --help` its groups.\n"
    )


def hydra_option_name(arg: str) -> str:
    """The Hydra option `arg` gives, without its `=value`; a long option abbreviated (`--cf` for `--cfg`, which
    Hydra's parser takes where the abbreviation names one option) is written out."""
    name = arg.split("=", 1)[0]
    if name.startswith("--") and name not in HYDRA_LONG_OPTIONS:
        matches = [option for option in HYDRA_LONG_OPTIONS if option.startswith(name)]
        if len(matches) == 1:
            return matches[0]
    return name


def hydra_options_last(argv: list[str]) -> list[str]:
    """The command line with Hydra's options (each with its value) after the overrides, both in their order:
    Hydra's parser takes the overrides only as one unbroken run, so in `a=1 --cfg job b=2` it would not
    recognize b=2, and an `--info` before an override would take the override for its topic."""
    overrides, options = [], []
    position = 0
    while position < len(argv):
        arg = argv[position]
        position += 1
        if not arg.startswith("-"):  # an override never starts with "-"
            overrides.append(arg)
            continue
        options.append(arg)
        name = hydra_option_name(arg)
        follows = argv[position] if position < len(argv) and "=" not in arg else None
        if follows is not None and (
            name in HYDRA_OPTIONS_WITH_A_VALUE or (name in HYDRA_INFO_OPTIONS and follows in HYDRA_INFO_TOPICS)
        ):
            options.append(follows)
            position += 1
    return overrides + options


def run_recipe_entry(
    module: str,
    recipe_dir: Path,
    config_dir: Path,
    config_name: str,
    task: Callable[[DictConfig], None],
) -> None:
    """Print the usage (exit 0 for --help, 2 otherwise) unless a recipe is chosen; then run `task`
    on the composed config through Hydra (which handles --cfg job and --help). Hydra's options may come
    between the overrides, as the launchers pass the user's after their own."""
    sys.argv[1:] = hydra_options_last(sys.argv[1:])
    recipes = register_recipe_files(recipe_dir)
    if not any(arg.lstrip("+").startswith(f"{RECIPE_GROUP}=") for arg in sys.argv[1:]):
        asked_for_help = bool({"--help", "-h"} & set(sys.argv[1:]))
        place = f"{recipe_dir.relative_to(os.path.commonpath([recipe_dir, config_dir]))}/"
        config_file = config_dir / f"{config_name}.yaml"
        text = usage(module, recipes, place, package_settings(config_file), config_switches(config_file))
        print(text, file=sys.stdout if asked_for_help else sys.stderr, end="")
        sys.exit(0 if asked_for_help else EXIT_USAGE)

    def checked_task(config: DictConfig) -> None:
        exit_if_sweep_jobs_share_a_checkpoint_dir(config_name, sys.argv[1:])
        task(config)

    hydra.main(config_path=str(config_dir), config_name=config_name, version_base=None)(checked_task)()


def sweep_jobs(argv: list[str], config_loader=None) -> list[list[str]] | None:
    """The overrides of each job a `-m` command line sweeps over (`key=a,b`, `range(...)`, `choice(...)`, and
    with Hydra's config loader the `glob(...)` of a config group), as Hydra's basic sweeper combines them;
    None when one cannot be expanded here (a `glob` without the loader)."""
    overrides = [arg for arg in argv if not arg.startswith("-") and ("=" in arg or arg.startswith("~"))]
    choices = []
    for override in OverridesParser.create(config_loader=config_loader).parse_overrides(overrides):
        if not override.is_sweep_override():
            choices.append([override.input_line])
            continue
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # a glob without Hydra's config loader
            return None
        choices.append([f"{override.get_key_element()}={value}" for value in values])
    return [list(job) for job in itertools.product(*choices)]


def sweep_jobs_sharing(jobs: list[list[str]], checkpoint_dirs: list[str]) -> dict[str, list[list[str]]]:
    """The checkpoint directories that more than one job would train into, with those jobs' swept settings."""
    fixed = set.intersection(*(set(job) for job in jobs))
    by_dir: dict[str, list[list[str]]] = {}
    for job, directory in zip(jobs, checkpoint_dirs, strict=True):
        by_dir.setdefault(os.path.abspath(directory), []).append([arg for arg in job if arg not in fixed])
    return {directory: swept for directory, swept in by_dir.items() if len(swept) > 1}


def exit_if_sweep_jobs_share_a_checkpoint_dir(config_name: str, argv: list[str]) -> None:
    """A `-m` sweep runs its jobs one after another; jobs that would train into one checkpoint directory
    would resume each other's checkpoints. Checked once, before the first job trains."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or HydraConfig.get().job.num:
        return
    jobs = sweep_jobs(argv, GlobalHydra.instance().config_loader())
    if not jobs or len(jobs) < 2:
        return
    shared = sweep_jobs_sharing(jobs, [job_checkpoint_dir(config_name, job, num) for num, job in enumerate(jobs)])
    if not shared:
        return
    directory, swept = next(iter(shared.items()))
    jobs_text = "; ".join(" ".join(job) for job in swept)
    swept_key = next(arg.split("=")[0].lstrip("+~") for job in swept for arg in job)
    # A config group's choice is no config key: Hydra names it `hydra:runtime.choices.<group>`.
    value = f"hydra:runtime.choices.{swept_key}" if swept_key in HydraConfig.get().runtime.choices else swept_key
    print(
        f"-m: the sweep's jobs ({jobs_text}) would all train into {CHECKPOINT_DIR_KEY}={directory}, each "
        f"resuming the one before. Give every job its own run name and directory (and so its own metrics "
        f"log), for example 'trainer.experiment_name=run_${{{value}}}' "
        f"'{CHECKPOINT_DIR_KEY}=checkpoints/run_${{{value}}}' (quoted, so the shell keeps the ${{}}).\n",
        file=sys.stderr,
        end="",
    )
    sys.exit(EXIT_USAGE)


def job_checkpoint_dir(config_name: str, job: list[str], num: int) -> str:
    """The checkpoint directory the sweep's job number `num` would train into, its `${hydra:...}` read from
    the job's own Hydra config (its group choices, `job.num` and output directory), as Hydra's basic launcher
    sets it when it runs the job."""
    running = OmegaConf.create({"hydra": HydraConfig.get()})
    composed = hydra.compose(config_name, overrides=job, return_hydra_config=True)
    with open_dict(composed.hydra.job), open_dict(composed.hydra.runtime):
        composed.hydra.job.id = num
        composed.hydra.job.num = num
        sweep = composed.hydra.sweep
        composed.hydra.runtime.output_dir = os.path.abspath(os.path.join(str(sweep.dir), str(sweep.subdir)))
    HydraConfig.instance().set_config(composed)
    try:
        return str(OmegaConf.select(composed, CHECKPOINT_DIR_KEY))
    finally:
        HydraConfig.instance().set_config(running)

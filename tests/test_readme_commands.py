"""Every command the README shows for this package takes the settings it is shown with: training and SFT
commands compose with Hydra on verl's config, the other entries parse into their settings, and lines of
bare overrides compose onto the smoke recipe. A setting renamed, or a `+` left out, would otherwise
first fail on a user's GPU node. `<...>` placeholders stand for any value."""

import re
import shlex
from pathlib import Path

import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from test_sft import compose_sft
from test_train_config import compose_recipe

from mixed_r1_verl.data.engine import EngineConfig
from mixed_r1_verl.data.prepare import PrepareConfig
from mixed_r1_verl.entry import sweep_jobs
from mixed_r1_verl.eval.cli import EvalSettings
from mixed_r1_verl.export import ExportConfig
from mixed_r1_verl.learn import LearnConfig
from mixed_r1_verl.main import filtering_setting_errors, reward_setting_errors
from mixed_r1_verl.settings import parse_settings

README = Path(__file__).resolve().parent.parent / "README.md"
SUBCOMMAND_MODULE = {
    "train": "main", "sft": "sft", "prepare": "data.prepare", "engine": "data.engine", "eval": "eval",
    "export": "export", "learn": "learn",
}  # fmt: skip
# `python -m <module>` or `mixed-r1 <subcommand>`, and the words after it.
COMMAND = re.compile(
    rf"(?:python -m mixed_r1_verl\.([\w.]+)|mixed-r1 ({'|'.join(SUBCOMMAND_MODULE)})\b)((?: +[^ |`]+)*)"
)
SETTINGS = {
    "data.prepare": PrepareConfig, "data.engine": EngineConfig, "eval": EvalSettings, "export": ExportConfig,
    "learn": LearnConfig,
}  # fmt: skip
OVERRIDE = re.compile(r"\+?[A-Za-z_]\w*(?:\.\w+)+=\S+")
PLACEHOLDER = re.compile(r"<[^<>\n]+>")
HYDRA_FLAGS = ("--cfg", "job", "--help", "-m")


def code_lines() -> list[str]:
    """The README's indented code lines, continuations joined and end-of-line comments removed."""
    lines, joined = [], ""
    for line in README.read_text().splitlines():
        if not line.startswith("    ") or line.lstrip().startswith("|"):
            joined = ""
            continue
        text = line.strip()
        joined += text.removesuffix("\\") + " "
        if not text.endswith("\\"):
            lines.append(re.split(r"\s#\s", joined)[0].strip())
            joined = ""
    return lines


def readme_commands() -> list[tuple[str, list[str]]]:
    """(module under mixed_r1_verl, settings) for each command in code lines and in `inline code` that
    gives settings; a training or SFT command also names its recipe (else it is a usage pattern)."""
    texts = code_lines() + re.findall(r"`([^`\n]+)`", README.read_text())
    commands = []
    for text in texts:
        text = PLACEHOLDER.sub("PLACEHOLDER", text)
        for match in COMMAND.finditer(text):
            module = match.group(1) or SUBCOMMAND_MODULE[match.group(2)]
            words = shlex.split(match.group(3).split("&&")[0])
            settings = [word for word in words if word not in HYDRA_FLAGS]
            if settings and (module not in ("main", "sft") or recipe_of(settings) not in (None, "PLACEHOLDER")):
                commands.append((module, settings))
    return commands


def override_lines() -> list[list[str]]:
    """Code lines made of overrides alone (settings to add to a training command)."""
    return [line.split() for line in code_lines() if line and all(OVERRIDE.fullmatch(word) for word in line.split())]


def recipe_of(settings: list[str]) -> str | None:
    return next((word.split("=", 1)[1] for word in settings if word.startswith("recipe=")), None)


def test_the_readme_shows_a_command_for_every_entry():
    entries = {"main", "sft", "data.prepare", "data.engine", "eval", "export", "learn"}
    assert {module for module, _ in readme_commands()} == entries
    assert override_lines(), "no line of bare overrides found"


def command_id(value) -> str:
    return value if isinstance(value, str) else " ".join(value)


@pytest.mark.parametrize(("module", "settings"), readme_commands(), ids=command_id)
def test_each_readme_command_takes_its_settings(module, settings):
    try:
        if module not in ("main", "sft"):
            parse_settings(SETTINGS[module], settings)
            return
        for job in sweep_jobs(settings):  # a `-m` sweep: each of its jobs
            others = [word for word in job if not word.startswith("recipe=")]
            if module == "main":
                config = compose_recipe(recipe_of(job), *others)
                assert filtering_setting_errors(config) == reward_setting_errors(config) == []
            else:
                compose_sft(*others, recipe=recipe_of(job))
    except (HydraException, OmegaConfBaseException, SystemExit) as error:
        pytest.fail(f"README: python -m mixed_r1_verl.{module} {shlex.join(settings)}: {error}")


@pytest.mark.parametrize("overrides", override_lines(), ids=" ".join)
def test_each_readme_line_of_overrides_composes_onto_a_recipe(overrides):
    compose_recipe("smoke", *overrides)

"""`mixed-r1 <subcommand>`: one front door with verl's key=value convention and --help everywhere."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mixed_r1_verl.cli import main

REPO = Path(__file__).resolve().parent.parent


def setup_keyword(name: str):
    call = next(node for node in ast.walk(ast.parse((REPO / "setup.py").read_text())) if isinstance(node, ast.Call))
    return ast.literal_eval(next(kw.value for kw in call.keywords if kw.arg == name))


def test_the_console_script_is_installed_by_setup():
    assert "mixed-r1 = mixed_r1_verl.cli:main" in setup_keyword("entry_points")["console_scripts"]


def test_a_wheel_install_ships_every_config_and_recipe_file(monkeypatch):
    import setuptools  # noqa: F401  (provides distutils)
    from distutils.core import run_setup

    monkeypatch.chdir(REPO)
    shipped = {path for _, files in run_setup("setup.py", stop_after="init").data_files for path in files}
    wanted = {str(path.relative_to(REPO)) for top in ("conf", "recipes") for path in (REPO / top).rglob("*.yaml")}
    assert wanted <= shipped, f"not shipped in a wheel: {sorted(wanted - shipped)}"


def test_the_gpu_extra_holds_no_source_only_package():
    # flash-attn ships as an sdist that pip cannot build in its isolated environment (no torch there).
    gpu = setup_keyword("extras_require")["gpu"]
    assert "vllm==0.24.0" in gpu and not any(requirement.startswith("flash") for requirement in gpu)


def exit_code(argv: list[str]):
    """main's return value, or the code of the SystemExit the entry (Hydra's, argparse-like) raised."""
    try:
        return main(argv)
    except SystemExit as stopped:
        return stopped.code


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert all(f"  {name} " in printed for name in ("train", "sft", "prepare", "engine", "eval", "export", "learn", "tasks"))
    assert main([]) == 2 and main(["fly"]) == 2
    assert "unknown subcommand 'fly'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("subcommand", "setting"),
    [("train", "cluster_wait_s: 300"), ("prepare", "output_dir:"), ("engine", "output_dir:"), ("eval", "max_new_tokens: 1024"),
     ("export", "checkpoint: ???")],
)
def test_each_subcommand_lists_its_settings_and_defaults(subcommand, setting, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert exit_code([subcommand, "--help"]) in (0, None)
    assert setting in capsys.readouterr().out


@pytest.mark.parametrize(("subcommand", "printed"), [
    ("sft", "recipes (recipes/sft/): internvl3_8b, learn, qwen25vl_3b, qwen25vl_7b, qwen3vl_8b\nswitches (default first): lora=off|on\n"),
    ("learn", "dry_run:"),
])
def test_sft_and_learn_run_their_entries(subcommand, printed, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert exit_code([subcommand, "--help"]) in (0, None)
    assert printed in capsys.readouterr().out


def test_train_takes_verl_key_value_settings_like_python_m():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.cli", "train", "recipe=qwen25vl_7b", "actor_rollout_ref.rollout.n=12",
         "--cfg", "job"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["actor_rollout_ref"]["rollout"]["n"] == 12

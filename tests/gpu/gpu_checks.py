"""Names and assertions shared by the GPU acceptance tests."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest

from mixed_r1_verl.eval.scoring import ALL
from mixed_r1_verl.models.tiny_qwen25vl import TEST_SIZE_VLLM_GPU_MEMORY_UTILIZATION, TEST_SIZE_VLLM_KV_CACHE_BYTES
from mixed_r1_verl.run_logs import DEADLINE_ENV, LoggedRun, project_command

TASKS = ("chart", "grounding", "matching", "open_ended")
RESUME_FROM_STEP = 3


def skip_if_out_of_time(run: LoggedRun) -> None:
    """A run stopped at the verification deadline is not a result: the test is skipped, and a rerun
    with more time runs it again."""
    if run.out_of_time:
        step = run.last_step()
        progress = "no training step logged" if step is None else f"last step logged: {step}"
        pytest.skip(
            f"{run.name} did not finish before ${DEADLINE_ENV} ({progress}); rerun with more time ({run.log_path})"
        )


def assert_succeeded(run: LoggedRun) -> None:
    skip_if_out_of_time(run)
    assert run.returncode == 0, f"{run.name} exited {run.returncode}; end of {run.log_path}:\n{run.log_tail()}"


def output_lines(run: LoggedRun) -> list[str]:
    """The run's output, without the command line `run_logged` writes first."""
    return run.log_text().splitlines()[1:]


def per_task_table(stdout: str) -> dict[str, dict[str, str]]:
    """The rows of the "### Per task" markdown table the evaluator prints: {task: {column: cell}}."""
    lines = stdout.split("### Per task", 1)[1].strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def val_rows_per_task(val_parquet) -> Counter:
    return Counter(info["task"] for info in pq.read_table(val_parquet, columns=["extra_info"]).column(0).to_pylist())


def evaluate_on_the_smoke_val_set_with_vllm(name: str, gpu_out, model, *settings: str) -> LoggedRun:
    """`mixed_r1_verl.eval` with vLLM generation of `model` on the smoke run's val set, into `<gpu_out>/<name>`;
    checked to succeed and to score every val row of every task without a reward error."""
    val_parquet = gpu_out / "smoke" / "data" / "val.parquet"
    evaluation = project_command(
        name, gpu_out, "mixed_r1_verl.eval", f"data={val_parquet}", f"model={model}",
        "backend=vllm", "max_new_tokens=64", "vllm_kwargs.enforce_eager=true",
        f"vllm_kwargs.kv_cache_memory_bytes={TEST_SIZE_VLLM_KV_CACHE_BYTES}",
        f"vllm_kwargs.gpu_memory_utilization={TEST_SIZE_VLLM_GPU_MEMORY_UTILIZATION}",
        f"out_dir={gpu_out / name}", *settings,
    )  # fmt: skip
    assert_succeeded(evaluation)
    assert_every_val_row_of_every_task_scored(evaluation.log_text(), val_parquet)
    return evaluation


def assert_every_val_row_of_every_task_scored(printed: str, val_parquet) -> None:
    """The evaluator's per-task table (`printed`) holds the four tasks, each with n its val rows and no reward
    error, and the row of all records."""
    table = per_task_table(printed)
    expected = val_rows_per_task(val_parquet)
    tasks = set(table) - {ALL}
    assert tasks == set(TASKS) == set(expected), f"table tasks {sorted(tasks)}, val tasks {sorted(expected)}"
    assert float(table[ALL]["n"]) == sum(expected.values()), f"all: n {table[ALL]['n']}, {sum(expected.values())} rows"
    for task in TASKS:
        assert float(table[task]["n"]) == expected[task], f"{task}: n {table[task]['n']} != {expected[task]} val rows"
        assert float(table[task]["errors"]) == 0, f"{task}: {table[task]['errors']} reward errors"

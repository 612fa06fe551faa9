"""The data engine's difficulty stage sampling with vLLM from the tiny model (issue check 5)."""

import json
import shutil

import pytest
from gpu_checks import TASKS, assert_succeeded

from mixed_r1_verl.data.synthetic import write_synthetic_dataset
from mixed_r1_verl.models.tiny_qwen25vl import (
    TEST_SIZE_VLLM_GPU_MEMORY_UTILIZATION,
    TEST_SIZE_VLLM_KV_CACHE_BYTES,
    build_tiny_qwen25vl,
)
from mixed_r1_verl.run_logs import project_command, run_succeeded

ROWS_PER_TASK = 6
K = 4
CACHE_FILE = "difficulty_cache.jsonl"


@pytest.fixture(scope="module")
def engine_inputs(gpu_out):
    root = gpu_out / "engine"
    model_dir = root / "tiny_qwen25vl"
    if not (model_dir / "config.json").is_file():
        build_tiny_qwen25vl(model_dir)
    jsonl, image_root = write_synthetic_dataset(root / "raw", rows_per_task=ROWS_PER_TASK, seed=5)
    return root, model_dir, jsonl, image_root


def engine_command(name, gpu_out, engine_inputs, out_dir):
    root, model_dir, jsonl, image_root = engine_inputs
    return project_command(
        name, gpu_out, "mixed_r1_verl.data.engine",
        f"input={jsonl}", f"image_root={image_root}", f"output_dir={out_dir}",
        "model_family=qwen2_5_vl", f"model_path={model_dir}",
        "difficulty.backend=vllm", f"difficulty.model_path={model_dir}", f"difficulty.k={K}",
        "difficulty.max_new_tokens=64", f"difficulty.vllm_kwargs.kv_cache_memory_bytes={TEST_SIZE_VLLM_KV_CACHE_BYTES}",
        f"difficulty.vllm_kwargs.gpu_memory_utilization={TEST_SIZE_VLLM_GPU_MEMORY_UTILIZATION}",
        "difficulty.vllm_kwargs.enforce_eager=true", "progress=false",
    )  # fmt: skip


def difficulty_stage(report: dict) -> dict:
    return next(stage for stage in report["stages"] if stage["name"] == "difficulty")


def test_difficulty_stage_with_vllm_writes_cache_histogram_and_report(gpu_out, engine_inputs):
    out = engine_inputs[0] / "out"
    assert_succeeded(engine_command("engine_vllm", gpu_out, engine_inputs, out))
    report = json.loads((out / "report.json").read_text())
    stage = difficulty_stage(report)
    prompts = sum(stage["rows_in"].values())
    assert set(stage["rows_in"]) == set(TASKS) and prompts > 0
    assert stage["details"]["backend"] == "vllm" and stage["details"]["k"] == K
    assert stage["details"]["sampled_prompts"] + stage["details"]["cached_prompts"] == prompts
    cache = [json.loads(line) for line in (out / CACHE_FILE).read_text().splitlines()]
    assert len(cache) == prompts and all(len(entry["responses"]) == K for entry in cache)
    histogram = report["pass_rate_histogram"]
    assert set(histogram) == set(TASKS)
    for task in TASKS:
        assert sum(histogram[task].values()) == stage["rows_in"][task]
        assert all(0 <= float(rate) <= 1 for rate in histogram[task])
    assert (out / "pass_rate_hist.png").stat().st_size > 0
    assert {task: summary["prompts"] for task, summary in report["sampled_rewards"].items()} == stage["rows_in"]


def test_rerun_takes_every_response_from_the_cache(gpu_out, engine_inputs):
    # In an output_dir of its own, seeded with the first run's cache: a run removes the earlier run's
    # report first, which the first test reads whenever that run is reused.
    first, rerun = engine_inputs[0] / "out", engine_inputs[0] / "out_rerun"
    assert_succeeded(engine_command("engine_vllm", gpu_out, engine_inputs, first))
    if not run_succeeded("engine_vllm_rerun", gpu_out / "logs"):
        rerun.mkdir(exist_ok=True)
        shutil.copyfile(first / CACHE_FILE, rerun / CACHE_FILE)
    assert_succeeded(engine_command("engine_vllm_rerun", gpu_out, engine_inputs, rerun))
    stage = difficulty_stage(json.loads((rerun / "report.json").read_text()))
    assert stage["details"]["sampled_prompts"] == 0
    assert stage["details"]["cached_prompts"] == sum(stage["rows_in"].values())

"""Figures measured on a GPU node, one piece per command (each within 10 minutes on one H100).
Run the GPU acceptance suite's training file first: `training` compares against its smoke run, and
`eval` uses the smoke model and validation data it built.

    python benchmarks/gpu_figures.py training   # Mixed-Reward vs constant reward: median step times, ratio, peak GPU memory
    python benchmarks/gpu_figures.py eval       # vLLM evaluation: responses/s (tiny smoke model)
    python benchmarks/gpu_figures.py engine     # data engine difficulty stage with vLLM: prompts/s (tiny smoke model)
    python benchmarks/bmas.py --device cuda     # BMAS at Qwen2.5-VL-7B sizes

Outputs and logs go to `$MIXED_R1_GPU_OUT` (default outputs/gpu_checks), shared with the suite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import torch

from mixed_r1_verl.models.tiny_qwen25vl import TEST_SIZE_VLLM_GPU_MEMORY_UTILIZATION, TEST_SIZE_VLLM_KV_CACHE_BYTES
from mixed_r1_verl.run_logs import (
    DEADLINE_ENV,
    EXIT_OUT_OF_TIME,
    SMOKE_RUN,
    LoggedRun,
    checks_out_dir,
    median_step_time,
    metric_series,
    metrics_log_path,
    project_command,
    read_resumed_metrics_log,
    resumed_run_starts,
    runs_beside,
    smoke_training,
)

WARMUP_STEPS = 2
CONSTANT_REWARD = '''def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return 0.0
'''


def succeeded(run: LoggedRun) -> LoggedRun:
    if run.out_of_time:
        print(f"{run.name} did not finish before ${DEADLINE_ENV}: no figure (see {run.log_path})", file=sys.stderr)
        raise SystemExit(EXIT_OUT_OF_TIME)
    if run.returncode != 0:
        raise SystemExit(f"{run.name} exited {run.returncode}; see {run.log_path}:\n{run.log_tail(40)}")
    return run


def print_run(label: str, run: LoggedRun, out: Path) -> float:
    """The run's median step time and peak memory; a run resumed at the deadline is timed over all its
    tries, past the warm-up steps of each, as each start is cold."""
    path = metrics_log_path(out, run.name)
    steps, starts = read_resumed_metrics_log(path), resumed_run_starts(path)
    median = median_step_time(steps, WARMUP_STEPS, starts)
    allocated = metric_series(steps, "perf/max_memory_allocated_gb")
    reserved = metric_series(steps, "perf/max_memory_reserved_gb")
    warm_up = f"{WARMUP_STEPS} warm-up steps"
    if starts != [1]:
        warm_up += f" of each start (a resumed run: started at steps {', '.join(str(start) for start in starts)})"
    measured = "whole run" if starts == [1] else f"its last start, from step {starts[-1]}"
    print(f"{label} ({run.name}): median timing_s/step after {warm_up} {median:.3f} s "
          f"(steps: {', '.join(f'{t:.2f}' for t in metric_series(steps, 'timing_s/step'))})")
    print(f"  peak GPU memory (nvidia-smi, {measured}): {run.peak_gpu_memory_mib} MiB; "
          f"torch max allocated {max(allocated, default=float('nan')):.2f} GiB, "
          f"reserved {max(reserved, default=float('nan')):.2f} GiB (training workers)")
    beside = runs_beside(run.name, out / "logs")
    if beside:
        print(f"  NOT COMPARABLE: it shared the GPU and CPUs with {', '.join(beside)}")
    return median


def training(args) -> None:
    """The suite's smoke run (Mixed-Reward) against the same recipe with verl's naive reward manager
    and a constant custom reward; everything else (trainer mode, sampler, checkpoints) identical. A suite
    run that ran beside others (`scripts/verify_gpu.py --parallel`) is not timed: a Mixed-Reward run of
    the same recipe is made for the figure."""
    out = checks_out_dir()
    mixed = succeeded(smoke_training(SMOKE_RUN, out))
    beside = runs_beside(SMOKE_RUN, out / "logs")
    if beside:
        print(f"{SMOKE_RUN} ran beside {', '.join(beside)}: timing a Mixed-Reward run of its own", flush=True)
        mixed = succeeded(smoke_training("smoke_mixed_timing", out))
    reward_file = out / "constant_reward.py"
    reward_file.write_text(CONSTANT_REWARD)
    constant = succeeded(
        smoke_training(
            "smoke_constant_reward", out, "reward.reward_manager.name=naive",
            f"reward.custom_reward_function.path={reward_file}", "reward.custom_reward_function.name=compute_score",
        )  # fmt: skip
    )
    baseline = print_run("constant reward", constant, out)
    mixed_median = print_run("Mixed-Reward   ", mixed, out)
    print(f"step-time ratio Mixed-Reward / constant: {mixed_median / baseline:.4f} (target <= 1.02)")


def eval_records(count: int):
    from dataclasses import replace

    from mixed_r1_verl.eval.records import load_records

    val = checks_out_dir() / "smoke" / "data" / "val.parquet"
    if not val.is_file():
        raise SystemExit(f"{val} not found: run `pytest -m gpu tests/gpu/test_gpu_training.py` first")
    records = load_records([val])
    if not records:
        raise SystemExit(f"{val} holds no rows")
    return [replace(records[i % len(records)], id=f"{records[i % len(records)].id}#{i}") for i in range(count)]


def evaluation(args) -> None:
    """Responses/s of the evaluator's vLLM generator on the smoke validation prompts (repeated),
    after the engine has started."""
    from mixed_r1_verl.eval.generation import SamplingSettings, build_generator, eval_request

    requests = [eval_request(record) for record in eval_records(args.records)]
    started = time.perf_counter()
    model = str(checks_out_dir() / "smoke" / "tiny_qwen25vl")
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens)
    generator = build_generator(
        "vllm", model, settings, kv_cache_memory_bytes=TEST_SIZE_VLLM_KV_CACHE_BYTES,
        gpu_memory_utilization=TEST_SIZE_VLLM_GPU_MEMORY_UTILIZATION,
    )  # fmt: skip
    start_up = time.perf_counter() - started
    generator.generate(requests[: min(16, len(requests))])
    started = time.perf_counter()
    responses = generator.generate(requests)
    seconds = time.perf_counter() - started
    print(f"vLLM eval generation: {len(responses)} responses (max {args.max_new_tokens} new tokens) in {seconds:.2f} s "
          f"= {len(responses) / seconds:.1f} responses/s (engine start-up {start_up:.1f} s, not counted)")


def engine(args) -> None:
    """Prompts/s of the data engine's difficulty stage with vLLM, from its report (sampling only)."""
    from mixed_r1_verl.data.synthetic import write_synthetic_dataset

    out = checks_out_dir() / "engine_benchmark"
    model_dir = checks_out_dir() / "smoke" / "tiny_qwen25vl"
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"{model_dir} not found: run `pytest -m gpu tests/gpu/test_gpu_training.py` first")
    shutil.rmtree(out / "out", ignore_errors=True)
    jsonl, image_root = write_synthetic_dataset(out / "raw", rows_per_task=args.rows_per_task, seed=1)
    run = project_command(
        "engine_benchmark", checks_out_dir(), "mixed_r1_verl.data.engine",
        f"input={jsonl}", f"image_root={image_root}", f"output_dir={out / 'out'}", f"model_path={model_dir}",
        "difficulty.backend=vllm", f"difficulty.model_path={model_dir}", f"difficulty.k={args.k}",
        f"difficulty.max_new_tokens={args.max_new_tokens}",
        f"difficulty.vllm_kwargs.kv_cache_memory_bytes={TEST_SIZE_VLLM_KV_CACHE_BYTES}",
        f"difficulty.vllm_kwargs.gpu_memory_utilization={TEST_SIZE_VLLM_GPU_MEMORY_UTILIZATION}", "progress=false",
        reuse=False,
    )  # fmt: skip
    succeeded(run)
    report = json.loads((out / "out" / "report.json").read_text())
    details = next(stage for stage in report["stages"] if stage["name"] == "difficulty")["details"]
    print(f"engine difficulty stage (vLLM, k={args.k}, max {args.max_new_tokens} new tokens): "
          f"{details['sampled_prompts']} prompts in {details['sampling_seconds']} s "
          f"= {details['prompts_per_second']} prompts/s")


def missing_requirement() -> str | None:
    """What this machine lacks for the figures (a CUDA GPU, vLLM), or None."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)"
    if find_spec("vllm") is None:
        return "vLLM is not installed"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    figures = parser.add_subparsers(dest="figure", required=True)
    figures.add_parser("training", help=training.__doc__).set_defaults(run=training)
    eval_parser = figures.add_parser("eval", help=evaluation.__doc__)
    eval_parser.add_argument("--records", type=int, default=1024)
    eval_parser.add_argument("--max-new-tokens", type=int, default=256)
    eval_parser.set_defaults(run=evaluation)
    engine_parser = figures.add_parser("engine", help=engine.__doc__)
    engine_parser.add_argument("--rows-per-task", type=int, default=128)
    engine_parser.add_argument("--k", type=int, default=8)
    engine_parser.add_argument("--max-new-tokens", type=int, default=256)
    engine_parser.set_defaults(run=engine)
    args = parser.parse_args()
    missing = missing_requirement()
    if missing:
        raise SystemExit(f"gpu_figures.py {args.figure} measures on a CUDA GPU with vLLM: {missing}")
    args.run(args)


if __name__ == "__main__":
    main()

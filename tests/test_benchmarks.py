"""The benchmarks (benchmarks/) run at a tiny size print their figures: present, finite, positive where they
are rates or sizes, counting what they were asked to, and they leave no file behind, where they ran or in
the temporary directory. Nothing else runs them, so an API they use could otherwise change under them
unnoticed. Those measured on a GPU or with vLLM show their help and, without one, end saying what is missing."""

import json
import math
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from data_helpers import REPO, checkout_env

BENCHMARKS = REPO / "benchmarks"
N = r"(-?\d[\d,]*(?:\.\d+)?)"  # a printed number, thousands perhaps separated by commas
# Each benchmark's tiny run (a script of benchmarks/ and its arguments), the longest first: they start in
# this order, two at a time.
TINY_RUNS = {
    "export_shards": "export_shards.py --tiny --layers 1 --vision-blocks 1 --ranks 1",
    "reward_loop": "reward_loop.py --recipes smoke --workers 1 --repeats 1",
    "filtering_sampler": "filtering_sampler.py --prompts 4 --group-size 2 --response-tokens 8 --repeats 1",
    "convert_45k --embedded --engine": "convert_45k.py --rows 8 --distinct-images 8 --embedded --engine",
    "checkpoint_weights": "checkpoint_weights.py --tiny --layers 2 --rank 2",
    "prompt_length_filter": "prompt_length_filter.py --rows 8 --image-size 64x48",
    "convert_45k": "convert_45k.py --rows 16 --distinct-images 8",
    "eval_scoring": "eval_scoring.py --records 8",
    "difficulty_cache": "difficulty_cache.py --prompts 20 --responses 3 --chars 60",
    "perceptual_dedup": "perceptual_dedup.py --rows 12 4",
    "bmas": "bmas.py --device cpu --vocab 4096 --responses 4 --cpu-sample 2",
    "rule_rewards": "rule_rewards.py --samples 50",
}
RUN_TIMEOUT_S = 300


def run_benchmark(command: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`python benchmarks/<command>` run from an empty directory with a temporary directory of its own, and
    the files either holds after it."""
    # Under /tmp rather than pytest's deeper tmp_path: Ray's sockets go in the temporary directory, and a
    # socket's path has at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        cwd, temp = Path(scratch, "cwd"), Path(scratch, "tmp")
        cwd.mkdir()
        temp.mkdir()
        script, *args = command.split()
        # Importing torch makes its compile cache directory in the temporary directory, on purpose.
        env = checkout_env(TMPDIR=str(temp), TORCHINDUCTOR_CACHE_DIR=str(Path(scratch, "torchinductor")))
        run = subprocess.run(
            [sys.executable, str(BENCHMARKS / script), *args], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
        left = sorted(str(path.relative_to(scratch)) for path in [*cwd.rglob("*"), *temp.rglob("*")])
    return run, left


def checked_runs(session: pytest.Session, module) -> list[str]:
    """The tiny runs whose checks this session collected, in TINY_RUNS' order."""
    callspecs = [getattr(item, "callspec", None) for item in session.items if getattr(item, "module", None) is module]
    names = {callspec.params["run"] for callspec in callspecs if callspec and "run" in callspec.params}
    return [name for name in TINY_RUNS if name in names]


@pytest.fixture(scope="module")
def tiny_runs(request) -> Iterator[dict[str, Future]]:
    """The tiny runs this session checks, all started at once and run two at a time: each is mostly one
    process importing and setting up, and the suite's machines have two cores. Those not started when the
    module ends (pytest -x, Ctrl-C) never start."""
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        runs = checked_runs(request.session, request.module)
        yield {name: pool.submit(run_benchmark, TINY_RUNS[name]) for name in runs}
    finally:
        pool.shutdown(cancel_futures=True)


def figures(pattern: str, output: str) -> list[tuple[float, ...]]:
    """The numbers (`N` groups) of each line of `output` that `pattern` matches."""
    return [
        tuple(float(number.replace(",", "")) for number in match.groups())
        for match in re.finditer(pattern, output, re.MULTILINE)
    ]


def assert_positive(*values: float) -> None:
    assert all(math.isfinite(value) and value > 0 for value in values), values


def assert_not_negative(*values: float) -> None:
    """For times printed rounded, which a tiny run may bring to 0."""
    assert all(math.isfinite(value) and value >= 0 for value in values), values


def check_export_shards(output: str) -> None:
    assert figures(rf"{N} decoder layers and {N} vision blocks, saved by {N} ranks", output) == [(1, 1, 1)]
    timed = figures(rf"\(bfloat16\): {N} s, {N} GB of shards per s$", output)
    assert len(timed) == 2  # the export and verl's model merger
    assert_not_negative(*(value for line in timed for value in line))
    peaks = figures(rf"peak memory: {N} GB \({N} x the shards\)$", output)
    assert len(peaks) == 2
    assert_positive(*(value for line in peaks for value in line))


def check_reward_loop(output: str) -> None:
    pattern = rf"^smoke: {N} prompts x {N} = {N} responses \(mean {N} characters, {N} token ids\), {N} reward workers$"
    [(prompts, group_size, responses, characters, token_ids, workers)] = figures(pattern, output)
    assert prompts * group_size == responses and workers == 1
    assert_positive(characters, token_ids)
    pattern = rf"mixed_r1 {N} s \({N}-{N}\), constant {N} s \({N}-{N}\), difference {N} s \({N} ms a response\)$"
    [(mixed_r1, *_, constant, _, _, difference, per_response_ms)] = figures(pattern, output)
    assert_positive(mixed_r1, constant)
    assert math.isclose(difference, mixed_r1 - constant, abs_tol=0.002)
    assert math.isclose(per_response_ms, difference / responses * 1000, abs_tol=0.1)
    assert "mixed_r1 was no slower" in output or "difference / GPU step" in output


def check_filtering_sampler(output: str) -> None:
    assert figures(rf"^{N} prompts x {N} responses of {N} tokens$", output) == [(4, 2, 8)]
    samples = figures(rf"sample\(\): best +{N} ms +\(refilled {N} prompts\)$", output)
    assert len(samples) == 3  # verl's buffer, the per-task sampler, the same dropping and refilling groups
    assert_not_negative(*(milliseconds for milliseconds, _ in samples))
    assert [refilled > 0 for _, refilled in samples] == [False, False, True]


def check_convert_engine(output: str) -> None:
    summary = json.loads(output)
    assert summary["command"] == "mixed_r1_verl.data.engine" and summary["input"] == "parquet, images embedded"
    assert summary["rows"] == 8 and 0 < summary["rows_written"] <= 8
    check_conversion_figures(summary)


def check_convert(output: str) -> None:
    summary = json.loads(output)
    assert summary["command"] == "mixed_r1_verl.data.prepare"
    assert summary["rows"] == summary["rows_written"] == 16 and summary["rows_rejected"] == 0
    assert summary["distinct_images"] == 8  # 4 rows of each task share 2 images: 1 for val, 1 for train
    check_conversion_figures(summary)


def check_conversion_figures(summary: dict) -> None:
    assert_positive(summary["wall_s"], summary["peak_rss_mb"], summary["mean_image_kb"])
    assert abs(summary["rows_per_s"] - summary["rows"] / summary["wall_s"]) <= 1


def check_checkpoint_weights(output: str) -> None:
    assert figures(rf"^{N} layers of the tiny test model's sizes, rank {N}, float32", output) == [(2, 2)]
    timed = figures(rf": {N} s, {N} s per GB read, {N} s per layer$", output)
    assert len(timed) == 2  # the merge and the export
    for seconds, per_gigabyte, per_layer in timed:
        assert_not_negative(seconds, per_layer)
        assert_positive(per_gigabyte)
    peaks = figures(rf"peak memory of the process: {N} GB \({N} x the copy\)$", output)
    assert len(peaks) == 2
    assert_positive(*(value for line in peaks for value in line))
    assert len(figures(rf"^  {N} GB written$", output)) == 1
    assert "the 7B language model's" not in output  # no estimate for the 7B from other widths


def check_prompt_length_filter(output: str) -> None:
    [(rows, uncounted, counted)] = figures(
        rf"^converter: {N} rows in {N} s without counting, {N} s with prompt lengths counted$", output
    )
    assert rows == 8
    assert_not_negative(uncounted, counted)
    filtered = figures(rf"^length filter, .+: {N} rows in {N} s = {N} rows/s$", output)
    assert len(filtered) == 2  # rows measured, rows with the converter's counts
    assert filtered[0][0] == filtered[1][0] and 0 < filtered[0][0] <= rows
    for _, seconds, rate in filtered:
        assert_not_negative(seconds)
        assert_positive(rate)


def check_eval_scoring(output: str) -> None:
    assert figures(rf"^{N} records \(1/4 per task", output) == [(8,)]
    [(appended, reloaded)] = figures(rf"^cache append: +{N} responses/s +cache reload: +{N} responses/s$", output)
    [(scored, seconds)] = figures(rf"^score \+ summarize: +{N} responses/s \({N} s\)$", output)
    assert_positive(appended, reloaded, scored)
    assert_not_negative(seconds)


def check_difficulty_cache(output: str) -> None:
    [(prompts, responses, megabytes)] = figures(rf"^cache: {N} prompts x {N} responses, {N} MB$", output)
    assert (prompts, responses) == (20, 3)
    assert_positive(megabytes)
    [(opened, cached)] = figures(rf"^open: {N} s \({N} prompts cached\)$", output)
    [(read_back, read)] = figures(rf"^read back: {N} s \({N} responses\)$", output)
    assert (cached, read) == (20, 60)
    assert_not_negative(opened, read_back)
    [(before, after)] = figures(rf"^peak RSS: {N} MB before the rerun, {N} MB after$", output)
    assert_positive(before)
    assert after >= before


def check_bmas(output: str) -> None:
    [(vocab, dim, gibibytes)] = figures(rf"^table {N} x {N} bf16 = {N} GiB$", output)
    assert (vocab, dim) == (4096, 3584)
    assert_positive(gibibytes)
    pattern = rf"^CPU, one core, (?:uniform|zipf) tokens: {N} responses/s -> {N} responses on {N} workers: {N} s$"
    rates = figures(pattern, output)
    assert len(rates) == 2
    for per_core, responses, workers, seconds in rates:
        assert (responses, workers) == (4, 8)
        assert_positive(per_core)
        assert_not_negative(seconds)


def check_rule_rewards(output: str) -> None:
    pattern = rf"^rule rewards: {N} samples, mean {N} chars, {N} s, {N} samples/s on one core$"
    [(samples, characters, seconds, rate)] = figures(pattern, output)
    assert samples == 50
    assert_positive(characters, rate)
    assert_not_negative(seconds)
    pathological = figures(rf"^pathological .+ \({N} chars\): {N} ms for all tasks$", output)
    assert len(pathological) == 10
    assert_not_negative(*(value for line in pathological for value in line))


def check_perceptual_dedup(output: str) -> None:
    sizes = figures(rf"^perceptual dedup, one question: {N} rows, {N} kept, {N} s, {N} rows/s$", output)
    assert [(rows, kept) for rows, kept, _, _ in sizes] == [(12, 12), (4, 4)]  # distinct images: none dropped
    for _, _, seconds, rate in sizes:
        assert_not_negative(seconds)
        assert_positive(rate)


FIGURE_CHECKS = {
    "export_shards": check_export_shards,
    "reward_loop": check_reward_loop,
    "filtering_sampler": check_filtering_sampler,
    "convert_45k --embedded --engine": check_convert_engine,
    "checkpoint_weights": check_checkpoint_weights,
    "prompt_length_filter": check_prompt_length_filter,
    "convert_45k": check_convert,
    "eval_scoring": check_eval_scoring,
    "difficulty_cache": check_difficulty_cache,
    "perceptual_dedup": check_perceptual_dedup,
    "bmas": check_bmas,
    "rule_rewards": check_rule_rewards,
}


def assert_clean_finish(run: subprocess.CompletedProcess, left: list[str]) -> None:
    assert run.returncode == 0, run.stderr[-4000:]
    assert not left, f"files left behind: {left}"


@pytest.mark.parametrize("run", TINY_RUNS)
def test_tiny_run_prints_plausible_figures(run, tiny_runs):
    completed, left = tiny_runs[run].result()
    assert_clean_finish(completed, left)
    FIGURE_CHECKS[run](completed.stdout)


@pytest.mark.parametrize("script", ["gpu_figures.py", "vllm_kv_pool.py"])
def test_gpu_or_vllm_benchmark_shows_its_help(script):
    run, left = run_benchmark(f"{script} --help")
    assert_clean_finish(run, left)
    assert run.stdout.startswith("usage:")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a machine without a CUDA GPU")
@pytest.mark.parametrize("command", ["gpu_figures.py training", "bmas.py --device cuda"])
def test_gpu_benchmark_without_a_gpu_says_so(command):
    run, left = run_benchmark(command)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-4000:]
    assert "no CUDA GPU" in run.stderr
    assert not left


@pytest.mark.skipif(find_spec("vllm") is not None, reason="checks the behaviour without vLLM")
def test_vllm_kv_pool_without_vllm_says_so():
    run, left = run_benchmark("vllm_kv_pool.py")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-4000:]
    assert "install vLLM" in run.stderr
    assert not left


@pytest.mark.skipif(find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_kv_pool_prints_plausible_figures():
    run, left = run_benchmark("vllm_kv_pool.py --gpu-memory-gib 1 --utilizations 0.1")
    assert_clean_finish(run, left)
    pools = figures(rf": {N} blocks, built in {N} s, prefix-cache reset {N} s$", run.stdout)
    assert len(pools) == 2  # the smoke recipe's KV budget, then the one utilization asked for
    for blocks, built, reset in pools:
        assert_positive(blocks)
        assert_not_negative(built, reset)

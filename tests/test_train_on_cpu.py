"""The GRPO training entry end to end on CPU: `python -m mixed_r1_verl.main recipe=smoke` through verl's V1
trainer, FSDP2 workers, agent loop, reward loop, TransferQueue and checkpoints, with the project's
dataset, reward manager, trainer mode, agent loop and filtering; the rollout generates with transformers
in place of vLLM (tests/verl_on_cpu.py). The vLLM rollout itself is checked by the GPU suite."""

import json
import math
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

from cpu_rollout_inputs import rollout_model_inputs
from data_helpers import CPU_GRPO_SETTINGS, card_parts, checkout_env, convert_synthetic, read_jsonl, run_module, run_on_cpu
from length_checks import assert_task_lengths_add_up_to_the_batchs
from task_plugins import counting_records, write_counting_plugin, write_vqa_plugin
from mixed_r1_verl.data.model_files import image_processor_settings
from mixed_r1_verl.data.prepare import PrepareConfig, prepare
from mixed_r1_verl.data.synthetic import TASKS, write_synthetic_dataset
from mixed_r1_verl.eval.generation import SamplingSettings, TransformersGenerator, eval_request, model_images
from mixed_r1_verl.eval.records import load_records
from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl
from mixed_r1_verl.run_logs import non_finite, read_metrics_log, task_metrics
from mixed_r1_verl.verl_adapter.agent_loop import end_at_placeholder_tokens
from mixed_r1_verl.verl_adapter.stop_by import EARLY_END_FILE

PROMPTS_PER_STEP, ROLLOUT_N = 8, 4  # recipes/smoke.yaml
RESPONSE_LENGTH = 32  # every run's data.max_response_length here
# The overlong penalty over the whole response: -length / RESPONSE_LENGTH for every response.
OVERLONG_OVER_ALL = [
    f"reward.reward_kwargs.overlong_buffer_cfg.{key}={value}"
    for key, value in {"enable": "true", "len": RESPONSE_LENGTH, "log": "true"}.items()
]
FIRST_RUN_STEPS = 2
RESUMED_PLANNED_LAST_STEP, STOP_BY_AHEAD_S = 6, 3600


def grpo_on_cpu(work_dir, steps, *settings, recipe="smoke", sweep=False, metrics_log=None, python_path=()):
    """The smoke recipe (or `recipe`) for `steps` steps, a `-m` sweep of `settings` with `sweep`; verl's file
    logger writes `work_dir/metrics.jsonl`, or as `metrics_log` (variable=value) says. `python_path`: more
    directories on the path of the run and its Ray workers."""
    settings = [
        *(["-m"] if sweep else []), f"recipe={recipe}", *CPU_GRPO_SETTINGS,
        f"data.max_response_length={RESPONSE_LENGTH}", f"trainer.total_training_steps={steps}",
        *settings,
    ]  # fmt: skip
    metrics_log = metrics_log or {"VERL_FILE_LOGGER_PATH": str(work_dir / "metrics.jsonl")}
    smoke_dir = str(work_dir / "smoke")
    run = run_on_cpu("grpo", work_dir, settings, 1200, python_path, MIXED_R1_SMOKE_DIR=smoke_dir, **metrics_log)
    log = run.stdout + run.stderr
    (work_dir / f"train_{steps}_steps.log").write_text(log)
    assert run.returncode == 0, log[-8000:]
    # No loader process outlives training to be killed with the trainer's actor.
    assert "DataLoader worker" not in log, log[log.index("DataLoader worker") - 2000 :][:4000]
    return log


def timed_grpo_on_cpu(work_dir, steps, **options):
    started = time.time()
    log = grpo_on_cpu(work_dir, steps, **options)
    return log, (started, time.time())


@pytest.fixture(scope="module")
def side_by_side_runs(tmp_path_factory):
    """The smoke recipe (2 steps) and one step on a tiny InternVL (recipes/smoke_internvl.yaml), started
    together as `scripts/verify_gpu.py --parallel` starts training runs: {name: (work_dir, future of
    (log, (start, end)))}."""
    pool = ThreadPoolExecutor(max_workers=2)
    smoke_dir, internvl_dir = tmp_path_factory.mktemp("grpo_on_cpu"), tmp_path_factory.mktemp("grpo_internvl_on_cpu")
    runs = {
        "smoke": (smoke_dir, pool.submit(timed_grpo_on_cpu, smoke_dir, FIRST_RUN_STEPS)),
        "internvl": (internvl_dir, pool.submit(timed_grpo_on_cpu, internvl_dir, 1, recipe="smoke_internvl")),
    }
    pool.shutdown(wait=False)
    return runs


@pytest.fixture(scope="module")
def first_run(side_by_side_runs):
    work_dir, future = side_by_side_runs["smoke"]
    return work_dir, future.result()[0]


@pytest.fixture(scope="module")
def internvl_run(side_by_side_runs):
    work_dir, future = side_by_side_runs["internvl"]
    return work_dir, future.result()[0]


@pytest.fixture(scope="module")
def resumed_run(first_run):
    """Resumes with filtering on, the overlong penalty over whole responses, one data loader process (the
    smoke recipe's 2 saved the position), planned to step 6 with checkpoints every 5, and told that a
    checkpoint takes all but 5 s of the time left before mixed_r1.stop_by: it must end after its first
    step, 3."""
    work_dir, _ = first_run
    stop_by = int(time.time()) + STOP_BY_AHEAD_S
    return grpo_on_cpu(
        work_dir, RESUMED_PLANNED_LAST_STEP, "filtering=on", "data.dataloader_num_workers=1", "trainer.save_freq=5",
        f"mixed_r1.stop_by={stop_by}", f"mixed_r1.stop_save_estimate_s={STOP_BY_AHEAD_S - 5}", *OVERLONG_OVER_ALL,
    )  # fmt: skip


def test_the_cpu_rollout_gives_the_model_the_inputs_its_processor_gives(tiny_model_dir, tmp_path):
    convert_synthetic(tmp_path / "src", tmp_path / "out", rows_per_task=1, seed=3, val_ratio=0.0, model_path=str(tiny_model_dir))
    generator = TransformersGenerator(str(tiny_model_dir), SamplingSettings(max_new_tokens=8), device="cpu")
    for record in load_records([tmp_path / "out" / "train.parquet"]):
        request = eval_request(record)
        expected = generator.model_inputs([request])
        images = model_images(request, generator.patch_size, generator.processor_bounds)
        rollout = rollout_model_inputs(generator.processor, expected["input_ids"][0].tolist(), images)
        assert sorted(rollout) == sorted(expected), record.id
        for key, tensor in expected.items():
            assert torch.equal(rollout[key], tensor), (record.id, key)


def assert_every_step_trains_on_all_four_tasks_with_no_sample_lost(work_dir, log, steps_run):
    steps = read_metrics_log(work_dir / "metrics.jsonl")
    assert sorted(steps) == list(range(1, steps_run + 1))
    assert "Error in _run_prompt" not in log
    for step, metrics in steps.items():
        assert not non_finite(metrics), f"step {step}: {non_finite(metrics)}"
        per_task = task_metrics(metrics, "mixed_r1")
        assert sorted(per_task) == sorted(TASKS)
        for task, values in per_task.items():
            # Task-balanced batches: two prompts of each task, every rollout of each kept.
            assert values["count"] == PROMPTS_PER_STEP // len(TASKS) * ROLLOUT_N, f"step {step}: {task} {values}"
            assert all(math.isfinite(values[f"{key}/mean"]) for key in ("score", "accuracy", "format"))
            assert values["error/mean"] == 0, f"step {step}: reward errors on {task}"
            assert 1 / values["count"] <= values["top_answer_share"] <= 1, f"step {step}: {task} {values}"
            # Every reward is 0 on the random model: no prompt group of the task gives GRPO a signal.
            assert values["groups_with_signal"] == 0, f"step {step}: {task} {values}"
        # Rewards are all 0 on the random model: the smoke recipe's entropy bonus gives the update.
        assert metrics["actor/grad_norm"] > 0 and metrics["response_length/mean"] > 0
        assert_task_lengths_add_up_to_the_batchs(metrics, per_task, step, RESPONSE_LENGTH)
        # The actor scores the rollout's tokens from the same inputs, images included, as the rollout did.
        assert metrics["training/rollout_probs_diff_mean"] < 1e-3
    return steps


def test_every_step_trains_on_all_four_tasks_with_no_sample_lost(first_run):
    work_dir, log = first_run
    assert_every_step_trains_on_all_four_tasks_with_no_sample_lost(work_dir, log, FIRST_RUN_STEPS)
    checkpoints = work_dir / "smoke" / "checkpoints"
    latest = checkpoints / "latest_checkpointed_iteration.txt"
    assert latest.read_text().strip() == str(FIRST_RUN_STEPS)
    # The run's config is in the checkpoint before verl marks it as the latest.
    run_config = checkpoints / f"global_step_{FIRST_RUN_STEPS}" / "mixed_r1_run.yaml"
    assert run_config.stat().st_mtime_ns <= latest.stat().st_mtime_ns


def test_two_runs_side_by_side_on_one_machine_each_start_a_ray_cluster_of_their_own(side_by_side_runs):
    (smoke_log, smoke_interval), (internvl_log, internvl_interval) = (
        side_by_side_runs[name][1].result() for name in ("smoke", "internvl")
    )
    assert smoke_interval[0] < internvl_interval[1] and internvl_interval[0] < smoke_interval[1]
    for log in (smoke_log, internvl_log):
        assert "Started a local Ray instance" in log and "Connecting to existing Ray cluster" not in log


def test_an_internvl_trains_on_its_image_prompts_of_all_four_tasks(internvl_run):
    work_dir, log = internvl_run
    assert "Failed to create processor" not in log, "verl refused InternVL's processor"
    assert_a_tiny_model_trained_one_step_on_0_1000_boxes(work_dir, log, "internvl")


def test_a_qwen3vl_trains_on_its_image_prompts_of_all_four_tasks(tmp_path):
    log = grpo_on_cpu(tmp_path, 1, recipe="smoke_qwen3vl")
    assert_a_tiny_model_trained_one_step_on_0_1000_boxes(tmp_path, log, "qwen3vl")


def assert_a_tiny_model_trained_one_step_on_0_1000_boxes(work_dir, log, family):
    """recipes/smoke_<family>.yaml's step: the tiny model of the family, data converted for its 0-1000 boxes."""
    assert_every_step_trains_on_all_four_tasks_with_no_sample_lost(work_dir, log, 1)
    smoke_dir = work_dir / f"smoke_{family}"
    model = AutoModelForImageTextToText.from_pretrained(smoke_dir / f"tiny_{family}")
    assert model.config.model_type == {"internvl": "internvl", "qwen3vl": "qwen3_vl"}[family]
    train = pq.read_table(smoke_dir / "data" / "train.parquet").to_pylist()
    grounding = [row["extra_info"] for row in train if row["extra_info"]["task"] == "grounding"]
    assert grounding and all(info["box_frame"] == "norm1000" for info in grounding)


def test_a_rerun_resumes_after_the_checkpoint_with_per_task_filtering(first_run, resumed_run):
    work_dir, _ = first_run
    assert (
        f"global_step_{FIRST_RUN_STEPS}: its data loader position was saved by 2 loader process(es), so the "
        "resumed epoch is read with 2 and the next ones with data.dataloader_num_workers=1"
    ) in resumed_run
    # The settings changed since the checkpoint, against the config it saved.
    checkpoint = work_dir / "smoke" / "checkpoints" / f"global_step_{FIRST_RUN_STEPS}"
    saved = yaml.safe_load((checkpoint / "mixed_r1_run.yaml").read_text())
    assert (
        f"global_step_{FIRST_RUN_STEPS}: resumed with " in resumed_run
        and f"setting(s) changed since it was saved ({checkpoint / 'mixed_r1_run.yaml'} holds the saved ones):" in resumed_run
    )
    for change in (
        f"data.dataloader_num_workers: {saved['data']['dataloader_num_workers']!r} -> 1",
        f"trainer.save_freq: {saved['trainer']['save_freq']!r} -> 5",
        f"trainer.total_training_steps: {FIRST_RUN_STEPS} -> {RESUMED_PLANNED_LAST_STEP}",
        "algorithm.filter_groups.enable: False -> True",
        "trainer.v1.sampler.custom_sampler.name: None -> 'PerTaskDynamicSampler'",
    ):
        assert f"  {change}\n" in resumed_run, change
    assert read_metrics_log(work_dir / "metrics.1.jsonl").keys() == set(range(1, FIRST_RUN_STEPS + 1))
    steps = read_metrics_log(work_dir / "metrics.jsonl")
    assert sorted(steps) == [FIRST_RUN_STEPS + 1]
    metrics = steps[FIRST_RUN_STEPS + 1]
    counters = task_metrics(metrics, "filtering")
    assert sorted(counters) == sorted(TASKS)
    assert sum(counters[task]["kept"] for task in TASKS) == metrics["filtering/kept"] == PROMPTS_PER_STEP
    assert sum(counters[task]["dropped"] for task in TASKS) == metrics["filtering/dropped"]


def test_the_overlong_penalty_takes_each_response_length_the_trainer_logs_from_its_score(first_run, resumed_run):
    work_dir, _ = first_run
    metrics = read_metrics_log(work_dir / "metrics.jsonl")[FIRST_RUN_STEPS + 1]
    for task, values in task_metrics(metrics, "mixed_r1").items():
        # Buffered over all its RESPONSE_LENGTH tokens, each response pays length / RESPONSE_LENGTH.
        expected = -values["response_length/mean"] / RESPONSE_LENGTH
        assert values["overlong_reward/mean"] == pytest.approx(expected), task
        assert values["overlong/mean"] == 1.0 and values["score/mean"] == pytest.approx(expected), task


def test_a_run_ends_with_a_checkpoint_after_the_last_step_that_fits_before_stop_by(first_run, resumed_run):
    work_dir, _ = first_run
    first_step = FIRST_RUN_STEPS + 1
    assert f"mixed_r1.stop_by: ending after step {first_step} of {RESUMED_PLANNED_LAST_STEP}, saved" in resumed_run
    checkpoints = work_dir / "smoke" / "checkpoints"
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == str(first_step)
    assert (checkpoints / f"global_step_{first_step}" / "actor" / "model_world_size_1_rank_0.pt").is_file()
    assert sorted(read_metrics_log(work_dir / "metrics.jsonl")) == [first_step]
    # Recorded beside the checkpoints, for what comes after the run (the learning proof's continue_grpo).
    early_end = json.loads((checkpoints / EARLY_END_FILE).read_text())
    assert (early_end["last_step"], early_end["planned_last_step"]) == (first_step, RESUMED_PLANNED_LAST_STEP)


def test_a_sweep_trains_its_jobs_in_turn_each_into_its_own_directory(tmp_path):
    """`-m` runs the jobs one after another in one process: each starts a Ray of its own and trains into the
    directory named after its learning rate. With the last job's Ray left running, the next job could find
    the one logical GPU still held by its workers ("Total available GPUs 0")."""
    lr, recipe = "${actor_rollout_ref.actor.optim.lr}", "${hydra:runtime.choices.recipe}"
    log = grpo_on_cpu(
        tmp_path, 1, "actor_rollout_ref.actor.optim.lr=1e-6,2e-6", f"trainer.experiment_name={recipe}_lr{lr}",
        f"trainer.default_local_dir={tmp_path}/checkpoints/lr{lr}",
        sweep=True, metrics_log={"VERL_FILE_LOGGER_ROOT": str(tmp_path / "metrics")},
    )  # fmt: skip
    for job_lr in ("1e-06", "2e-06"):
        checkpoints = tmp_path / "checkpoints" / f"lr{job_lr}"
        assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
        # A group's choice (Hydra's resolver, which verl's Ray actor lacks) names the run too.
        assert sorted(read_metrics_log(tmp_path / "metrics" / "mixed_r1" / f"smoke_lr{job_lr}.jsonl")) == [1]
    assert log.count("Started a local Ray instance") == 2


def as_local(tensor):
    """A checkpoint tensor as a plain tensor (FSDP2 saves DTensors)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def test_the_checkpoint_merged_by_verls_model_merger_is_evaluated_on_every_val_row(first_run):
    """The GPU suite's evaluation check (tests/gpu/test_gpu_eval.py) with the transformers backend."""
    work_dir, _ = first_run
    actor = work_dir / "smoke" / "checkpoints" / f"global_step_{FIRST_RUN_STEPS}" / "actor"
    merged, val = work_dir / "merged", work_dir / "smoke" / "data" / "val.parquet"
    run_module(
        "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir", str(actor), "--target_dir", str(merged)
    )
    # The merged model holds the trained actor's weights (one rank, so one shard) in its saved dtype.
    shard = torch.load(actor / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False)
    loaded = AutoModelForImageTextToText.from_pretrained(merged, dtype="auto").state_dict()
    assert loaded.keys() == shard.keys()
    assert all(loaded[name].equal(as_local(shard[name]).to(loaded[name].dtype)) for name in shard)
    base = AutoModelForImageTextToText.from_pretrained(work_dir / "smoke" / "tiny_qwen25vl", dtype="auto")
    assert any(not loaded[name].equal(weight.to(loaded[name].dtype)) for name, weight in base.state_dict().items())
    evaluate = [
        sys.executable, "-m", "mixed_r1_verl.eval", f"data={val}", f"model={merged}", "backend=hf",
        "max_new_tokens=16", f"out_dir={work_dir / 'eval_merged'}",
    ]  # fmt: skip
    if not image_processor_settings(merged):
        # Without torchvision AutoProcessor fails, and verl's merger then saves the tokenizer alone.
        refused = subprocess.run(evaluate, env=checkout_env(), capture_output=True, text=True, timeout=300)
        assert refused.returncode != 0 and "has no image processor settings" in refused.stderr, refused.stderr[-2000:]
        shutil.copy(actor / "huggingface" / "processor_config.json", merged)
    subprocess.run(evaluate, env=checkout_env(), capture_output=True, text=True, timeout=600, check=True)
    summary = json.loads((work_dir / "eval_merged" / "summary.json").read_text())
    assert set(summary["tasks"]) == set(TASKS) | {"all"}
    val_rows = pq.read_metadata(val).num_rows
    assert summary["tasks"]["all"]["n"] == val_rows and summary["tasks"]["all"]["errors"] == 0


def test_export_writes_the_trained_actor_from_its_shards_as_a_model_directory_with_its_processor(first_run):
    work_dir, _ = first_run
    step = work_dir / "smoke" / "checkpoints" / f"global_step_{FIRST_RUN_STEPS}"
    out = work_dir / "exported"
    summary = json.loads(run_module("mixed_r1_verl.export", f"checkpoint={step}", f"out_dir={out}"))
    assert (summary["weights_from"], summary["lora_merged"], summary["dtypes"]) == (
        "FSDP shards", False, ["BF16"]
    )  # fmt: skip
    # verl's copy saved without hf_model: its config (naming the actor's float32), tokenizer, chat template
    # and processor, no weights. The export's config names the bfloat16 written.
    assert json.loads((step / "actor" / "huggingface" / "config.json").read_text())["dtype"] == "float32"
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    copy = sorted(path.name for path in (step / "actor" / "huggingface").iterdir())
    assert "model.safetensors" not in copy
    assert summary["files"] == sorted([*copy, "model.safetensors", "README.md", "mixed_r1_run.yaml", "mixed_r1_code.json"])
    # The run's config, as the trainer saved it beside the checkpoint, and the card read from it.
    run = yaml.safe_load((out / "mixed_r1_run.yaml").read_text())
    assert (out / "mixed_r1_run.yaml").read_text() == (step / "mixed_r1_run.yaml").read_text()
    assert run["trainer"]["v1"]["trainer_mode"] == "mixed_r1_sync" and run["trainer"]["total_training_steps"] == FIRST_RUN_STEPS
    _, first, rows = card_parts((out / "README.md").read_text())
    assert first.startswith(f"Step {FIRST_RUN_STEPS} of a GRPO run")
    assert rows["started from"] == f"`{run['actor_rollout_ref']['model']['path']}`" and rows["weights"] == "bfloat16"
    assert rows["training data"] == f"`{run['data']['train_files']}`"
    assert image_processor_settings(out)
    shard = torch.load(step / "actor" / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False)
    loaded = AutoModelForImageTextToText.from_pretrained(out, dtype="auto").state_dict()
    assert loaded.keys() == shard.keys()
    assert all(loaded[name].equal(as_local(shard[name]).to(loaded[name].dtype)) for name in shard)


def test_a_response_ends_at_the_first_image_or_video_placeholder_it_generates_outside_the_loss():
    image_pad, video_pad, end = 151655, 151656, 151645
    output = AgentLoopOutput(
        prompt_ids=[1, image_pad, 2], response_ids=[5, 6, image_pad, 7, video_pad], response_mask=[1] * 5,
        response_logprobs=[-0.5, -0.6, -9.0, -0.7, -8.0], num_turns=2, metrics={},
    )  # fmt: skip
    assert end_at_placeholder_tokens(output, {image_pad, video_pad}, end)
    assert (output.response_ids, output.response_mask) == ([5, 6, end], [1, 1, 0])
    assert output.response_logprobs[:2] == [-0.5, -0.6] and len(output.response_logprobs) == 3
    assert output.prompt_ids == [1, image_pad, 2]
    assert not end_at_placeholder_tokens(output, {image_pad, video_pad}, end)

    first = AgentLoopOutput(prompt_ids=[1], response_ids=[video_pad, 5], response_mask=[1, 1], num_turns=2, metrics={})
    assert end_at_placeholder_tokens(first, {image_pad, video_pad}, end)
    assert (first.response_ids, first.response_mask, first.response_logprobs) == ([end], [0], None)


def test_tasks_installed_packages_add_are_trained_with_their_own_metrics(tmp_path, install_tasks):
    """The smoke run on data with two more tasks that only installed packages know: `counting`, and `vqa`
    whose rows give typed reward fields. The packages are on the path of the run, and so of its Ray
    workers, as pip would leave them."""
    site = write_vqa_plugin(write_counting_plugin(tmp_path / "site"))
    install_tasks(site)
    smoke = tmp_path / "smoke"
    build_tiny_qwen25vl(smoke / "tiny_qwen25vl")
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=4, seed=5)
    rows = read_jsonl(jsonl)
    counting = counting_records(rows, sum(row["task"] == "grounding" for row in rows), split="train")
    vqa = [
        {**row, "id": f"vqa-{row['id']}", "task": "vqa", "reward_info": {"answers": [row["answer"]] * 3}}
        for row in rows if row["task"] == "open_ended"
    ]  # fmt: skip
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows + counting + vqa))
    prepare(PrepareConfig(
        input=str(jsonl), image_root=str(image_root), output_dir=str(smoke / "data"), progress=False,
        model_path=str(smoke / "tiny_qwen25vl"), max_prompt_length=1024,
    ))  # fmt: skip

    grpo_on_cpu(tmp_path, 1, python_path=[site])
    metrics = read_metrics_log(tmp_path / "metrics.jsonl")[1]
    per_task = task_metrics(metrics, "mixed_r1")
    assert sorted(per_task) == sorted([*TASKS, "counting", "vqa"])
    for task in ("counting", "vqa"):
        counted = per_task[task]
        assert counted["count"] >= ROLLOUT_N and counted["count"] % ROLLOUT_N == 0
        assert all(math.isfinite(counted[f"{key}/mean"]) for key in ("score", "accuracy", "format", "error"))
    assert sum(values["count"] for values in per_task.values()) == PROMPTS_PER_STEP * ROLLOUT_N

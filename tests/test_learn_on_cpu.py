"""The learning proof's whole plan on CPU, at test scale: `mixed_r1_verl.learn`'s own steps (model, data,
base eval, SFT, publish, eval, GRPO from the SFT model, publish, eval, report) with the two trainers run
through tests/run_on_cpu.py and the evaluations generating with transformers. What it adds to the SFT and
GRPO tests: the hand-over between the steps, as the proof chains them, run in three parts as under job
time limits (the budget ending GRPO early, then `continue_grpo=true`). The learning itself is measured on
a GPU (README, "Learning proof")."""

import dataclasses
import json
import sys

import pytest
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from data_helpers import CPU_GRPO_SETTINGS, CPU_SFT_SETTINGS, REPO, checkout_env
from mixed_r1_verl.data.synthetic import TASKS
from mixed_r1_verl.learn import LearnConfig, Layout, execute, plan, read_step_times
from mixed_r1_verl.run_logs import read_metrics_log, read_resumed_metrics_log, task_metrics
from mixed_r1_verl.verl_adapter.metrics import METRIC_PREFIX

VAL_ROWS_PER_TASK = 2
SFT_STEPS, GRPO_STEPS = 2, 2
GRPO_BATCH_SIZE, GRPO_SAMPLES_PER_PROMPT = 8, 2
# GRPO runs under the proof's time budget, which is long enough for every step here; but told that a
# checkpoint takes the whole budget, GRPO ends after its first step, and a continued GRPO after the next.
TIME_BUDGET_S = 3600
CPU_ENTRIES = {"mixed_r1_verl.sft": "sft", "mixed_r1_verl.main": "grpo"}


def on_cpu(step):
    """The step with a training entry swapped for tests/run_on_cpu.py; other steps as they are."""
    if step.run is not None or step.argv[1:2] != ["-m"] or step.argv[2] not in CPU_ENTRIES:
        return step
    argv = [sys.executable, str(REPO / "tests" / "run_on_cpu.py"), CPU_ENTRIES[step.argv[2]], *step.argv[3:]]
    return dataclasses.replace(step, argv=argv)


@pytest.fixture(scope="module")
def proof_in_parts(tmp_path_factory):
    """The proof run up to the SFT model's evaluation, then on with GRPO ended early by the budget, then with
    continue_grpo=true: (its layout, the table the second part wrote)."""
    work_dir = tmp_path_factory.mktemp("learn")
    config = LearnConfig(
        work_dir=str(work_dir), model_size="test", rows_per_task=8, val_rows_per_task=VAL_ROWS_PER_TASK,
        eval_max_new_tokens=16, eval_batch_size=8, eval_overrides=["device=cpu"], time_budget_s=TIME_BUDGET_S,
        sft_overrides=[
            *CPU_SFT_SETTINGS, "data.train_batch_size=4", "data.micro_batch_size_per_gpu=2",
            f"trainer.total_training_steps={SFT_STEPS}",
        ],
        grpo_overrides=[
            *CPU_GRPO_SETTINGS, f"data.train_batch_size={GRPO_BATCH_SIZE}", "data.max_response_length=32",
            f"actor_rollout_ref.rollout.n={GRPO_SAMPLES_PER_PROMPT}", "actor_rollout_ref.actor.ppo_mini_batch_size=8",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4", "reward.num_workers=1",
            f"trainer.total_training_steps={GRPO_STEPS}", f"mixed_r1.stop_save_estimate_s={TIME_BUDGET_S}",
        ],
    )  # fmt: skip
    layout = Layout(work_dir)
    env = checkout_env(MIXED_R1_LEARN_DIR=str(work_dir))
    # In two parts, as under a job time limit: up to the SFT model's evaluation, then the same command without
    # stop_after.
    first_part = plan(dataclasses.replace(config, stop_after="sft"))
    execute([on_cpu(step) for step in first_part], env, layout.step_times)
    assert first_part[-1].name == "evaluate sft" and not layout.grpo_checkpoints.exists()
    execute([on_cpu(step) for step in plan(config)], env, layout.step_times)
    second_part_table = layout.table.read_text()
    execute([on_cpu(step) for step in plan(dataclasses.replace(config, continue_grpo=True))], env, layout.step_times)
    return layout, second_part_table


@pytest.fixture(scope="module")
def proof(proof_in_parts):
    return proof_in_parts[0]


def language_weights(model_dir):
    weights = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        weights.update({name: tensor.float() for name, tensor in load_file(shard).items() if "visual" not in name})
    return weights


def distance(first: dict, second: dict) -> float:
    assert first.keys() == second.keys()
    return sum(float((first[name] - second[name]).abs().sum()) for name in first)


def test_the_table_compares_the_three_models_on_every_held_out_row(proof):
    summary = json.loads((proof.report / "learning_table.json").read_text())
    by_task = {row[0]: dict(zip(summary["header"], row)) for row in summary["rows"]}
    assert sorted(by_task) == sorted([*TASKS, "all"])
    assert {task: stats["n"] for task, stats in by_task.items()} == {
        **{task: VAL_ROWS_PER_TASK for task in TASKS},
        "all": VAL_ROWS_PER_TASK * len(TASKS),
    }
    for run in ("base", "sft", "grpo"):
        assert json.loads((proof.eval_dir(run) / "summary.json").read_text())["run"]["model"].endswith(f"{run}_model")
    assert set(summary["targets"]) and "Targets" in proof.table.read_text()
    commands = [step.name for step in plan(LearnConfig(work_dir=str(proof.root))) if step.run is None]
    assert sorted(summary["step_times"]) == sorted(commands)
    assert all(times["seconds"] > 0 for times in summary["step_times"].values())
    # Each command was timed in the parts that ran it (GRPO and its evaluation in two); the target is checked
    # on their sum.
    total = sum(times["seconds"] for times in summary["step_times"].values())
    assert summary["wall_time_target_met"] == (total <= 20 * 60)
    assert "; summed over 3 executions)" in proof.table.read_text()


def test_the_second_part_goes_on_from_the_sft_models_evaluation_without_redoing_anything(proof):
    times = read_step_times(proof.step_times)
    first_part = {"build the base model", "evaluate base", "SFT (cold start, stopped early)", "evaluate sft"}
    assert len({times[name]["execution"] for name in first_part}) == 1
    assert times["GRPO with Mixed-Reward from the SFT model"]["execution"] != times["evaluate sft"]["execution"]


def test_grpo_trains_from_the_published_sft_model_and_publishes_its_own(proof):
    assert proof.sft_model.resolve() == (proof.sft_checkpoints / f"global_step_{SFT_STEPS}" / "huggingface").resolve()
    assert (
        proof.grpo_model.resolve()
        == (proof.grpo_checkpoints / f"global_step_{GRPO_STEPS}" / "actor" / "huggingface").resolve()
    )
    base, sft, grpo = (language_weights(model) for model in (proof.base_model, proof.sft_model, proof.grpo_model))
    # GRPO's few steps leave it far nearer the SFT weights it started from than to the base. (Adam moves each
    # weight by about the learning rate even where a step's rewards are all 0 and its gradient tiny.)
    assert 0 < distance(sft, grpo) < distance(base, grpo) / 3


def test_each_training_runs_config_and_log_are_kept_in_the_work_dir(proof_in_parts):
    proof, _ = proof_in_parts
    sft_runs, grpo_runs = (sorted(runs.iterdir()) for runs in (proof.sft_runs, proof.grpo_runs))
    assert len(sft_runs) == 1 and len(grpo_runs) == 2  # GRPO ended early by the budget, then continued
    for run in (*sft_runs, *grpo_runs):
        assert (run / ".hydra" / "config.yaml").is_file() and list(run.glob("*.log"))
    composed = OmegaConf.load(grpo_runs[-1] / ".hydra" / "config.yaml")
    assert composed.trainer.default_local_dir == str(proof.grpo_checkpoints)


def test_the_budget_ends_grpo_early_and_continue_grpo_trains_it_on_to_its_planned_step(proof_in_parts):
    proof, second_part_table = proof_in_parts
    assert f"GRPO steps trained: 1 of {GRPO_STEPS} (the time budget ended it;" in second_part_table
    assert f"GRPO steps trained: {GRPO_STEPS}.\n" in proof.table.read_text()
    # The continued run resumed from the checkpoint of step 1: it logged step 2 only.
    assert sorted(read_metrics_log(proof.grpo_log)) == [GRPO_STEPS]
    assert sorted(read_metrics_log(proof.logs / "grpo.1.jsonl")) == [1]
    # The evaluation of the step-1 model is kept; the new one evaluates the model of the last step.
    for run in ("grpo_step_1", "grpo"):
        assert json.loads((proof.eval_dir(run) / "summary.json").read_text())["run"]["model"].endswith("grpo_model")
    evaluated = [json.loads((proof.eval_dir(run) / "model.json").read_text()) for run in ("grpo_step_1", "grpo")]
    assert evaluated[0]["path"].endswith("global_step_1/actor/huggingface")
    assert evaluated[1]["path"].endswith(f"global_step_{GRPO_STEPS}/actor/huggingface")
    times = read_step_times(proof.step_times)
    grpo = "GRPO with Mixed-Reward from the SFT model"
    for name in (grpo, "evaluate grpo"):
        assert len(times[name]["earlier_executions"]) == 1
        assert times[name]["execution"] not in times[name]["earlier_executions"]
    assert f"| {grpo} | {times[grpo]['seconds']:.1f} (2 runs) |" in proof.table.read_text()


def test_the_plot_follows_every_task_over_the_grpo_steps(proof):
    steps = read_resumed_metrics_log(proof.grpo_log)
    assert sorted(steps) == list(range(1, GRPO_STEPS + 1))
    assert json.loads((proof.report / "learning_table.json").read_text())["grpo_steps"] == GRPO_STEPS
    samples_per_task = GRPO_BATCH_SIZE * GRPO_SAMPLES_PER_PROMPT // len(TASKS)
    for metrics in steps.values():
        assert sorted(task_metrics(metrics, METRIC_PREFIX)) == sorted(TASKS)
        # The recipe's task-balanced batches: every step weighs the four tasks alike.
        counts = {task: metrics[f"{METRIC_PREFIX}/{task}/count"] for task in TASKS}
        assert counts == dict.fromkeys(TASKS, samples_per_task)
    assert Image.open(proof.plot).size[0] >= 600

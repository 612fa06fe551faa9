"""The learning proof: a small Qwen2.5-VL, cold-start SFT, then Mixed-Reward GRPO, evaluated after each.

    python -m mixed_r1_verl.learn [work_dir=outputs/learn seed=0 dry_run=true ...]

One GPU, offline. Steps, each a command in a fresh process (dry_run=true prints them, marks those done
earlier, and runs nothing):

 1. build the tiny Qwen2.5-VL of size `learn` (random weights; model_size and model_overrides change it);
 2. write the synthetic four-task set (rationales, val rows pinned per task) and 3. convert it;
 4. evaluate the base model on the held-out val split;
 5. SFT on the rationales (recipes/sft/learn.yaml, stopped early; under time_budget_s also by
    sft_budget_share of it), 6. evaluate;
 7. GRPO with Mixed-Reward from the SFT checkpoint (recipes/learn.yaml), 8. evaluate;
 9. write the per-task table (accuracy, format rate, mean score, n for base / SFT / GRPO, with deltas),
    the pairwise comparisons, a plot of per-task training accuracy against GRPO step, and the wall
    time of every command (logs/step_times.json).

Evaluation is the project's (`mixed_r1_verl.eval`: its generators, scorer and summaries); BMAS embeds
with the base model's table in training and in every evaluation, so open_ended scores compare.
A rerun skips what is done: the model and the data when present, each evaluation once it wrote its
summary of the model it evaluates (one that scored another checkpoint of SFT or GRPO than the latest, as
its model.json records, is kept in eval/<run>_step_<the step it scored> and the latest is evaluated),
SFT and GRPO once they saved their checkpoint (both save only at their last step; delete the
`sft`/`grpo` directory to train again). So the proof can run in parts: `stop_after=sft` ends after the
SFT model's evaluation, and the same command without it goes on with GRPO; every command is timed once,
when it ran, and the wall-time target is checked on their sum. A GRPO that the time budget ended before
its planned last step counts as done; with `continue_grpo=true` it goes on from its checkpoint and is
evaluated again (the earlier evaluation kept in eval/grpo_step_<N>), its commands' times added. A step
done earlier with other settings (another seed, model size or `sft_overrides`, say), or made from what
this command makes again, is not reused: the proof stops first and names it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mixed_r1_verl.data.model_files import CHECKPOINT_TRACKER
from mixed_r1_verl.models.tiny_qwen25vl import describe_model, size_from_settings
from mixed_r1_verl.run_logs import EXIT_OUT_OF_TIME, STACKS_SUFFIX, run_with_limit
from mixed_r1_verl.settings import (
    EXIT_NEEDS_GPU,
    EXIT_NOTHING_TO_TRAIN,
    asks_for_help,
    parse_settings,
    settings_help,
    usage_error,
)

RUNS = ("base", "sft", "grpo")
RUN_NAMES = {"base": "base", "sft": "SFT", "grpo": "GRPO"}
# Where a checkpoint of each trained run holds its Hugging Face model, the one its evaluation scores.
CHECKPOINT_MODEL = {"sft": "huggingface", "grpo": "actor/huggingface"}
# The runs after whose evaluation the proof may stop (stop_after).
STOP_POINTS = RUNS[:2]
# The proof's target on one GPU for the whole command: model, data, SFT, GRPO and three evaluations.
WALL_TIME_TARGET_S = 20 * 60
# Under a time budget: the least time a training command's stop_by lies ahead when it starts, to train
# and save a step (the entries refuse a stop_by already past).
LATE_START_S = 60
# Files a model directory needs for vLLM and the processor, copied from the base model when the
# checkpoint's Hugging Face copy lacks them.
MODEL_SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
)


NO_GPU_MESSAGE = """\
mixed_r1_verl.learn trains (SFT, then GRPO with vLLM rollouts) and needs a CUDA GPU;
torch.cuda.is_available() is False on this machine. `python -m mixed_r1_verl.learn dry_run=true`
prints every command of the proof without running them.
"""


@dataclass
class LearnConfig:
    work_dir: str = "${oc.env:MIXED_R1_LEARN_DIR,outputs/learn}"
    seed: int = 0
    dry_run: bool = False
    # Synthetic set: rows per task in all; the last val_rows_per_task of each task are held out.
    rows_per_task: int = 2200
    val_rows_per_task: int = 200
    model_size: str = "learn"
    # FIELD=INT settings over model_size's architecture (TinySize in mixed_r1_verl/models/tiny_qwen25vl.py),
    # [num_hidden_layers=8,hidden_size=768,intermediate_size=2304] say: a larger model to learn more.
    model_overrides: list = field(default_factory=list)
    eval_max_new_tokens: int = 256
    eval_batch_size: int = 512
    # transformers generates the 800 val prompts of the 27M model in batches of eval_batch_size in
    # less time than vLLM takes to start (2-3 minutes the first time on a GPU host); `vllm` is eager.
    eval_backend: str = "hf"
    # Extra key=value settings for the SFT and GRPO commands and the three evaluations.
    sft_overrides: list = field(default_factory=list)
    grpo_overrides: list = field(default_factory=list)
    eval_overrides: list = field(default_factory=list)
    # Seconds the whole proof may take from its start (> 0; null: no limit). SFT then ends, with its
    # checkpoint, by sft_budget_share of the budget from the start, and GRPO at the last step that leaves
    # time for the last evaluation and the report (mixed_r1.stop_by, both; GRPO left less than a minute
    # is not started, and the table shows the models evaluated so far); a command still running when
    # the budget is spent is stopped, and its stacks are written to logs/<NN_step>.stacks.txt.
    time_budget_s: float | None = None
    # With time_budget_s: the share of the budget, from the proof's start, by which SFT ends (at its
    # planned last step if that comes first). The rest is for the SFT evaluation, GRPO (whose rollout
    # engine takes minutes to start) and the last evaluation.
    sft_budget_share: float = 0.4
    # With time_budget_s: the seconds kept after GRPO for the last evaluation and the report, until an
    # evaluation has been timed (then 1.25 x the longest one timed, plus 10 s for the report).
    final_eval_reserve_s: float = 120.0
    # `base` or `sft`: end after that model's evaluation. The same command without it later goes on from
    # there (under a job time limit, say, or to look at the cold start before GRPO).
    stop_after: str | None = None
    # Whether a GRPO ended by the time budget before its planned last step (its report says so) goes on
    # from its checkpoint to that step; its model is then evaluated and reported again.
    continue_grpo: bool = False


@dataclass(frozen=True)
class Step:
    """A command run in a fresh process, or an action in this one (`run` set, `argv` describing it)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    skip_if_exists: Path | None = None
    run: Callable[[], None] | None = None
    # Settings known only when the command starts (they depend on how long earlier steps took).
    late_settings: Callable[[], list[str]] | None = None
    # Whether later steps are made from what this one makes (an evaluation's summary feeds none of them).
    feeds_later_steps: bool = True
    # Why a step done earlier runs again (continue_grpo); the time it takes adds to the earlier time.
    again: str | None = None
    # The step times whose entry for this step records that its command succeeded, where skip_if_exists
    # appears before the command ends (a training run's checkpoint tracker, at its first save): a run that
    # failed after saving a checkpoint is not done, and runs again, resuming from that checkpoint.
    recorded_in: Path | None = None

    def finished(self) -> bool:
        """Whether a command of this step ended well earlier (its `again` aside)."""
        if self.skip_if_exists is None or not self.skip_if_exists.exists():
            return False
        return self.recorded_in is None or self.name in read_step_times(self.recorded_in)

    def done_earlier(self) -> bool:
        return self.finished() and self.again is None

    def command(self) -> list[str]:
        return [*self.argv, *(self.late_settings() if self.late_settings else [])]

    def describe(self, command: list[str] | None = None) -> str:
        """The step as run: its environment and `command` (by default its command as it would start now)."""
        if self.run is not None:
            return " ".join(self.argv)
        env = " ".join(f"{key}={value}" for key, value in self.env.items())
        return f"{env} {shlex.join(self.command() if command is None else command)}".strip()


@dataclass(frozen=True)
class Layout:
    """Where every artefact of the proof goes."""

    root: Path

    base_model = property(lambda self: self.root / "base_model")
    synthetic = property(lambda self: self.root / "synthetic")
    data = property(lambda self: self.root / "data")
    sft_checkpoints = property(lambda self: self.root / "sft")
    sft_model = property(lambda self: self.root / "sft_model")
    grpo_checkpoints = property(lambda self: self.root / "grpo")
    grpo_model = property(lambda self: self.root / "grpo_model")
    logs = property(lambda self: self.root / "logs")
    # Each training run's Hydra directory (its composed config and entry.log), by start time.
    sft_runs = property(lambda self: self.logs / "sft_runs")
    grpo_runs = property(lambda self: self.logs / "grpo_runs")
    sft_log = property(lambda self: self.logs / "sft.jsonl")
    grpo_log = property(lambda self: self.logs / "grpo.jsonl")
    step_times = property(lambda self: self.logs / "step_times.json")
    report = property(lambda self: self.root / "report")
    table = property(lambda self: self.report / "learning_table.md")
    plot = property(lambda self: self.report / "accuracy_vs_grpo_step.png")

    def eval_dir(self, run: str) -> Path:
        return self.root / "eval" / run

    def latest_model(self, run: str) -> Path | None:
        """The Hugging Face model in the latest checkpoint of `run` (sft or grpo); None before one is saved."""
        checkpoints = {"sft": self.sft_checkpoints, "grpo": self.grpo_checkpoints}[run]
        tracker = checkpoints / CHECKPOINT_TRACKER
        if not tracker.is_file():
            return None
        return checkpoints / f"global_step_{int(tracker.read_text())}" / CHECKPOINT_MODEL[run]


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def hydra_run_dir(runs: Path) -> str:
    """The override putting a training run's Hydra directory under `runs` (else it is `outputs/` in the
    directory the proof was started from)."""
    return f"hydra.run.dir={runs}/${{now:%Y-%m-%d_%H-%M-%S}}"


def eval_step(config: LearnConfig, layout: Layout, run: str, model: Path, again: str | None = None) -> Step:
    from mixed_r1_verl.eval.report import SUMMARY_FILE

    return Step(
        f"evaluate {run}",
        python_module(
            "mixed_r1_verl.eval",
            f"model={model}",
            f"data={layout.data / 'val.parquet'}",
            f"out_dir={layout.eval_dir(run)}",
            f"embedding_model={layout.base_model}",
            f"seed={config.seed}",
            f"max_new_tokens={config.eval_max_new_tokens}",
            f"batch_size={config.eval_batch_size}",
            f"backend={config.eval_backend}",
            # Compiling and capturing CUDA graphs takes longer than eager decoding of a 27M model (with vllm, and
            # auto where vLLM is installed; hf reads no vllm_kwargs).
            *(["vllm_kwargs.enforce_eager=true"] if config.eval_backend != "hf" else []),
            *config.eval_overrides,
        ),
        skip_if_exists=layout.eval_dir(run) / SUMMARY_FILE,
        feeds_later_steps=False,
        again=again,
    )


def final_eval_reserve_s(config: LearnConfig, times: dict[str, dict]) -> float:
    """Seconds to keep after GRPO for its evaluation and the report."""
    evaluations = [
        entry["seconds"] / len(executions(entry)) for name, entry in times.items() if name.startswith("evaluate ")
    ]
    return 1.25 * max(evaluations) + 10 if evaluations else config.final_eval_reserve_s


class TooLateToStart(RuntimeError):
    """A training command that the time budget leaves too little time to train and save a step."""


def training_stop_by(stop_by: float, moves_out: bool, what: str) -> list[str]:
    """The mixed_r1.stop_by setting of a training command starting now, at least LATE_START_S ahead: a
    stop_by closer than that moves out to it where `moves_out`, else the command is not started
    (TooLateToStart, naming the stop_by as `what` describes it)."""
    ahead = stop_by - time.time()
    if ahead < LATE_START_S and not moves_out:
        when = f"is {ahead:.0f} s ahead" if ahead >= 0 else f"passed {-ahead:.0f} s ago"
        raise TooLateToStart(f"{what} {when}, less than the {LATE_START_S} s needed to train and save a step")
    return [f"mixed_r1.stop_by={int(max(stop_by, time.time() + LATE_START_S))}"]


def sft_stop_by(config: LearnConfig, started: float) -> list[str]:
    """SFT's mixed_r1.stop_by under the proof's time budget, as the SFT command starts: its share of the
    budget from the start, moved out to LATE_START_S ahead, so that SFT started late still trains and saves
    a step."""
    if config.time_budget_s is None:
        return []
    share_ends = started + config.sft_budget_share * config.time_budget_s
    return training_stop_by(share_ends, moves_out=True, what="SFT's share of the time budget")


def grpo_stop_by(config: LearnConfig, layout: Layout, started: float) -> list[str]:
    """GRPO's mixed_r1.stop_by under the proof's time budget, as the GRPO command starts: the budget's end
    less the time kept for the last evaluation and the report. It does not move, as SFT's does, for that
    time would be taken from the evaluation: with less than LATE_START_S left GRPO is not started."""
    if config.time_budget_s is None:
        return []
    reserve = final_eval_reserve_s(config, read_step_times(layout.step_times))
    what = f"the time budget's end less the {reserve:.0f} s kept for the last evaluation and the report"
    return training_stop_by(started + config.time_budget_s - reserve, moves_out=False, what=what)


def plan(config: LearnConfig, started: float | None = None) -> list[Step]:
    """Every step of the proof, in order; `started` (a Unix time, default now) starts its time budget."""
    layout = Layout(Path(config.work_dir).absolute())
    started = time.time() if started is None else started
    seed = config.seed
    size_from_settings(config.model_size, config.model_overrides)
    ended_early = grpo_ended_early(layout) if config.continue_grpo else None
    grpo_again = grpo_trains_on = None
    if ended_early is not None:
        grpo_again = (
            f"the time budget ended it after step {ended_early[0]} of {ended_early[1]}; it goes on from that "
            "checkpoint (continue_grpo=true)"
        )
        grpo_trains_on = f"its model trained on from step {ended_early[0]} (continue_grpo=true)"
    data_done = layout.data / "summary.json"
    steps = [
        Step(
            "build the base model",
            python_module(
                "mixed_r1_verl.models.tiny_qwen25vl", str(layout.base_model), f"--size={config.model_size}",
                f"--seed={seed}", *(["--set", *config.model_overrides] if config.model_overrides else []),
            ),
            skip_if_exists=layout.base_model / "config.json",
        ),
        Step(
            "write the synthetic set",
            python_module(
                "mixed_r1_verl.data.synthetic", f"out_dir={layout.synthetic}", f"rows_per_task={config.rows_per_task}",
                f"val_rows_per_task={config.val_rows_per_task}", f"seed={seed}", "image_format=jpeg",
            ),
            skip_if_exists=data_done,
        ),
        Step(
            "convert it (train, val, sft_train, sft_val)",
            python_module(
                "mixed_r1_verl.data.prepare", f"input={layout.synthetic / 'synthetic.jsonl'}",
                f"image_root={layout.synthetic / 'images'}", f"output_dir={layout.data}",
                f"model_path={layout.base_model}", "model_family=qwen2_5_vl", f"seed={seed}", "progress=false",
            ),
            skip_if_exists=data_done,
        ),
        eval_step(config, layout, "base", layout.base_model),
        Step(
            "SFT (cold start, stopped early)",
            python_module(
                "mixed_r1_verl.sft", "recipe=learn", f"model.path={layout.base_model}",
                f"mixed_r1.data_dir={layout.data}", f"trainer.default_local_dir={layout.sft_checkpoints}",
                f"trainer.seed={seed}", hydra_run_dir(layout.sft_runs), *config.sft_overrides,
            ),
            env={"VERL_FILE_LOGGER_PATH": str(layout.sft_log)},
            skip_if_exists=layout.sft_checkpoints / CHECKPOINT_TRACKER,
            recorded_in=layout.step_times,
            late_settings=lambda: sft_stop_by(config, started),
        ),
        Step(
            "publish the SFT model",
            ["link", str(layout.sft_model), "->", f"{layout.sft_checkpoints}/global_step_<latest>/huggingface"],
            run=lambda: publish_checkpoint(
                layout.sft_checkpoints, CHECKPOINT_MODEL["sft"], layout.sft_model, layout.base_model
            ),
        ),
        *evaluation_steps(config, layout, "sft", layout.sft_model),
        Step(
            "GRPO with Mixed-Reward from the SFT model",
            python_module(
                "mixed_r1_verl.main", "recipe=learn", f"actor_rollout_ref.model.path={layout.sft_model}",
                f"mixed_r1.data_dir={layout.data}", f"trainer.default_local_dir={layout.grpo_checkpoints}",
                f"reward.reward_kwargs.embedding_model={layout.base_model}", f"data.seed={seed}",
                f"actor_rollout_ref.rollout.seed={seed}", f"actor_rollout_ref.actor.data_loader_seed={seed}",
                hydra_run_dir(layout.grpo_runs), *config.grpo_overrides,
            ),
            env={"VERL_FILE_LOGGER_PATH": str(layout.grpo_log)},
            skip_if_exists=layout.grpo_checkpoints / CHECKPOINT_TRACKER,
            recorded_in=layout.step_times,
            late_settings=lambda: grpo_stop_by(config, layout, started),
            again=grpo_again,
        ),
        Step(
            "publish the GRPO model",
            ["link", str(layout.grpo_model), "->", f"{layout.grpo_checkpoints}/global_step_<latest>/actor/huggingface"],
            run=lambda: publish_checkpoint(
                layout.grpo_checkpoints, CHECKPOINT_MODEL["grpo"], layout.grpo_model, layout.base_model
            ),
        ),
        *evaluation_steps(config, layout, "grpo", layout.grpo_model, trains_on=grpo_trains_on),
        Step(
            "write the table and the plot",
            ["report", str(layout.table), str(layout.plot)],
            run=lambda: write_report(layout, plan(config)),
        ),
    ]  # fmt: skip
    if config.stop_after is None:
        return steps
    if config.stop_after not in STOP_POINTS:
        raise ValueError(f"stop_after={config.stop_after}: must be one of {', '.join(STOP_POINTS)} (or null)")
    last = [step.name for step in steps].index(f"evaluate {config.stop_after}")
    return steps[: last + 1]


def grpo_ray_cpu_shortfall(steps: list[Step], environ) -> str | None:
    """Why the GRPO command of `steps`, where it is to run, would stop at its start for want of CPUs in the Ray
    it starts on this host (the training entry's own check, on the config it composes with the CPUs it gives
    Ray): it would stop only after every step before it had run."""
    from mixed_r1_verl.main import composed_config, default_ray_cpus, local_ray_cpu_shortfall

    grpo = next((step for step in steps if step.argv[1:3] == ["-m", "mixed_r1_verl.main"]), None)
    config = None if grpo is None or grpo.done_earlier() else composed_config(grpo.argv[3:])
    if config is None:
        return None
    default_ray_cpus(config, environ, len(os.sched_getaffinity(0)))
    shortfall = local_ray_cpu_shortfall(config)
    return shortfall and (
        f"{grpo.name} would stop at its start, once the steps before it had run: {shortfall.rstrip()} For the "
        "proof, give it as grpo_overrides=[ray_kwargs.ray_init.num_cpus=<CPUs>].\n"
    )


def grpo_ended_early(layout: Layout) -> tuple[int, int] | None:
    """(last step saved, planned last step) of a GRPO that the time budget ended before its planned last
    step (mixed_r1.stop_by's record); None when GRPO has no checkpoint or reached its planned step."""
    from mixed_r1_verl.verl_adapter.stop_by import planned_last_step

    tracker = layout.grpo_checkpoints / CHECKPOINT_TRACKER
    planned = planned_last_step(layout.grpo_checkpoints)
    if planned is None or not tracker.is_file():
        return None
    saved = int(tracker.read_text())
    return (saved, planned) if saved < planned else None


def scored_model(fingerprint: dict) -> dict:
    """A model as the proof tells its evaluations apart, from the evaluation's fingerprint of it: the
    checkpoint step in its path and its weight files (names, sizes, times), not the path itself, so that a
    moved work dir still matches."""
    step = re.search(r"global_step_(\d+)", fingerprint["path"])
    return {"step": int(step.group(1)) if step else None, "weights": fingerprint["weights"]}


def evaluated_model(eval_dir: Path) -> dict | None:
    """The model that the finished evaluation in `eval_dir` scored, from the record the evaluation keeps
    of it (MODEL_FILE, written as it starts generating); None while the evaluation has no summary."""
    from mixed_r1_verl.eval.cache import MODEL_FILE
    from mixed_r1_verl.eval.report import SUMMARY_FILE

    if not (eval_dir / SUMMARY_FILE).is_file():
        return None
    record = eval_dir / MODEL_FILE
    if not record.is_file():
        raise ValueError(
            f"{eval_dir}: a finished evaluation without {MODEL_FILE}, the record of the model it scored; "
            f"delete {eval_dir} to evaluate again"
        )
    return scored_model(json.loads(record.read_text()))


def latest_scored_model(layout: Layout, run: str) -> dict | None:
    """The model of `run`'s latest checkpoint (sft or grpo) as scored_model describes it; None without one."""
    from mixed_r1_verl.eval.cache import model_fingerprint

    latest = layout.latest_model(run)
    return None if latest is None else scored_model(model_fingerprint(str(latest)))


def outdated_evaluation(layout: Layout, run: str, trains_on: str | None = None) -> tuple[int, str] | None:
    """(the checkpoint step it scored, why the model is evaluated again) for a finished evaluation of
    `run` that is not of the model this command evaluates: the run trains on in this command (`trains_on`
    says how), or its latest checkpoint is another model than the one scored. None otherwise, and while
    the run has no checkpoint (check_done_steps names such an evaluation)."""
    scored, latest = evaluated_model(layout.eval_dir(run)), latest_scored_model(layout, run)
    if scored is None or latest is None or (trains_on is None and scored == latest):
        return None
    if scored["step"] is None:
        raise ValueError(
            f"{layout.eval_dir(run)}: the evaluation scored no checkpoint of {RUN_NAMES[run]} (its model path has "
            "no global_step_N); move it away to evaluate the latest checkpoint"
        )
    if trains_on is None and scored["step"] == latest["step"]:
        trains_on = f"it scored step {scored['step']} before that checkpoint was written again"
    elif trains_on is None:
        trains_on = f"it scored step {scored['step']}; the latest checkpoint is step {latest['step']}"
    return scored["step"], trains_on


def evaluation_steps(
    config: LearnConfig, layout: Layout, run: str, model: Path, trains_on: str | None = None
) -> list[Step]:
    """The evaluation of a trained run's model, after keeping a finished evaluation of another checkpoint
    of that run (outdated_evaluation) under eval/<run>_step_<the step it scored>."""
    outdated = outdated_evaluation(layout, run, trains_on)
    if outdated is None:
        return [eval_step(config, layout, run, model)]
    scored_step, why = outdated
    return [keep_earlier_evaluation_step(layout, run, scored_step), eval_step(config, layout, run, model, why)]


def keep_earlier_evaluation_step(layout: Layout, run: str, step: int) -> Step:
    """Moves the evaluation of `run`'s checkpoint of `step` out of the way of the next one's; it never
    replaces an evaluation kept earlier."""
    current, kept = layout.eval_dir(run), layout.eval_dir(f"{run}_step_{step}")

    def keep() -> None:
        if not current.is_dir():
            return
        if kept.exists():
            raise FileExistsError(f"{kept} exists: move it away to keep the evaluation in {current}")
        current.rename(kept)

    move = ["move", str(current), "->", str(kept)]
    return Step(f"keep the evaluation of {RUN_NAMES[run]} step {step}", move, run=keep)


def publish_checkpoint(checkpoints: Path, inside: str, link: Path, base_model: Path) -> Path:
    """Point `link` at the Hugging Face copy of the latest checkpoint under `checkpoints`, adding the
    tokenizer and processor files of the base model that the copy lacks."""
    from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

    latest = find_latest_ckpt_path(str(checkpoints))
    if latest is None:
        raise FileNotFoundError(f"{checkpoints}: no checkpoint (latest_checkpointed_iteration.txt) to publish")
    model_dir = Path(latest) / inside
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no Hugging Face model (config.json) in the latest checkpoint")
    for name in MODEL_SIDE_FILES:
        if (base_model / name).is_file() and not (model_dir / name).exists():
            shutil.copy2(base_model / name, model_dir / name)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(model_dir)
    return model_dir


class DoneStepsDiffer(RuntimeError):
    """Steps done earlier that the command would skip, but whose results no longer fit it."""


# How a recorded command writes the proof's work dir, so that a work dir moved elsewhere still matches.
WORK_DIR_MARK = "<work_dir>"


def recorded_command(step: Step, work_dir: Path | None) -> list[str]:
    """What a step's command asks for, as recorded to compare with a rerun's: its arguments without the
    interpreter, without the settings known only when it starts and without Hydra's own (`hydra.run.dir`:
    where the run's config and log go, not what it trains)."""
    arguments = [argument for argument in step.argv[1:] if not (setting_key(argument) or "").startswith("hydra.")]
    return arguments if work_dir is None else [argument.replace(str(work_dir), WORK_DIR_MARK) for argument in arguments]


def setting_key(argument: str) -> str | None:
    """The key of a key=value setting (`--size=learn`, Hydra's `+key=value` too); None for other arguments."""
    key, is_setting, _ = argument.partition("=")
    return key if is_setting else None


def repeated_keys(arguments: list[str]) -> set[str]:
    keys = [key for key in map(setting_key, arguments) if key is not None]
    return {key for key in keys if keys.count(key) > 1}


def compared_command(arguments: list[str]) -> tuple:
    """A recorded command as it compares with another: its settings in any order where their keys are
    distinct (they then ask for the same in every order), else every argument in order (a later value
    of a key given twice overrides the earlier)."""
    if repeated_keys(arguments):
        return tuple(arguments)
    others = tuple(argument for argument in arguments if setting_key(argument) is None)
    return others, frozenset(argument for argument in arguments if setting_key(argument) is not None)


def command_difference(earlier: list[str], now: list[str]) -> str | None:
    """What a step was done with and this command asks for instead; None where they ask for the same."""
    if compared_command(earlier) == compared_command(now):
        return None
    done_with = shlex.join(argument for argument in earlier if argument not in now)
    asked = shlex.join(argument for argument in now if argument not in earlier)
    if done_with or asked:
        return f"done with {done_with or 'nothing more'}; this command asks for {asked or 'nothing more'}"
    # The same arguments in an order that matters: name those of the keys given more than once.
    repeated = repeated_keys(earlier) | repeated_keys(now)
    earlier_order = [argument for argument in earlier if setting_key(argument) in repeated] or earlier
    order_now = [argument for argument in now if setting_key(argument) in repeated] or now
    return (
        f"done with {shlex.join(earlier_order)}; this command asks for {shlex.join(order_now)} (the same in "
        "another order, which matters where a key is given more than once: its last value holds)"
    )


def check_done_steps(steps: list[Step], times: dict[str, dict], work_dir: Path | None) -> None:
    """Stop before anything runs when a step that would be skipped was done with another command than
    this one's (as recorded in `times`), or comes after a step this command does again whose results
    later steps are made from (they were made from results that will be replaced)."""
    problems, redo, again = [], [], None
    for step in steps:
        if step.skip_if_exists is None:
            continue
        if not step.finished():
            again = again or (step if step.feeds_later_steps else None)
            continue
        earlier = times.get(step.name, {}).get("command")
        difference = None if earlier is None else command_difference(earlier, recorded_command(step, work_dir))
        if difference is not None:
            problems.append(f"{step.name}: {difference}")
        elif again is not None:
            problems.append(f"{step.name}: made from the results of '{again.name}', which this command makes again")
        else:
            continue
        if step.skip_if_exists.parent not in redo:
            redo.append(step.skip_if_exists.parent)
    if problems:
        raise DoneStepsDiffer(
            "Steps done earlier do not fit this command, so their results are not reused:\n"
            + "".join(f"  - {problem}\n" for problem in problems)
            + f"Run the proof in another work_dir, or delete {', '.join(map(str, redo))} to do them again."
        )


class StepFailed(RuntimeError):
    def __init__(self, number: int, name: str, described: str, returncode: int, reason: str | None = None):
        reason = reason or f"failed with exit code {returncode}"
        super().__init__(f"step {number} ({name}) {reason}: {described}")
        self.returncode = returncode


def step_file_prefix(number: int, step: Step) -> str:
    """`07_grpo_with_mixed_reward_from_the_sft`: the start of the names of a step's files in logs/."""
    return f"{number:02d}_" + "_".join(re.findall(r"[a-z0-9]+", step.name.lower()))[:32].rstrip("_")


def execute(
    steps: list[Step],
    env: dict[str, str],
    times_log: Path | None = None,
    deadline: float | None = None,
    watch_dir: Path | None = None,
    work_dir: Path | None = None,
) -> None:
    """Run the steps in order, skipping those already done. With `times_log`, each command that
    succeeds records there, by step name, its wall time with the start of this execution and its
    command (`work_dir` in it written as WORK_DIR_MARK); entries of steps not run again are kept, and a
    step done earlier with another command stops the execution before anything runs
    (check_done_steps). A command still running at `deadline` (a Unix time) is stopped and fails the
    execution. With `watch_dir`, each command leaves `<NN_step>.progress.log` there (snapshots of its
    processes) and, when stopped at the deadline, `<NN_step>.stacks.txt`. A command whose settings known
    only when it starts leave it too little time (TooLateToStart) is not started, and ends the execution
    with that error, naming the step."""
    times = read_step_times(times_log) if times_log is not None else {}
    check_done_steps(steps, times, work_dir)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    for number, step in enumerate(steps, start=1):
        if step.done_earlier():
            print(f"[{number}/{len(steps)}] {step.name}: done earlier ({step.skip_if_exists})", flush=True)
            continue
        again = f" (again: {step.again})" if step.again else ""
        if step.run is not None:
            print(f"[{number}/{len(steps)}] {step.name}{again}: {step.describe()}", flush=True)
            step.run()
            continue
        try:
            command = step.command()
        except TooLateToStart as late:
            print(f"[{number}/{len(steps)}] {step.name}: not started: {late}", flush=True)
            raise TooLateToStart(f"{step.name} was not started: {late}") from None
        described = step.describe(command)
        print(f"[{number}/{len(steps)}] {step.name}{again}: {described}", flush=True)
        started = time.monotonic()
        limit_s = None if deadline is None else deadline - time.time()
        if limit_s is not None and limit_s <= 0:
            spent = "was not started: the time budget is spent"
            raise StepFailed(number, step.name, described, EXIT_OUT_OF_TIME, spent)
        prefix = None if watch_dir is None else watch_dir / step_file_prefix(number, step)
        returncode, _ = run_with_limit(command, None, limit_s, {**env, **step.env}, watch_prefix=prefix)
        if returncode == EXIT_OUT_OF_TIME and limit_s is not None and time.monotonic() - started >= limit_s:
            where = "" if prefix is None else f" (where it stood: {prefix}{STACKS_SUFFIX})"
            reason = f"was stopped at the end of the time budget{where}"
            raise StepFailed(number, step.name, described, returncode, reason)
        if returncode == EXIT_NOTHING_TO_TRAIN and step.recorded_in is not None:
            # An earlier run of it ended (failed or was stopped) after saving its last step.
            print(f"[{number}/{len(steps)}] {step.name}: its checkpoints hold its last step: done", flush=True)
        elif returncode:
            raise StepFailed(number, step.name, described, returncode)
        if times_log is not None:
            seconds, earlier = time.monotonic() - started, times.get(step.name) if step.again else None
            times[step.name] = {
                "seconds": round(seconds + (earlier["seconds"] if earlier else 0), 1),
                "execution": started_at,
                "command": recorded_command(step, work_dir),
                **({"earlier_executions": executions(earlier)} if earlier else {}),
            }
            times_log.parent.mkdir(parents=True, exist_ok=True)
            times_log.write_text(json.dumps(times, indent=2) + "\n")


def read_step_times(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.is_file() else {}


def executions(entry: dict) -> list[str]:
    """The executions of the proof a command's recorded time was spent in (more than one when it ran again)."""
    return [*entry.get("earlier_executions", []), entry["execution"]]


# --- report ------------------------------------------------------------------------------------


# The later and the earlier run of each delta the table shows.
DELTAS = (("grpo", "sft"), ("sft", "base"))


def learning_table(summaries: dict[str, dict]) -> tuple[list[str], list[list]]:
    """Per task (and `all`): n, then accuracy, format rate and mean score for base / SFT / GRPO with
    the deltas GRPO - SFT and SFT - base, of the runs in `summaries`."""
    runs = [run for run in RUNS if run in summaries]
    deltas = [(later, earlier) for later, earlier in DELTAS if later in summaries and earlier in summaries]
    header = ["task", "n"]
    for metric in ("accuracy", "format", "score"):
        header += [f"{metric} {run}" for run in runs] + [f"Δ{metric} {later}-{earlier}" for later, earlier in deltas]
    tasks = sorted(set().union(*(summary["tasks"] for summary in summaries.values())), key=lambda t: (t == "all", t))
    rows = []
    for task in tasks:
        stats = {run: summaries[run]["tasks"].get(task) for run in runs}
        missing = [run for run, value in stats.items() if value is None]
        if missing:
            raise ValueError(f"task {task!r} has no evaluation in run(s) {missing}")
        counts = {stats[run]["n"] for run in runs}
        if len(counts) != 1:
            raise ValueError(f"task {task!r} was evaluated on different row counts: {sorted(counts)}")
        row = [task, counts.pop()]
        for metric in ("accuracy", "format", "score"):
            values = {run: stats[run][metric] for run in runs}
            row += [*values.values(), *(values[later] - values[earlier] for later, earlier in deltas)]
        rows.append(row)
    return header, rows


def target_checks(header: list[str], rows: list[list]) -> dict[str, bool]:
    """The proof's targets for GRPO over SFT on the held-out split."""
    by_task = {row[0]: dict(zip(header, row)) for row in rows}
    overall = by_task.pop("all")
    deltas = [stats["Δaccuracy grpo-sft"] for stats in by_task.values()]
    slack = 1e-9  # rates are ratios of counts; 0.5 - 0.45 must count as 0.05
    return {
        "overall accuracy up by >= 0.05": overall["Δaccuracy grpo-sft"] >= 0.05 - slack,
        "accuracy up on >= 3 of the tasks": sum(delta > slack for delta in deltas) >= 3,
        "no task down by more than 0.02": all(delta >= -0.02 - slack for delta in deltas),
        "format rate >= 0.95 after GRPO": overall["format grpo"] >= 0.95 - slack,
    }


def answer_spread_table(summaries: dict[str, dict]) -> tuple[list[str], list[list]]:
    """Per task, the share of responses giving the run's most common answer (and that answer) for
    base / SFT / GRPO (those in `summaries`), after the same share among the references (the same val
    rows in every run)."""
    from mixed_r1_verl.eval.report import shown_answer

    runs = [run for run in RUNS if run in summaries]
    rows = []
    for task in sorted(summaries[runs[-1]]["answers"]):
        spreads = [summaries[run]["answers"][task] for run in runs]
        cells = [f"{spread['top_share']:.2f} {shown_answer(spread['top_answer'])}" for spread in spreads]
        rows.append([task, f"{spreads[0]['reference_top_share']:.2f}", *cells])
    return ["task", "reference", *runs], rows


def learning_cell(column: str, value) -> str:
    """Values to three decimals, deltas (columns named Δ...) with their sign."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:+.3f}" if column.startswith("Δ") else f"{value:.3f}"


ACCURACY_METRIC = "accuracy/mean"
TOP_ANSWER_METRIC = "top_answer_share"


def task_curves(steps: dict[int, dict], name: str) -> dict[str, list[tuple[int, float]]]:
    """Per task, (step, value of `mixed_r1/<task>/<name>`) for every step that logged it."""
    from mixed_r1_verl.run_logs import task_metrics
    from mixed_r1_verl.verl_adapter.metrics import METRIC_PREFIX

    curves: dict[str, list[tuple[int, float]]] = {}
    for step, metrics in sorted(steps.items()):
        for task, values in task_metrics(metrics, METRIC_PREFIX).items():
            if name in values:
                curves.setdefault(task, []).append((step, values[name]))
    return dict(sorted(curves.items()))


def plot_accuracy(log: Path, out: Path) -> Path:
    """PNG of per-task training accuracy against GRPO step from the file logger's JSONL (with the runs
    it resumed from) and, beside it when logged, the share of each task's rollouts giving its most common
    answer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mixed_r1_verl.run_logs import read_resumed_metrics_log
    from mixed_r1_verl.verl_adapter.metrics import METRIC_PREFIX

    steps = read_resumed_metrics_log(log)
    panels = [
        (task_curves(steps, ACCURACY_METRIC), "training accuracy (rollouts)"),
        (task_curves(steps, TOP_ANSWER_METRIC), "share of the most common answer (rollouts)"),
    ]
    if not panels[0][0]:
        raise ValueError(
            f"{log}: no {METRIC_PREFIX}/<task>/{ACCURACY_METRIC} metrics (is trainer.v1.trainer_mode=mixed_r1_sync?)"
        )
    panels = [(curves, label) for curves, label in panels if curves]
    figure, all_axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for axes, (curves, label) in zip(all_axes[0], panels):
        for task, points in curves.items():
            axes.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3, label=task)
        axes.set_xlabel("GRPO step")
        axes.set_ylabel(label)
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def seconds_cell(entry: dict) -> str:
    runs = len(executions(entry))
    return f"{entry['seconds']:.1f}" + (f" ({runs} runs)" if runs > 1 else "")


def wall_time(steps: list[Step], times: dict[str, dict]) -> tuple[str, bool | None]:
    """Markdown table of each command's wall time and their total, and whether the total is within the
    target (None while a command has no time). Each command is timed when it ran, so a proof run in
    parts (stop_after, or a rerun after a failure) sums the commands of its executions; a command run
    again (continue_grpo) counts each of its runs."""
    from mixed_r1_verl.eval.report import markdown_table

    commands = [step.name for step in steps if step.run is None]
    timed = [name for name in commands if name in times]
    total = sum(times[name]["seconds"] for name in timed)
    execution_count = len({execution for name in timed for execution in executions(times[name])})
    rows = [[name, seconds_cell(times[name]) if name in times else "–"] for name in commands]
    notes = [f"{len(commands) - len(timed)} of {len(commands)} commands untimed"] if len(timed) < len(commands) else []
    notes += [f"summed over {execution_count} executions"] if execution_count > 1 else []
    rows.append(["total", f"{total:.1f} ({total / 60:.1f} min{''.join('; ' + note for note in notes)})"])
    within_target = total <= WALL_TIME_TARGET_S if len(timed) == len(commands) else None
    return markdown_table(["step", "seconds"], rows), within_target


def current_summaries(layout: Layout) -> tuple[dict[str, dict], list[str]]:
    """The summary of each run's evaluation of its current model (for SFT and GRPO, of their latest
    checkpoint), and why each other run has none."""
    from mixed_r1_verl.eval.report import SUMMARY_FILE, load_summary

    summaries, missing = {}, []
    for run in RUNS:
        name, eval_dir = RUN_NAMES[run], layout.eval_dir(run)
        latest = None if run == "base" else latest_scored_model(layout, run)
        scored = None if run == "base" else evaluated_model(eval_dir)
        if run != "base" and latest is None:
            missing.append(f"{name} has no checkpoint")
        elif not (eval_dir / SUMMARY_FILE).is_file():
            missing.append(f"the {name} model is not evaluated")
        elif run != "base" and scored != latest:
            missing.append(f"{eval_dir} scored {name} step {scored['step']}, not the latest, {latest['step']}")
        else:
            summaries[run] = load_summary(eval_dir)
    return summaries, missing


def trained_steps(checkpoints: Path) -> int:
    """The step of the latest checkpoint under `checkpoints`; 0 before one is saved."""
    tracker = checkpoints / CHECKPOINT_TRACKER
    return int(tracker.read_text()) if tracker.is_file() else 0


def write_report(layout: Layout, steps: list[Step], not_started: str | None = None) -> None:
    """The table, the targets, the answer spread, the wall times, the comparisons and the plot, of the
    runs whose current model is evaluated (the others named under the table with `not_started`, why this
    execution did not start a command)."""
    from mixed_r1_verl.eval.report import markdown_table, write_comparison

    summaries, missing = current_summaries(layout)
    header, rows = learning_table(summaries)
    layout.report.mkdir(parents=True, exist_ok=True)
    table = markdown_table(header, rows, learning_cell)
    checks = target_checks(header, rows) if {"sft", "grpo"} <= summaries.keys() else None
    times = read_step_times(layout.step_times)
    time_table, within_target = wall_time(steps, times)
    if checks is None:
        verdict = "- not checked: the table has no SFT and GRPO models to compare"
    else:
        verdict = "\n".join(f"- [{'x' if met else ' '}] {name}" for name, met in checks.items())
    wall_check = f"- [{'x' if within_target else ' '}] whole proof <= {WALL_TIME_TARGET_S // 60} min wall"
    if within_target is None:
        wall_check += " (not known: a command has no time)"
    sft_steps, grpo_steps = trained_steps(layout.sft_checkpoints), trained_steps(layout.grpo_checkpoints)
    ended_early = grpo_ended_early(layout)
    grpo_planned = grpo_steps if ended_early is None else ended_early[1]
    grpo_trained = f"{grpo_steps}" + (
        f" of {grpo_planned} (the time budget ended it; continue_grpo=true trains on from there)" if ended_early else ""
    )
    not_shown = "".join(f"Not in the table: {reason}.\n\n" for reason in missing)
    not_shown += f"{not_started}.\n\n" if not_started else ""
    spread_table = markdown_table(*answer_spread_table(summaries))
    model = describe_model(layout.base_model)
    layout.table.write_text(
        f"{table}\n\nModel: {model}. SFT steps trained: {sft_steps}. GRPO steps trained: {grpo_trained}.\n\n"
        f"{not_shown}Targets (GRPO over SFT, held-out val):\n\n{verdict}\n{wall_check}\n\n"
        "Answer spread: the share of responses giving each run's most common answer, and that answer, against "
        "the same share among the references. A share far above the reference's means the model answers alike "
        f"whatever the image (it learned the answer prior, not the task).\n\n{spread_table}\n\n"
        f"Wall time of each command:\n\n{time_table}\n"
    )
    (layout.report / "learning_table.json").write_text(
        json.dumps(
            {
                "header": header,
                "rows": rows,
                "model": model,
                "sft_steps": sft_steps,
                "grpo_steps": grpo_steps,
                "grpo_planned_steps": grpo_planned,
                "not_in_table": missing,
                "not_started": not_started,
                "targets": checks,
                "answer_spread": {run: summary["answers"] for run, summary in summaries.items()},
                "step_times": times,
                "wall_time_target_met": within_target,
            },
            indent=2,
        )
    )
    for later, earlier in reversed(DELTAS):
        if earlier in summaries and later in summaries:
            out = layout.report / f"{earlier}_vs_{later}"
            write_comparison([summaries[earlier], summaries[later]], (earlier, later), out)
    if layout.grpo_log.is_file():
        plot_accuracy(layout.grpo_log, layout.plot)
    print(layout.table.read_text())


def artefacts(layout: Layout) -> dict[str, str]:
    places = {
        "base model": layout.base_model,
        "converted data": layout.data,
        "SFT checkpoints": layout.sft_checkpoints,
        "SFT model": layout.sft_model,
        "GRPO checkpoints": layout.grpo_checkpoints,
        "GRPO model": layout.grpo_model,
        **{f"evaluation {run}": layout.eval_dir(run) for run in RUNS},
        "step wall times": layout.step_times,
        "SFT metrics": layout.sft_log,
        "GRPO metrics": layout.grpo_log,
        "SFT runs (Hydra)": layout.sft_runs,
        "GRPO runs (Hydra)": layout.grpo_runs,
        "table": layout.table,
        "comparisons": layout.report,
        "plot": layout.plot,
    }
    return {name: str(path) for name, path in places.items()}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if asks_for_help(argv):
        print(settings_help(__doc__, LearnConfig))
        return
    from mixed_r1_verl.eval import BACKENDS as EVAL_BACKENDS

    config = parse_settings(LearnConfig, argv)
    if not 0 < config.sft_budget_share < 1:
        usage_error(f"sft_budget_share={config.sft_budget_share}: must lie between 0 and 1")
    if config.time_budget_s is not None and config.time_budget_s <= 0:
        usage_error(f"time_budget_s={config.time_budget_s:g}: must be more than 0 seconds, or null")
    if config.eval_batch_size < 1:
        usage_error(f"eval_batch_size={config.eval_batch_size}: must be at least 1 prompt per generation call")
    if config.eval_backend not in EVAL_BACKENDS:
        usage_error(f"eval_backend={config.eval_backend}: must be one of {', '.join(EVAL_BACKENDS)}")
    layout = Layout(Path(config.work_dir).absolute())
    started = time.time()
    try:
        steps = plan(config, started)
    except ValueError as error:
        raise SystemExit(f"{error} (see --help)") from None
    if config.dry_run:
        for number, step in enumerate(steps, start=1):
            mark = f" (again: {step.again})" if step.again else ""
            mark = " (done earlier: skipped)" if step.done_earlier() else mark
            try:
                described = step.describe()
            except TooLateToStart as late:
                described = step.describe(step.argv)
                mark = mark if step.done_earlier() else f" (would not be started: {late})"
            print(f"[{number}/{len(steps)}] {step.name}{mark}\n    {described}")
        try:
            check_done_steps(steps, read_step_times(layout.step_times), layout.root)
        except DoneStepsDiffer as error:
            raise SystemExit(str(error)) from None
    else:
        import torch

        if not torch.cuda.is_available():
            print(NO_GPU_MESSAGE, file=sys.stderr, end="")
            sys.exit(EXIT_NEEDS_GPU)
        cpu_shortfall = grpo_ray_cpu_shortfall(steps, os.environ)
        if cpu_shortfall:
            print(cpu_shortfall, file=sys.stderr, end="")
            sys.exit(EXIT_NEEDS_GPU)
        layout.logs.mkdir(parents=True, exist_ok=True)
        try:
            deadline = None if config.time_budget_s is None else started + config.time_budget_s
            env = {**os.environ, "MIXED_R1_LEARN_DIR": str(layout.root)}
            execute(steps, env, layout.step_times, deadline, watch_dir=layout.logs, work_dir=layout.root)
        except DoneStepsDiffer as error:
            raise SystemExit(str(error)) from None
        except StepFailed as failure:
            print(f"{failure}\nFix the cause and run the same command again: finished steps are skipped.", file=sys.stderr)
            sys.exit(failure.returncode)
        except TooLateToStart as late:
            write_report(layout, steps, not_started=str(late))
            print(
                f"\n{late}. The table is of the models evaluated so far; the same command goes on from there "
                "under a new time budget: finished steps are skipped."
            )
        if config.stop_after is not None:
            print(
                f"\nStopped after evaluating the {config.stop_after} model (stop_after={config.stop_after}). The same "
                "command without stop_after goes on from there: finished steps are skipped."
            )
    print("\nArtefacts:" if not config.dry_run else "\nArtefacts (once run):")
    for name, path in artefacts(layout).items():
        print(f"  {name:18s} {path}")


if __name__ == "__main__":
    main()

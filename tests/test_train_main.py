"""`python -m mixed_r1_verl.main` as a user runs it: real subprocesses, real exit codes."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from hydra._internal.utils import get_args_parser
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from data_helpers import checkout_env
from task_plugins import write_distribution

from mixed_r1_verl.entry import (
    HYDRA_INFO_OPTIONS,
    HYDRA_INFO_TOPICS,
    HYDRA_LONG_OPTIONS,
    HYDRA_OPTIONS_WITH_A_VALUE,
    hydra_options_last,
    sweep_jobs,
)
from mixed_r1_verl.settings import EXIT_USAGE
from mixed_r1_verl.main import (
    exit_unless_data_files_exist,
    file_logger_env,
    file_logger_path,
    prepare_metrics_log,
    prepare_smoke,
)

REPO = Path(__file__).resolve().parent.parent


def run_main(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The entry run from `cwd`, by default an empty directory, where Hydra's `outputs/` is left behind."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    env.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory() as scratch:
        return subprocess.run(
            [sys.executable, "-m", "mixed_r1_verl.main", *args],
            cwd=cwd or scratch, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a machine without a CUDA GPU")
def test_training_without_a_gpu_exits_2_and_says_what_runs_here(tmp_path):
    result = run_main("recipe=smoke", f"mixed_r1.smoke.work_dir={tmp_path}")
    assert result.returncode == 2, result.stderr
    assert "needs at least one CUDA GPU" in result.stderr
    assert "mixed_r1_verl.data.prepare" in result.stderr and "compute_score" in result.stderr
    assert "tracker file" not in result.stdout + result.stderr, "a first run has no checkpoint to speak of"
    assert not any(tmp_path.iterdir()), "nothing may be built before the GPU check"


def test_an_installed_task_that_cannot_be_loaded_stops_the_entry_before_anything_starts(tmp_path):
    site = write_distribution(tmp_path / "site", "broken_task", "raise ImportError('no counting here')\n",
                              {"counting": "broken_task:COUNTING"})  # fmt: skip
    work_dir = tmp_path / "smoke"
    python_path = checkout_env(site)["PYTHONPATH"]
    result = run_main("recipe=smoke", f"mixed_r1.smoke.work_dir={work_dir}", env={"PYTHONPATH": python_path})
    assert result.returncode == EXIT_USAGE, result.stderr
    assert (
        "entry point counting = broken_task:COUNTING of group mixed_r1_verl.tasks (package broken_task) cannot be "
        "loaded: ImportError: no counting here"
    ) in result.stderr
    assert not work_dir.exists(), "nothing may be built before the check"


def test_a_reward_option_the_manager_does_not_know_stops_the_entry_before_anything_starts(tmp_path):
    result = run_main("recipe=qwen25vl_7b", "+reward.reward_kwargs.overlong_buffer_cfg.lenght=512", cwd=tmp_path)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "reward.reward_kwargs.overlong_buffer_cfg.lenght is not one of its keys (enable, len" in result.stderr


def test_verls_old_top_level_reward_settings_stop_the_entry_naming_where_they_go_now(tmp_path):
    """verl 0.9.1's trainer reads only `reward.*`: an older script's custom reward would go unused."""
    old = ["custom_reward_function.path=my_reward.py", "reward_model.reward_manager=naive", "reward_model.enable=true"]
    result = run_main("recipe=qwen25vl_7b", *old, cwd=tmp_path)
    assert result.returncode == EXIT_USAGE, result.stderr
    for setting, place in zip(old, ["reward.custom_reward_function.path", "reward.reward_manager.name",
                                    "reward.reward_model.enable"]):  # fmt: skip
        assert f"{setting} is a setting verl 0.9.1's trainer no longer reads: set {place}" in result.stderr


def test_a_sweep_whose_jobs_would_share_a_checkpoint_directory_is_refused_before_the_first_trains(tmp_path):
    sweep = ["-m", "recipe=qwen25vl_7b", "actor_rollout_ref.actor.optim.lr=1e-6,2e-6"]
    result = run_main(*sweep, cwd=tmp_path)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert (
        "-m: the sweep's jobs (actor_rollout_ref.actor.optim.lr=1e-06; actor_rollout_ref.actor.optim.lr=2e-06) would "
        f"all train into trainer.default_local_dir={tmp_path}/checkpoints/mixed_r1/qwen25vl_7b, each resuming the one "
        "before"
    ) in result.stderr
    assert "'trainer.experiment_name=run_${actor_rollout_ref.actor.optim.lr}'" in result.stderr
    # Named after the swept value, each job trains into its own directory: the entry goes on to its GPU check.
    named = run_main(*sweep, "trainer.experiment_name=lr${actor_rollout_ref.actor.optim.lr}", cwd=tmp_path)
    assert "-m: the sweep's jobs" not in named.stderr
    if not torch.cuda.is_available():
        assert named.returncode == 2 and "needs at least one CUDA GPU" in named.stderr


@pytest.mark.parametrize(
    "checkpoint_dir", ["checkpoints/run_${hydra:job.num}", "${hydra:runtime.output_dir}/checkpoints"]
)
def test_a_sweep_naming_its_directories_by_hydras_job_number_or_output_dir_goes_on(tmp_path, checkpoint_dir):
    sweep = ["-m", "recipe=qwen25vl_7b", "actor_rollout_ref.actor.optim.lr=1e-6,2e-6"]
    result = run_main(*sweep, f"trainer.default_local_dir={checkpoint_dir}", cwd=tmp_path)
    assert "-m: the sweep's jobs" not in result.stderr
    if not torch.cuda.is_available():
        assert result.returncode == 2 and "needs at least one CUDA GPU" in result.stderr, result.stderr


def test_a_glob_sweep_over_a_config_group_is_checked_as_its_jobs(tmp_path):
    result = run_main("-m", "recipe=qwen25vl_7b", "filtering=glob(*)", cwd=tmp_path)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "-m: the sweep's jobs (filtering=off; filtering=on) would all train into" in result.stderr
    choice = "${hydra:runtime.choices.filtering}"
    named = [f"trainer.experiment_name=run_{choice}", f"trainer.default_local_dir=checkpoints/run_{choice}"]
    assert " ".join(f"'{setting}'" for setting in named) in result.stderr, "a group's choice is no config key"
    # Named after its choice, as the message says, each job trains into its own directory.
    apart = run_main("-m", "recipe=qwen25vl_7b", "filtering=glob(*)", *named, cwd=tmp_path)
    assert "-m: the sweep's jobs" not in apart.stderr
    if not torch.cuda.is_available():
        assert apart.returncode == 2 and "needs at least one CUDA GPU" in apart.stderr


def test_sweep_jobs_combine_the_swept_values_as_hydras_basic_sweeper_does():
    argv = ["-m", "recipe=smoke", "a=1,2", "+b=range(0,2)", "~c", "--cfg", "job"]
    assert sweep_jobs(argv) == [
        ["recipe=smoke", "a=1", "+b=0", "~c"], ["recipe=smoke", "a=1", "+b=1", "~c"],
        ["recipe=smoke", "a=2", "+b=0", "~c"], ["recipe=smoke", "a=2", "+b=1", "~c"],
    ]  # fmt: skip
    assert sweep_jobs(["recipe=glob(*)"]) is None


def test_hydras_options_go_after_the_overrides_in_their_order_with_their_values():
    argv = ["recipe=smoke", "a=1", "--cfg", "job", "a=2", "-m", "b=3,4", "--info", "c=5", "-p", "trainer", "--resolve"]
    reordered = hydra_options_last(argv)
    assert reordered == [
        "recipe=smoke", "a=1", "a=2", "b=3,4", "c=5", "--cfg", "job", "-m", "--info", "-p", "trainer", "--resolve",
    ]  # fmt: skip
    parsed = get_args_parser().parse_args(reordered)
    assert parsed.overrides == ["recipe=smoke", "a=1", "a=2", "b=3,4", "c=5"]
    assert (parsed.cfg, parsed.multirun, parsed.info, parsed.package) == ("job", True, "all", "trainer")
    topic_first = ["--info", "defaults", "a=1", "--cfg=job", "b=2"]
    assert hydra_options_last(topic_first) == ["a=1", "b=2", "--info", "defaults", "--cfg=job"]
    # Hydra's parser takes a long option abbreviated where the abbreviation names one option.
    abbreviated = ["a=1", "--cf", "job", "b=2", "--config-n", "other", "--inf", "defaults", "c=3"]
    assert hydra_options_last(abbreviated) == ["a=1", "b=2", "c=3", "--cf", "job", "--config-n", "other", "--inf",
                                               "defaults"]  # fmt: skip
    assert hydra_options_last(["a=1", "--conf", "b=2"]) == ["a=1", "b=2", "--conf"], "--conf names three options"
    # The options taking a value are those of Hydra's parser.
    options = [action for action in get_args_parser()._actions if action.option_strings]
    long_options = {name for action in options for name in action.option_strings if name.startswith("--")}
    assert long_options == set(HYDRA_LONG_OPTIONS)
    with_a_value = {name for action in options if action.nargs is None for name in action.option_strings}
    assert with_a_value == HYDRA_OPTIONS_WITH_A_VALUE
    [info] = [action for action in options if action.nargs == "?"]
    assert (set(info.option_strings), set(info.choices)) == (HYDRA_INFO_OPTIONS, HYDRA_INFO_TOPICS)


def test_cfg_job_prints_the_merged_config_with_overrides(tmp_path):
    result = run_main("recipe=qwen25vl_7b", "actor_rollout_ref.rollout.n=12", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["reward"]["reward_manager"]["name"] == "mixed_r1"
    assert config["trainer"]["v1"]["trainer_mode"] == "mixed_r1_sync"
    assert config["algorithm"]["adv_estimator"] == "grpo"
    assert config["actor_rollout_ref"]["rollout"]["n"] == 12
    assert config["actor_rollout_ref"]["model"]["path"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    # verl's own defaults are there too: the config is inherited, not copied.
    assert config["actor_rollout_ref"]["actor"]["clip_ratio"] == 0.2


def test_help_lists_recipes_without_a_gpu_or_a_recipe():
    result = run_main("--help")
    assert result.returncode == 0
    for recipe in (
        "smoke", "smoke_internvl", "smoke_qwen3vl", "qwen25vl_3b", "qwen25vl_7b", "qwen25vl_32b", "qwen3vl_8b",
        "internvl3_8b",
    ):  # fmt: skip
        assert recipe in result.stdout
    assert "switches (default first): filtering=off|on, lora=off|on\n" in result.stdout
    for setting in ("data_dir:", "stop_by: null", "cluster_wait_s: 300"):
        assert setting in result.stdout, f"the mixed_r1 settings and their defaults are listed: {setting}"


def test_missing_recipe_is_a_usage_error():
    result = run_main("trainer.nnodes=1")
    assert result.returncode == 2
    assert "recipe=<name>" in result.stderr


def test_unknown_recipe_names_the_available_ones():
    result = run_main("recipe=llama_70b", "--cfg", "job")
    assert result.returncode != 0
    assert "llama_70b" in result.stderr and "qwen25vl_7b" in result.stderr


def write_parquet(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"prompt": ["x"]}), path)


def test_smoke_preparation_builds_the_model_once_and_keeps_existing_data(tmp_path):
    smoke = OmegaConf.create({"work_dir": str(tmp_path), "rows_per_task": 2, "seed": 0, "model_family": "qwen2_5_vl"})
    model_dir, data_dir = tmp_path / "tiny_qwen25vl", tmp_path / "data"
    for split in ("train", "val"):
        write_parquet(data_dir / f"{split}.parquet")
    data_before = {p: p.stat().st_mtime_ns for p in data_dir.iterdir()}

    prepare_smoke(smoke, str(model_dir), str(data_dir), 1024)
    assert AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids("<|image_pad|>") is not None
    model_files = {p: p.stat().st_mtime_ns for p in model_dir.iterdir()}

    prepare_smoke(smoke, str(model_dir), str(data_dir), 1024)
    assert {p: p.stat().st_mtime_ns for p in model_dir.iterdir()} == model_files
    assert {p: p.stat().st_mtime_ns for p in data_dir.iterdir()} == data_before
    assert not (tmp_path / "synthetic").exists()


def test_smoke_preparation_writes_both_splits_with_every_task_and_counted_prompts(tmp_path):
    smoke = OmegaConf.create({"work_dir": str(tmp_path), "rows_per_task": 4, "seed": 0, "model_family": "qwen2_5_vl"})
    data_dir = tmp_path / "data"
    write_parquet(data_dir / "train.parquet")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), data_dir / "val.parquet")  # an old empty split

    prepare_smoke(smoke, str(tmp_path / "tiny_qwen25vl"), str(data_dir), 1024)
    for split in ("train", "val"):
        rows = pq.read_table(data_dir / f"{split}.parquet").to_pylist()
        assert {row["extra_info"]["task"] for row in rows} == {"matching", "chart", "grounding", "open_ended"}
        assert all(row["images"] for row in rows)
        assert all(0 < row["extra_info"]["prompt_length"] <= 1024 for row in rows)


def test_smoke_data_converted_for_another_model_family_is_refused_not_reused(tmp_path, capsys):
    smoke = OmegaConf.create({"work_dir": str(tmp_path), "rows_per_task": 2, "seed": 0, "model_family": "qwen2_5_vl"})
    data_dir = tmp_path / "data"
    prepare_smoke(smoke, str(tmp_path / "tiny_qwen25vl"), str(data_dir), 1024)
    internvl = OmegaConf.merge(smoke, {"model_family": "internvl"})
    with pytest.raises(SystemExit) as exit_info:
        prepare_smoke(internvl, str(tmp_path / "tiny_internvl"), str(data_dir), 1024)
    assert exit_info.value.code == EXIT_USAGE
    assert f"{data_dir} was converted for qwen2_5_vl, not for mixed_r1.smoke.model_family=internvl" in capsys.readouterr().err
    unknown = OmegaConf.merge(smoke, {"model_family": "llava"})
    with pytest.raises(SystemExit):
        prepare_smoke(unknown, str(tmp_path / "tiny_llava"), str(tmp_path / "other_data"), 1024)
    assert "the smoke recipes build qwen2_5_vl, qwen3_vl or internvl" in capsys.readouterr().err
    assert not (tmp_path / "tiny_llava").exists()


def test_missing_data_files_stop_with_the_setting_that_names_them(tmp_path, capsys):
    write_parquet(tmp_path / "train.parquet")
    data = OmegaConf.create({"train_files": [str(tmp_path / "train.parquet")], "val_files": str(tmp_path / "val.parquet")})
    with pytest.raises(SystemExit):
        exit_unless_data_files_exist(data, {})
    message = capsys.readouterr().err
    assert f"data.val_files: {tmp_path / 'val.parquet'} does not exist. Convert the data first" in message
    write_parquet(tmp_path / "val.parquet")
    exit_unless_data_files_exist(data, {})


def test_data_missing_from_a_ray_jobs_working_copy_is_told_to_be_shared(monkeypatch, tmp_path, capsys):
    """The launcher ships no data with the code: a relative data path in a job names a file not there."""
    monkeypatch.chdir(tmp_path)
    data = OmegaConf.create({"train_files": str(tmp_path / "data" / "train.parquet"), "val_files": "/x/val.parquet"})
    with pytest.raises(SystemExit):
        exit_unless_data_files_exist(data, {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"})
    message = capsys.readouterr().err
    assert f"data.train_files: {tmp_path / 'data' / 'train.parquet'} does not exist." in message
    assert "set MIXED_R1_DATA, or data.train_files, to an absolute path every node reads" in message


def write_checkpoint(checkpoint_dir: Path, step: int) -> None:
    """What verl leaves after saving step `step`: the step folder and its tracker file."""
    (checkpoint_dir / f"global_step_{step}").mkdir(parents=True)
    (checkpoint_dir / "latest_checkpointed_iteration.txt").write_text(str(step))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the second run would train on a GPU machine")
def test_rerun_past_the_last_step_says_so_instead_of_training_nothing(tmp_path):
    write_checkpoint(tmp_path / "checkpoints", 6)

    done = run_main("recipe=smoke", f"mixed_r1.smoke.work_dir={tmp_path}")
    assert done.returncode == 3, done.stderr
    assert f"{tmp_path / 'checkpoints'} holds a checkpoint of step 6" in done.stderr
    assert "ends at step 6 (trainer.total_training_steps)" in done.stderr
    assert "raise trainer.total_training_steps" in done.stderr and "resume_mode=disable" in done.stderr

    more = run_main("recipe=smoke", f"mixed_r1.smoke.work_dir={tmp_path}", "trainer.total_training_steps=9")
    assert more.returncode == 2 and "needs at least one CUDA GPU" in more.stderr, "9 > 6: on to the GPU check"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a run that passes the checks would train on a GPU machine")
def test_resume_settings_verl_would_refuse_after_starting_its_workers_are_refused_first(tmp_path):
    smoke = ("recipe=smoke", f"mixed_r1.smoke.work_dir={tmp_path / 'smoke'}")
    step = tmp_path / "checkpoints" / "global_step_3"
    step.mkdir(parents=True)
    for settings, refusal in [
        (["trainer.resume_mode=resum"], "trainer.resume_mode='resum': use auto (resume from the latest checkpoint"),
        (["trainer.resume_mode=resume_path"], "trainer.resume_mode=resume_path needs trainer.resume_from_path="),
        (["trainer.resume_mode=resume_path", f"trainer.resume_from_path={tmp_path / 'global_step_9'}"],
         f"trainer.resume_from_path={tmp_path / 'global_step_9'} does not exist"),
        (["trainer.resume_mode=resume_path", f"trainer.resume_from_path={step.parent}"],
         f"trainer.resume_from_path={step.parent} is no checkpoint's global_step_N directory"),
        (["trainer.resume_mode=resume_path", f"trainer.resume_from_path={step}"],
         f"trainer.resume_from_path={step} holds no actor/ checkpoint"),
    ]:  # fmt: skip
        refused = run_main(*smoke, *settings)
        assert refused.returncode == 2 and refusal in refused.stderr, (settings, refused.stderr)
        assert "CUDA GPU" not in refused.stderr, "refused before the GPU check"
    (step / "actor").mkdir()
    # A path relative to where the entry runs is the checkpoint there, wherever verl's workers run.
    resumed = run_main(*smoke, "trainer.resume_mode=resume_path", "trainer.resume_from_path=checkpoints/global_step_3",
                       cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 2 and "needs at least one CUDA GPU" in resumed.stderr, resumed.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a run that passes the checks would train on a GPU machine")
def test_a_run_that_would_resume_a_checkpoint_trained_with_or_without_lora_the_other_way_is_refused(tmp_path):
    """lora=on keeps the recipe's checkpoint directory: verl would load the one kind into the other's model, and
    stop only once Ray, its workers and vLLM are up."""
    smoke = ("recipe=smoke", f"mixed_r1.smoke.work_dir={tmp_path}")
    checkpoints = tmp_path / "checkpoints"
    write_checkpoint(checkpoints, 3)
    actor = checkpoints / "global_step_3" / "actor"
    actor.mkdir()
    # What verl's FSDP checkpoint manager writes beside a LoRA run's shards.
    (actor / "lora_train_meta.json").write_text(json.dumps({"r": 64, "lora_alpha": 32, "task_type": "CAUSAL_LM"}))

    full = run_main(*smoke)
    assert full.returncode == 2 and "CUDA GPU" not in full.stderr, full.stderr
    assert (
        f"{checkpoints / 'global_step_3'}, the latest checkpoint in trainer.default_local_dir, which this run resumes "
        "(trainer.resume_mode=auto), was trained with LoRA adapters (rank 64), and this run trains the full weights "
        "(actor_rollout_ref.model.lora_rank=0): verl would not load the one into the other, and would stop only after "
        "start-up. To resume that run, run with lora=on as it did; to train this one, set another "
        "trainer.default_local_dir (or trainer.experiment_name, which names it unless the recipe sets it), or start "
        "afresh with trainer.resume_mode=disable.\n"
    ) in full.stderr
    assert "needs at least one CUDA GPU" in run_main(*smoke, "lora=on").stderr, "a LoRA run resumes it"
    assert "needs at least one CUDA GPU" in run_main(*smoke, "trainer.resume_mode=disable").stderr

    (actor / "lora_train_meta.json").unlink()
    lora = run_main(*smoke, "lora=on", "trainer.resume_mode=resume_path", f"trainer.resume_from_path={actor.parent}")
    assert lora.returncode == 2 and (
        f"trainer.resume_from_path={actor.parent} was trained with the full weights, and this run trains LoRA "
        "adapters (actor_rollout_ref.model.lora_rank=64)"
    ) in lora.stderr, lora.stderr
    assert "run without lora=on as it did; to train this one, point it at a checkpoint of a run like" in lora.stderr
    assert "needs at least one CUDA GPU" in run_main(*smoke).stderr, "a full-parameter run resumes it"


def test_sft_resumes_from_a_resume_from_path_set_with_resume_mode_auto_too(tmp_path, capsys):
    from mixed_r1_verl.main import exit_unless_resume_settings_work

    trainer = OmegaConf.create({"resume_mode": "auto", "resume_from_path": str(tmp_path / "global_step_2")})
    exit_unless_resume_settings_work(trainer)  # verl's GRPO trainer reads no path in auto mode
    with pytest.raises(SystemExit) as refused:
        exit_unless_resume_settings_work(trainer, sft=True)
    assert refused.value.code == 2 and "global_step_2 does not exist" in capsys.readouterr().err
    (tmp_path / "global_step_2").mkdir()
    exit_unless_resume_settings_work(trainer, sft=True)  # SFT's checkpoint holds its shards, no actor/


def test_a_tracker_naming_a_deleted_checkpoint_is_refused_instead_of_training_from_step_0(tmp_path, capsys):
    """A user removed a bad last checkpoint to resume from the one before; verl would start over and save
    over it."""
    from mixed_r1_verl.main import exit_if_training_is_done

    checkpoints = tmp_path / "checkpoints"
    for step in (20, 100, 200):
        write_checkpoint(checkpoints, step)
    (checkpoints / "global_step_200").rmdir()
    trainer = OmegaConf.create({"resume_mode": "auto", "default_local_dir": str(checkpoints)})
    with pytest.raises(SystemExit) as ended:
        exit_if_training_is_done(trainer, 300, "trainer.total_training_steps")
    assert ended.value.code == 2
    assert capsys.readouterr().err.startswith(
        f"{checkpoints / 'latest_checkpointed_iteration.txt'} names step 200, whose checkpoint "
        f"{checkpoints}/global_step_200 is missing (checkpoints there: global_step_20, global_step_100); resumed, "
        "verl would train from step 0 over them."
    )
    # verl's SFT trainer in auto mode resumes from resume_from_path where one is set; GRPO's does not.
    from_path = OmegaConf.create({**trainer, "resume_from_path": str(checkpoints / "global_step_100")})
    exit_if_training_is_done(from_path, 300, "trainer.total_training_steps", sft=True)
    with pytest.raises(SystemExit):
        exit_if_training_is_done(from_path, 300, "trainer.total_training_steps")
    # A run resumed from its last step's path would train nothing (GRPO) or one step past its plan (SFT).
    at_path = OmegaConf.create({**from_path, "resume_mode": "resume_path"})
    for sft, settings in ((True, from_path), (True, at_path), (False, at_path)):
        exit_if_training_is_done(settings, 101, "trainer.total_training_steps", sft=sft)
        with pytest.raises(SystemExit) as done:
            exit_if_training_is_done(settings, 100, "trainer.total_training_steps", sft=sft)
        assert done.value.code == 3
        assert "point trainer.resume_from_path at an earlier step or use trainer.resume_mode=disable" in (
            capsys.readouterr().err
        )
    # A run that only validates resumes to validate that checkpoint.
    exit_if_training_is_done(OmegaConf.create({**at_path, "val_only": True}), 100, "trainer.total_training_steps")
    (checkpoints / "latest_checkpointed_iteration.txt").write_text("100")
    exit_if_training_is_done(trainer, 300, "trainer.total_training_steps")  # resumes from step 100
    exit_if_training_is_done(OmegaConf.create({**trainer, "resume_mode": "disable"}), 300, "")


def test_the_step_bound_comes_from_the_rows_verl_reads_without_total_training_steps(tmp_path):
    from mixed_r1_verl.main import planned_steps

    pq.write_table(pa.table({"prompt": [str(i) for i in range(20)]}), tmp_path / "train.parquet")
    config = OmegaConf.create(
        {"trainer": {"total_training_steps": None, "total_epochs": 3},
         "data": {"train_files": str(tmp_path / "train.parquet"), "train_batch_size": 8}}
    )  # fmt: skip
    assert planned_steps(config) == (6, "20 training rows / data.train_batch_size x trainer.total_epochs")
    # verl's dataset reads at most data.train_max_samples rows (-1: all of them).
    for limit, bound in ((10, 3), (20, 6), (100, 6), (-1, 6)):
        config.data.train_max_samples = limit
        assert planned_steps(config)[0] == bound


def test_more_steps_than_the_epochs_hold_are_refused(capsys):
    from mixed_r1_verl.main import exit_if_steps_outrun_the_epochs

    trainer = OmegaConf.create({"total_training_steps": 7, "total_epochs": 3})
    with pytest.raises(SystemExit) as stopped:
        exit_if_steps_outrun_the_epochs(trainer, 2, "verl's trainer")
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert "trainer.total_training_steps=7 is more than the 6 steps of trainer.total_epochs=3 (2 a epoch)" in message
    assert "verl's trainer would end after the last epoch without saving a checkpoint" in message
    exit_if_steps_outrun_the_epochs(OmegaConf.merge(trainer, {"total_training_steps": 6}), 2, "verl's trainer")
    exit_if_steps_outrun_the_epochs(OmegaConf.merge(trainer, {"total_training_steps": None}), 2, "verl's trainer")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a machine without a CUDA GPU")
def test_multi_node_run_needs_shared_absolute_output_paths(tmp_path):
    relative = run_main("recipe=qwen25vl_32b", cwd=tmp_path)
    assert relative.returncode == 2
    assert "trainer.nnodes=4" in relative.stderr and "trainer.default_local_dir=checkpoints/" in relative.stderr
    assert "VERL_FILE_LOGGER_ROOT=." in relative.stderr

    shared = run_main(
        "recipe=qwen25vl_32b", f"trainer.default_local_dir={tmp_path}/ckpt", cwd=tmp_path,
        env={"VERL_FILE_LOGGER_ROOT": str(tmp_path / "logs")},
    )  # fmt: skip
    assert shared.returncode == 2 and "needs at least one CUDA GPU" in shared.stderr, "past the path check"


def test_a_rerun_keeps_the_metrics_verls_file_logger_would_erase(tmp_path):
    config = OmegaConf.create({"trainer": {"project_name": "mixed_r1", "experiment_name": "smoke"}})
    path = file_logger_path(config, file_logger_env({"VERL_FILE_LOGGER_ROOT": str(tmp_path)}))
    assert path == tmp_path / "mixed_r1" / "smoke.jsonl"
    explicit = tmp_path / "mine.jsonl"
    assert file_logger_path(config, file_logger_env({"VERL_FILE_LOGGER_PATH": str(explicit)})) == explicit

    assert prepare_metrics_log(path) is None and path.parent.is_dir(), "nothing logged yet; the directory is made"
    path.write_text("")
    assert prepare_metrics_log(path) is None and path.exists(), "an empty log holds nothing to keep"
    first_run, second_run = '{"step": 1, "data": {}}\n', '{"step": 4, "data": {}}\n'
    path.write_text(first_run)
    assert prepare_metrics_log(path) == tmp_path / "mixed_r1" / "smoke.1.jsonl" and not path.exists()
    path.write_text(second_run)
    assert prepare_metrics_log(path) == tmp_path / "mixed_r1" / "smoke.2.jsonl"
    assert (path.parent / "smoke.1.jsonl").read_text() == first_run
    assert (path.parent / "smoke.2.jsonl").read_text() == second_run


def test_a_log_prob_micro_batch_that_does_not_divide_the_step_stops_the_entry_before_start_up(tmp_path):
    result = run_main(
        "recipe=smoke", f"mixed_r1.smoke.work_dir={tmp_path}", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64"
    )
    assert result.returncode == 2
    assert "log_prob_micro_batch_size_per_gpu=64 does not divide the 32 samples each GPU holds" in result.stderr
    assert "use_dynamic_bsz=true" in result.stderr and not (tmp_path / "data").exists()


def test_a_step_the_actor_update_cannot_split_into_mini_batches_stops_the_entry_before_start_up(tmp_path):
    result = run_main("recipe=smoke", f"mixed_r1.smoke.work_dir={tmp_path}", "data.train_batch_size=12")
    assert result.returncode == 2
    assert "data.train_batch_size=12 is not a multiple of actor_rollout_ref.actor.ppo_mini_batch_size=8" in (
        result.stderr
    )
    assert "needs at least one CUDA GPU" not in result.stderr and not (tmp_path / "data").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a time ahead would go on to train on a GPU machine")
def test_a_stop_by_time_that_has_passed_or_is_no_time_stops_the_entry_before_start_up(tmp_path):
    passed = int(time.time()) - 600
    late = run_main("recipe=smoke", f"mixed_r1.smoke.work_dir={tmp_path}", f"mixed_r1.stop_by={passed}")
    assert late.returncode == 2
    assert f"mixed_r1.stop_by={passed} was 6" in late.stderr and "no step could end before it" in late.stderr

    garbled = run_main("recipe=smoke", f"mixed_r1.smoke.work_dir={tmp_path}", "mixed_r1.stop_by=tomorrow")
    assert garbled.returncode == 2 and "'tomorrow' is not a Unix time in seconds" in garbled.stderr
    assert not (tmp_path / "data").exists()

    ahead = run_main("recipe=smoke", f"mixed_r1.smoke.work_dir={tmp_path}", f"mixed_r1.stop_by={passed + 4000}")
    assert ahead.returncode == 2 and "needs at least one CUDA GPU" in ahead.stderr, "ahead: on to the GPU check"

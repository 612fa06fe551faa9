"""The real merged config (verl's ppo_trainer + conf/mixed_r1.yaml + a recipe), composed with Hydra and
checked with verl's own validate_config for every recipe."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config

from mixed_r1_verl.main import (
    GRPO_OPTIONAL_SIZE_KEYS,
    GRPO_SIZE_KEYS,
    PRIMARY_CONFIG,
    actor_update_mismatches,
    config_dir,
    exit_unless_sizes_are_positive,
    filtering_setting_errors,
    image_bound_setting_errors,
    log_prob_micro_batch_mismatches,
    make_paths_absolute,
    pin_embedding_model,
    recipe_dir,
    recipe_rate_under_lora,
    register_recipes,
    reward_setting_errors,
    rollout_parallel_mismatches,
    sampler_setting_errors,
    sync_step_mismatches,
    train,
)
from mixed_r1_verl.models.tiny_qwen25vl import TEST_SIZE_VLLM_KV_CACHE_BYTES, kv_cache_bytes_per_token
from mixed_r1_verl.rewards import task_names
from mixed_r1_verl.settings import EXIT_USAGE

RECIPES = [
    "internvl3_8b", "learn", "qwen25vl_32b", "qwen25vl_3b", "qwen25vl_7b", "qwen3vl_8b", "smoke", "smoke_internvl",
    "smoke_qwen3vl",
]  # fmt: skip
# The learning proof trains a 27M-parameter model, which needs a larger step than the paper's.
ACTOR_LR = {"learn": 1e-5}


def compose_recipe(recipe: str, *overrides: str):
    register_recipes()
    with initialize_config_dir(str(config_dir()), version_base=None):
        return compose(PRIMARY_CONFIG, overrides=[f"recipe={recipe}", *overrides])


def test_every_recipe_file_is_registered():
    assert register_recipes() == RECIPES
    assert sorted(p.stem for p in recipe_dir().glob("*.yaml")) == RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_keeps_mixed_r1_grpo_defaults_and_passes_verl_validation(recipe):
    config = compose_recipe(recipe)
    actor = config.actor_rollout_ref.actor
    assert config.reward.reward_manager.name == "mixed_r1"
    assert config.trainer.v1.trainer_mode == "mixed_r1_sync"
    assert config.trainer.use_v1 is True
    assert config.algorithm.adv_estimator == "grpo"
    assert config.algorithm.use_kl_in_reward is False
    assert actor.optim.lr == pytest.approx(ACTOR_LR.get(recipe, 1e-6))
    assert actor.use_kl_loss is True and actor.kl_loss_type == "low_var_kl"
    assert config.actor_rollout_ref.rollout.name == "vllm"
    assert config.actor_rollout_ref.rollout.n >= 2, "GRPO needs a group of responses per prompt"
    assert config.data.image_key == "images"
    assert config.data.train_files == f"{config.mixed_r1.data_dir}/train.parquet"
    assert config.data.val_files == f"{config.mixed_r1.data_dir}/val.parquet"
    assert config.trainer.experiment_name == recipe
    assert need_critic(config) is False
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=False)
    exit_unless_sizes_are_positive(config, GRPO_SIZE_KEYS, GRPO_OPTIONAL_SIZE_KEYS)
    assert log_prob_micro_batch_mismatches(config) == []
    assert actor_update_mismatches(config) == []
    assert rollout_parallel_mismatches(config) == []


@pytest.mark.parametrize("recipe", ["internvl3_8b", "qwen25vl_32b", "qwen25vl_3b", "qwen25vl_7b", "qwen3vl_8b"])
def test_gpu_recipes_split_every_batch_on_two_nodes_of_four_gpus(recipe):
    config = compose_recipe(recipe, "trainer.nnodes=2", "trainer.n_gpus_per_node=4")
    assert actor_update_mismatches(config) + log_prob_micro_batch_mismatches(config) == []
    assert rollout_parallel_mismatches(config) == []


@pytest.mark.parametrize("key", ["ulysses_sequence_parallel_size", "fsdp_config.ulysses_sequence_parallel_size"])
def test_a_sequence_parallel_size_that_does_not_divide_the_gpus_is_named(key):
    for size in (3, 16):  # 16 is more than the recipe's 8 GPUs
        config = compose_recipe("qwen25vl_7b", f"actor_rollout_ref.actor.{key}={size}")
        assert actor_update_mismatches(config) == [
            f"actor_rollout_ref.actor.{key}={size} does not divide the 8 GPU(s), which sequence parallelism groups "
            f"{size} at a time"
        ]


def test_mini_and_micro_batches_the_actor_update_cannot_split_are_named():
    # verl's own config check passes all of these; its workers assert them at the first update.
    config = compose_recipe("qwen25vl_7b", "data.train_batch_size=96")
    assert actor_update_mismatches(config) == [
        "data.train_batch_size=96 is not a multiple of actor_rollout_ref.actor.ppo_mini_batch_size=64: "
        "a step's prompts must split into whole mini-batches"
    ]
    validate_config(config, use_reference_policy=True, use_critic=False)
    [micro] = actor_update_mismatches(compose_recipe("learn", "trainer.n_gpus_per_node=8"))
    assert micro.startswith(
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=64 does not divide the 32 samples of a mini-batch"
    )  # 32 prompts x 8 responses / 8 GPUs
    dynamic = compose_recipe("learn", "trainer.n_gpus_per_node=8", "actor_rollout_ref.actor.use_dynamic_bsz=true")
    assert actor_update_mismatches(dynamic) == []
    [uneven] = actor_update_mismatches(
        compose_recipe("qwen25vl_32b", "data.train_batch_size=120", "actor_rollout_ref.actor.ppo_mini_batch_size=6")
    )
    assert uneven.startswith("the 48 samples of a mini-batch (actor_rollout_ref.actor.ppo_mini_batch_size=6 x ")
    assert uneven.endswith("do not split evenly over 32 GPUs")
    sequence_parallel = compose_recipe("qwen25vl_7b", "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2")
    assert actor_update_mismatches(sequence_parallel) == [], "4 groups of 2 GPUs: 128 samples each, 32 micro-batches"


@pytest.mark.parametrize(
    "setting",
    [
        "data.train_batch_size=0", "data.train_batch_size=-8", "actor_rollout_ref.actor.ppo_mini_batch_size=0",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=0", "trainer.n_gpus_per_node=0",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=0",
    ],
)  # fmt: skip
def test_sizes_below_1_stop_the_entry_naming_them_before_its_checks_divide_by_them(setting, capsys):
    with pytest.raises(SystemExit) as stopped:
        train(compose_recipe("smoke", setting))
    assert stopped.value.code == EXIT_USAGE
    assert capsys.readouterr().err == f"{setting}: it must be a whole number of at least 1.\n"


def test_sync_sub_steps_that_do_not_divide_the_batch_are_named():
    # verl's config check passes it; its trainer asserts it inside the first step.
    config = compose_recipe("qwen25vl_7b", "+trainer.v1.sync.parameter_sync_step=3")
    validate_config(config, use_reference_policy=True, use_critic=False)
    assert sync_step_mismatches(config) == [
        "trainer.v1.sync.parameter_sync_step=3 does not divide data.train_batch_size=128 into equal parts"
    ]
    assert sync_step_mismatches(compose_recipe("qwen25vl_7b", "+trainer.v1.sync.parameter_sync_step=4")) == []
    assert sync_step_mismatches(compose_recipe("qwen25vl_7b")) == []


def test_vllm_replicas_that_do_not_tile_the_gpus_are_named():
    tensor_parallel_3 = compose_recipe("qwen25vl_7b", "actor_rollout_ref.rollout.tensor_model_parallel_size=3")
    assert rollout_parallel_mismatches(tensor_parallel_3) == [
        "each vLLM replica takes 3 GPUs (actor_rollout_ref.rollout.tensor_model_parallel_size=3), which does not "
        "divide the 8 GPUs of trainer.nnodes=1 x trainer.n_gpus_per_node=8"
    ]
    one_replica = compose_recipe("qwen25vl_32b", "trainer.nnodes=1", "trainer.n_gpus_per_node=4")
    assert rollout_parallel_mismatches(one_replica) == []


def test_log_prob_micro_batches_that_do_not_divide_each_gpus_samples_are_named():
    # smoke: 8 prompts x 4 responses on one GPU.
    config = compose_recipe("smoke", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64")
    [mismatch] = log_prob_micro_batch_mismatches(config)
    assert mismatch.startswith("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64 does not divide the 32 ")
    config = compose_recipe("smoke", "trainer.n_gpus_per_node=8", "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=3")
    assert [m.split("=")[0] for m in log_prob_micro_batch_mismatches(config)] == [
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"
    ]  # 4 samples per GPU: neither 16 nor 3 divides them
    config = compose_recipe(
        "smoke", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64", "actor_rollout_ref.actor.use_dynamic_bsz=true"
    )
    assert log_prob_micro_batch_mismatches(config) == []


@pytest.mark.parametrize("recipe", ["qwen25vl_3b", "qwen25vl_7b", "qwen3vl_8b"])
def test_single_node_recipes_use_one_node_of_eight_gpus(recipe):
    config = compose_recipe(recipe)
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (1, 8)
    assert config.actor_rollout_ref.rollout.n == 8


def test_32b_recipe_is_multi_node():
    config = compose_recipe("qwen25vl_32b")
    assert config.trainer.nnodes > 1
    assert config.actor_rollout_ref.rollout.tensor_model_parallel_size > 1


LR_KEY = "actor_rollout_ref.actor.optim.lr"


@pytest.mark.parametrize("recipe", RECIPES)
def test_lora_on_trains_at_its_rate_or_at_the_recipes_own_named_in_one_line(recipe):
    """lora=on comes before the recipe in the defaults: a recipe's own rate wins over lora=on's."""
    register_recipes()
    with initialize_config_dir(str(config_dir()), version_base=None):
        config = compose(PRIMARY_CONFIG, overrides=[f"recipe={recipe}", "lora=on"], return_hydra_config=True)
        chosen = compose(PRIMARY_CONFIG, overrides=[f"recipe={recipe}", "lora=on", f"{LR_KEY}=3e-5"],
                         return_hydra_config=True)  # fmt: skip
    lora_file = config_dir() / "lora" / "on.yaml"
    rate, note = OmegaConf.select(config, LR_KEY), recipe_rate_under_lora(config, config.hydra, lora_file, LR_KEY)
    if note is None:
        assert rate == 1e-5, "the README's rate of lora=on"
    else:
        assert note.startswith(f"lora=on with recipe={recipe}: the adapters train at the recipe's own {LR_KEY}={rate},")
    assert OmegaConf.select(chosen, LR_KEY) == 3e-5
    assert recipe_rate_under_lora(chosen, chosen.hydra, lora_file, LR_KEY) is None, "the rate the command line sets"


def test_smoke_recipe_runs_on_one_gpu_and_checkpoints_midway():
    config = compose_recipe("smoke")
    model = config.actor_rollout_ref.model
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (1, 1)
    # The attention choice is main's (flash-attn when importable, else sdpa), not the recipe's.
    assert "attn_implementation" not in model.override_config
    assert config.trainer.total_training_steps >= 5
    assert 0 < config.trainer.save_freq < config.trainer.total_training_steps
    assert config.trainer.resume_mode == "auto"
    assert "console" in config.trainer.logger
    work_dir = config.mixed_r1.smoke.work_dir
    assert model.path == f"{work_dir}/tiny_qwen25vl"
    assert config.mixed_r1.data_dir == f"{work_dir}/data"
    assert config.reward.reward_kwargs.embedding_model == model.path


@pytest.mark.parametrize("recipe", ["smoke", "smoke_internvl", "smoke_qwen3vl"])
def test_smoke_recipes_give_vllm_a_kv_cache_that_holds_many_steps_of_their_tiny_model(
    recipe, tiny_model_dir, tiny_internvl_dir, tiny_qwen3vl_dir
):
    config = compose_recipe(recipe)
    budget = config.actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes
    assert budget == TEST_SIZE_VLLM_KV_CACHE_BYTES
    model_dir = {"smoke": tiny_model_dir, "smoke_internvl": tiny_internvl_dir, "smoke_qwen3vl": tiny_qwen3vl_dir}[recipe]
    step_tokens = (
        config.data.train_batch_size * config.actor_rollout_ref.rollout.n
        * (config.data.max_prompt_length + config.data.max_response_length)
    )  # fmt: skip
    assert budget >= 100 * step_tokens * kv_cache_bytes_per_token(model_dir)


@pytest.mark.parametrize(("family", "model_family"), [("internvl", "internvl"), ("qwen3vl", "qwen3_vl")])
def test_each_family_smoke_recipe_is_the_smoke_recipe_on_its_own_model_data_and_checkpoints(
    family, model_family, monkeypatch, tmp_path
):
    monkeypatch.setenv("MIXED_R1_SMOKE_DIR", str(tmp_path / "smoke"))
    qwen, family_smoke = compose_recipe("smoke"), compose_recipe(f"smoke_{family}")
    resolved = OmegaConf.to_container(family_smoke, resolve=True)
    work_dir = tmp_path / f"smoke_{family}"
    assert resolved["mixed_r1"]["smoke"] == {**OmegaConf.to_container(qwen.mixed_r1.smoke, resolve=True),
                                             "work_dir": str(work_dir), "model_family": model_family}  # fmt: skip
    assert resolved["actor_rollout_ref"]["model"]["path"] == str(work_dir / f"tiny_{family}")
    assert resolved["reward"]["reward_kwargs"]["embedding_model"] == str(work_dir / f"tiny_{family}")
    assert resolved["mixed_r1"]["data_dir"] == str(work_dir / "data")
    assert resolved["trainer"]["default_local_dir"] == str(work_dir / "checkpoints")
    assert family_smoke.algorithm == qwen.algorithm and family_smoke.data.sampler == qwen.data.sampler
    assert family_smoke.trainer.total_training_steps == qwen.trainer.total_training_steps
    for key in ("n", "gpu_memory_utilization", "enforce_eager", "response_length"):
        assert family_smoke.actor_rollout_ref.rollout[key] == qwen.actor_rollout_ref.rollout[key], key


def test_command_line_overrides_of_verl_keys_beat_the_recipe():
    config = compose_recipe(
        "qwen25vl_7b",
        "actor_rollout_ref.rollout.n=16",
        "actor_rollout_ref.actor.optim.lr=3e-6",
        "trainer.n_gpus_per_node=4",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    )
    assert config.actor_rollout_ref.rollout.n == 16
    assert config.actor_rollout_ref.actor.optim.lr == pytest.approx(3e-6)
    assert config.trainer.n_gpus_per_node == 4
    assert config.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"


@pytest.mark.parametrize("recipe", RECIPES)
def test_reward_manager_options_are_settable_on_every_recipe(recipe):
    config = compose_recipe(
        recipe,
        "reward.reward_kwargs.bmas_device=cpu",
        "reward.reward_kwargs.format_weight=0.2",
        "reward.reward_kwargs.bmas_linger_ms=10",
    )
    options = config.reward.reward_kwargs
    assert (options.bmas_device, options.format_weight, options.bmas_linger_ms) == ("cpu", 0.2, 10)


def test_unknown_verl_key_is_rejected_not_ignored():
    with pytest.raises(Exception, match="trainer.not_a_key"):
        compose_recipe("smoke", "trainer.not_a_key=1")


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXED_R1_DATA", str(tmp_path))
    config = compose_recipe("qwen25vl_7b")
    assert config.data.train_files == f"{tmp_path}/train.parquet"


def test_relative_paths_are_pinned_to_the_launch_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = compose_recipe("smoke", "mixed_r1.smoke.work_dir=runs/smoke")
    make_paths_absolute(config, ("mixed_r1.data_dir", "mixed_r1.smoke.work_dir"))
    resolved = OmegaConf.to_container(config, resolve=True)
    work_dir = tmp_path / "runs" / "smoke"
    assert resolved["mixed_r1"]["smoke"]["work_dir"] == str(work_dir)
    assert Path(resolved["data"]["train_files"]) == work_dir / "data" / "train.parquet"
    assert Path(resolved["actor_rollout_ref"]["model"]["path"]) == work_dir / "tiny_qwen25vl"


def test_filtering_settings_the_sampler_would_refuse_mid_run_are_named_before_start_up():
    assert filtering_setting_errors(compose_recipe("smoke", "filtering=on")) == []
    assert filtering_setting_errors(compose_recipe("smoke")) == [], "no filtering, nothing to check"
    (typo,) = filtering_setting_errors(compose_recipe("smoke", "filtering=on", "algorithm.filter_groups.metric=scor"))
    assert "metric='scor'" in typo and "score, accuracy, correct, format, error" in typo
    (negative,) = filtering_setting_errors(
        compose_recipe("smoke", "filtering=on", "trainer.v1.sampler.sampler_kwargs.max_refill_rounds=-1")
    )
    assert "max_refill_rounds must be an integer >= 0, got -1" in negative
    custom = compose_recipe(
        "smoke", "filtering=on", "algorithm.filter_groups.metric=acc", "reward.custom_reward_function.path=my_reward.py"
    )
    assert filtering_setting_errors(custom) == [], "a custom reward function's own fields are not known here"


@pytest.mark.parametrize("recipe", RECIPES)
def test_reward_options_the_reward_workers_would_refuse_are_named_before_start_up(recipe):
    assert reward_setting_errors(compose_recipe(recipe)) == []
    overlong = [f"reward.reward_kwargs.overlong_buffer_cfg.{key}" for key in ("enable=true", "log=true")]
    assert reward_setting_errors(compose_recipe(recipe, *overlong)) == []
    (unknown,) = reward_setting_errors(compose_recipe(recipe, "+reward.reward_kwargs.max_resp_len=512"))
    assert unknown.startswith("reward.reward_kwargs.max_resp_len is not an option of the mixed_r1 reward manager")
    per_task = ["reward.reward_kwargs.format_weight={matchng: 0.5, chart: 2}",
                "reward.reward_kwargs.task_map={x: charts}"]  # fmt: skip
    (typos,) = reward_setting_errors(compose_recipe(recipe, *per_task))
    assert typos == (
        f"reward.reward_kwargs.format_weight: 'matchng' is not a task (tasks: {', '.join(task_names())}); "
        "reward.reward_kwargs.format_weight.chart: 2 is not a number in [0, 1]; "
        f"reward.reward_kwargs.task_map.x: 'charts' is not a task (tasks: {', '.join(task_names())})"
    )
    too_long = compose_recipe(recipe, *overlong, "data.max_response_length=64")
    assert reward_setting_errors(too_long) == [
        "reward.reward_kwargs.overlong_buffer_cfg.len must be a whole number of tokens from 1 to the response length "
        "(64, actor_rollout_ref.rollout.response_length), got 128"
    ]
    naive = compose_recipe(recipe, "reward.reward_manager.name=naive", "+reward.reward_kwargs.max_resp_len=512")
    assert reward_setting_errors(naive) == [], "another manager's options are its own"


@pytest.mark.parametrize("value, shown", [("50", "50"), ("1.5", "1.5"), ("0", "0"), ("abc", "'abc'")])
def test_an_iou_threshold_the_grounding_reward_refuses_is_named_before_start_up(value, shown):
    """The reward would score every grounding sample 0, with an error, for the whole run."""
    (refused,) = reward_setting_errors(compose_recipe("qwen25vl_7b", f"reward.reward_kwargs.iou_threshold={value}"))
    assert refused == f"reward.reward_kwargs.iou_threshold: {shown} is not a number in (0, 1]"
    for accepted in ("null", "0.5", "1"):
        config = compose_recipe("qwen25vl_7b", f"reward.reward_kwargs.iou_threshold={accepted}")
        assert reward_setting_errors(config) == []


BMAS_REFUSALS = [
    ("bmas_device=gpu", "bmas_device: 'gpu' is not one of auto, cpu, cuda"),
    ("bmas_num_gpus=abc", "bmas_num_gpus: 'abc' is not a finite number of at least 0"),
    ("bmas_gpu_wait_s=-1", "bmas_gpu_wait_s: -1 is not a finite number of at least 0"),
    ("bmas_linger_ms=abc", "bmas_linger_ms: 'abc' is not a finite number of at least 0"),
]


@pytest.mark.parametrize("setting, refusal", BMAS_REFUSALS)
def test_bmas_options_the_reward_workers_would_refuse_are_named_before_start_up(setting, refusal):
    """The reward workers are built after the actor and reference models have loaded on the GPUs."""
    refused = reward_setting_errors(compose_recipe("qwen25vl_7b", f"reward.reward_kwargs.{setting}"))
    assert refused == [f"reward.reward_kwargs.{refusal}"]


def test_an_embedding_model_path_is_pinned_or_named_before_start_up(tmp_path, monkeypatch):
    def pinned(model, *overrides):
        config = compose_recipe("qwen25vl_7b", f"reward.reward_kwargs.embedding_model={model}", *overrides)
        return pin_embedding_model(config), config.reward.reward_kwargs.embedding_model

    missing = tmp_path / "no_model"
    assert pinned(missing)[0] == [
        f"reward.reward_kwargs.embedding_model={missing}: {missing} does not exist (nor is '{missing}' a hub id)"
    ]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "embeddings").mkdir()
    # The reward workers do not share the launching directory: a relative path is made absolute.
    assert pinned("embeddings") == ([], str(tmp_path / "embeddings"))
    assert pinned("null") == ([], None)
    custom = "reward.custom_reward_function.path=my_reward.py"
    assert pinned(missing, custom)[0] == [], "a custom reward loads no model"


@pytest.mark.parametrize(
    "setting, refusal",
    [
        ("data.sampler.class_name=TaskBalancdSampler",
         "data.sampler.class_name=TaskBalancdSampler: the class cannot be loaded (AttributeError: Object not found "
         "in module: object_name='TaskBalancdSampler'"),
        ("data.sampler.class_path=pkg://mixed_r1_verl.data.balanced_samplr",
         "data.sampler.class_path=pkg://mixed_r1_verl.data.balanced_samplr data.sampler.class_name="
         "TaskBalancedSampler: the class cannot be loaded (ModuleNotFoundError: No module named "
         "'mixed_r1_verl.data.balanced_samplr')"),
        ("data.sampler.class_path=null",
         "data.sampler needs both class_path and class_name, got class_path=None, class_name='TaskBalancedSampler'"),
    ],
)  # fmt: skip
def test_a_sampler_the_trainer_could_not_load_is_named_before_start_up(setting, refusal):
    """The trainer loads it only after building the training and validation sets."""
    assert sampler_setting_errors(compose_recipe("smoke")) == []
    assert sampler_setting_errors(compose_recipe("qwen25vl_7b")) == [], "no sampler set"
    (refused,) = sampler_setting_errors(compose_recipe("smoke", setting))
    assert refusal in refused


def test_a_lone_pixel_bound_in_data_mm_processor_kwargs_is_named_before_start_up():
    assert image_bound_setting_errors(compose_recipe("smoke")) == []
    both = "+data.mm_processor_kwargs={min_pixels: 3136, max_pixels: 200704}"
    assert image_bound_setting_errors(compose_recipe("smoke", both)) == []
    (lone,) = image_bound_setting_errors(compose_recipe("smoke", "+data.mm_processor_kwargs.max_pixels=200704"))
    assert lone.startswith("data.mm_processor_kwargs sets max_pixels without min_pixels")


@pytest.mark.parametrize("trainer_mode", ["sync", "colocate_async"])
def test_a_sampler_set_for_a_trainer_mode_that_does_not_apply_it_is_refused_naming_both(trainer_mode):
    """verl's own trainers build their RandomSampler whatever data.sampler says."""
    (refused,) = sampler_setting_errors(compose_recipe("smoke", f"trainer.v1.trainer_mode={trainer_mode}"))
    assert refused.startswith("data.sampler.class_name=TaskBalancedSampler is applied only by ")
    assert f"trainer.v1.trainer_mode=mixed_r1_sync, not trainer.v1.trainer_mode={trainer_mode}," in refused
    verl_shuffle = ("data.sampler.class_path=null", "data.sampler.class_name=null")
    shuffled = compose_recipe("smoke", f"trainer.v1.trainer_mode={trainer_mode}", *verl_shuffle)
    assert sampler_setting_errors(shuffled) == []
    for recipe in RECIPES:
        assert sampler_setting_errors(compose_recipe(recipe)) == [], recipe


@pytest.mark.parametrize(
    "override, named",
    [
        ("poll_interval_s=fast", "poll_interval_s must be a finite number of seconds > 0, got 'fast'"),
        ("poll_interval_s=inf", "poll_interval_s must be a finite number of seconds > 0, got inf"),
        ("max_refill_rounds=true", "max_refill_rounds must be an integer >= 0, got True"),
        ("max_inflight_batches=1.5", "max_inflight_batches must be an integer >= 1, got 1.5"),
    ],
)
def test_filtering_option_values_of_the_wrong_kind_are_refused_naming_the_option(override, named):
    (refused,) = filtering_setting_errors(
        compose_recipe("smoke", "filtering=on", f"trainer.v1.sampler.sampler_kwargs.{override}")
    )
    assert refused == f"trainer.v1.sampler.sampler_kwargs.{named}"


def test_filtering_with_sync_sub_steps_is_refused_before_start_up():
    # verl's `sync: {}` is empty, so the setting is added with a leading `+`.
    one_part = compose_recipe("smoke", "filtering=on", "+trainer.v1.sync.parameter_sync_step=1")
    assert filtering_setting_errors(one_part) == []
    (refused,) = filtering_setting_errors(
        compose_recipe("smoke", "filtering=on", "+trainer.v1.sync.parameter_sync_step=2")
    )
    assert "filtering=on" in refused and "trainer.v1.sync.parameter_sync_step=2" in refused
    assert "use trainer.v1.sync.parameter_sync_step=1 with filtering" in refused
    assert filtering_setting_errors(compose_recipe("smoke", "+trainer.v1.sync.parameter_sync_step=2")) == []

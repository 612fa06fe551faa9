"""What mixed_r1_verl.main settles before verl starts: output paths, plugins, Ray's CPUs, the attention kernel."""

import json
import logging

import pytest
from omegaconf import OmegaConf
from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

from mixed_r1_verl.main import (
    PLUGIN_MODULES,
    RAY_ENV_VARS_KEY,
    RAY_CPUS_KEY,
    add_ray_env_vars,
    choose_attention,
    context_length_errors,
    default_ray_cpus,
    import_plugins,
    local_ray_cpu_shortfall,
    model_context_length,
    pin_max_model_len,
    pin_output_paths,
    unshared_output_settings,
    wait_for_cluster_gpus,
)
from mixed_r1_verl.verl_adapter.metrics import response_caps
from test_train_config import compose_recipe


def test_output_paths_are_pinned_to_the_launch_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = compose_recipe("qwen25vl_7b")
    assert pin_output_paths(config, {}) == {"VERL_FILE_LOGGER_ROOT": str(tmp_path)}
    assert config.trainer.default_local_dir == str(tmp_path / "checkpoints" / "mixed_r1" / "qwen25vl_7b")

    logger_file = pin_output_paths(compose_recipe("smoke"), {"VERL_FILE_LOGGER_PATH": "logs/run.jsonl"})
    assert logger_file == {"VERL_FILE_LOGGER_PATH": str(tmp_path / "logs" / "run.jsonl")}


def test_multi_node_outputs_inside_a_ray_jobs_working_copy_are_refused(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = compose_recipe("qwen25vl_32b", f"trainer.default_local_dir={tmp_path}/ckpt")
    job = {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}", "VERL_FILE_LOGGER_ROOT": "/shared/logs"}
    assert unshared_output_settings(config, job) == [f"trainer.default_local_dir={tmp_path}/ckpt"]
    assert unshared_output_settings(config, {"VERL_FILE_LOGGER_ROOT": "/shared/logs"}) == []
    with pytest.raises(SystemExit):
        pin_output_paths(config, job)


def test_single_node_outputs_inside_a_ray_jobs_working_copy_are_refused(monkeypatch, tmp_path, capsys):
    """A submitted job's working dir is a copy Ray makes anew when the code changes: a resubmitted run
    would not find the checkpoints kept there."""
    monkeypatch.chdir(tmp_path)
    job = {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}
    with pytest.raises(SystemExit):
        pin_output_paths(compose_recipe("qwen25vl_7b"), job)
    message = capsys.readouterr().err
    assert "trainer.nnodes=1 in a Ray job" in message
    assert "trainer.default_local_dir=checkpoints/mixed_r1/qwen25vl_7b, VERL_FILE_LOGGER_ROOT=." in message
    elsewhere = {**job, "VERL_FILE_LOGGER_ROOT": "/shared/logs"}
    assert pin_output_paths(compose_recipe("qwen25vl_7b", "trainer.default_local_dir=/shared/ckpt"), elsewhere) == {
        "VERL_FILE_LOGGER_ROOT": "/shared/logs"
    }


def test_plugins_are_imported_and_named_for_every_ray_worker(monkeypatch):
    monkeypatch.setenv("VERL_USE_EXTERNAL_MODULES", "my_plugin")
    env_vars = import_plugins(PLUGIN_MODULES)
    assert env_vars == {"VERL_USE_EXTERNAL_MODULES": ",".join(["my_plugin", *PLUGIN_MODULES])}

    config, environ = compose_recipe("smoke"), {}
    add_ray_env_vars(config, {**env_vars, "VERL_FILE_LOGGER_ROOT": "/runs/logs"}, environ)
    assert environ["VERL_FILE_LOGGER_ROOT"] == "/runs/logs"
    # verl's run_ppo merges its defaults with ray_kwargs.ray_init.runtime_env the same way.
    runtime_env = OmegaConf.merge(get_ppo_ray_runtime_env(config), config.ray_kwargs.ray_init.runtime_env)
    assert runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES == env_vars["VERL_USE_EXTERNAL_MODULES"]
    assert OmegaConf.select(config, f"{RAY_ENV_VARS_KEY}.VERL_FILE_LOGGER_ROOT") == "/runs/logs"


def test_a_broken_plugin_fails_with_its_own_error(monkeypatch, tmp_path):
    (tmp_path / "broken_plugin.py").write_text("import a_dependency_that_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_missing"):
        import_plugins(("broken_plugin",))


def test_without_flash_attn_training_uses_sdpa_on_padded_batches_and_says_so_once(caplog):
    config = compose_recipe("qwen25vl_7b")
    with caplog.at_level(logging.WARNING, logger="mixed_r1_verl.main"):
        choose_attention(config, flash_attn_available=False)
    model = config.actor_rollout_ref.model
    assert model.override_config.attn_implementation == "sdpa" and model.use_remove_padding is False
    [line] = caplog.messages
    assert "flash_attn is not importable" in line and "pip install flash-attn --no-build-isolation" in line


def test_with_flash_attn_or_a_chosen_attention_nothing_changes():
    config = compose_recipe("smoke")
    choose_attention(config, flash_attn_available=True)
    assert "attn_implementation" not in config.actor_rollout_ref.model.override_config
    assert config.actor_rollout_ref.model.use_remove_padding is True

    eager = compose_recipe("qwen25vl_7b", "+actor_rollout_ref.model.override_config.attn_implementation=eager")
    choose_attention(eager, flash_attn_available=False)
    assert eager.actor_rollout_ref.model.override_config.attn_implementation == "eager"


def test_a_ray_without_the_cpus_a_run_holds_is_refused_before_it_waits_for_them(capsys):
    # 3 beside each of 8 GPUs, and TransferQueue's controller and 8 storage units.
    eight = compose_recipe("qwen25vl_7b", f"{RAY_CPUS_KEY}=32")
    assert eight.trainer.n_gpus_per_node == 8
    shortfall = local_ray_cpu_shortfall(eight)
    assert f"{RAY_CPUS_KEY}=32, but verl reserves 3 CPUs beside each GPU and TransferQueue's controller and its 8 " \
        "storage units (transfer_queue.backend.SimpleStorage.num_data_storage_units) hold 1 each" in shortfall
    assert "trainer.n_gpus_per_node=8 needs 33" in shortfall and f"set {RAY_CPUS_KEY}=33" in shortfall
    assert local_ray_cpu_shortfall(compose_recipe("qwen25vl_7b", f"{RAY_CPUS_KEY}=33")) is None
    assert local_ray_cpu_shortfall(compose_recipe("qwen25vl_7b")) is None  # a Ray started elsewhere
    assert "needs 6" in local_ray_cpu_shortfall(compose_recipe("smoke", f"{RAY_CPUS_KEY}=5"))  # 2 storage units
    # The learning proof's one-GPU GRPO runs on a host of 8 CPUs.
    assert local_ray_cpu_shortfall(compose_recipe("learn", f"+{RAY_CPUS_KEY}=8")) is None

    # Joining a cluster: its node has the GPU but not the CPUs the run holds beside it.
    import ray

    ray.init(num_cpus=5, num_gpus=1, include_dashboard=False)
    try:
        with pytest.raises(SystemExit) as stopped:
            wait_for_cluster_gpus(compose_recipe("smoke", "mixed_r1.cluster_wait_s=0"))
    finally:
        ray.shutdown()
    assert stopped.value.code == 2
    assert (
        "trainer.n_gpus_per_node=1 needs 3 CPUs on each of trainer.nnodes=1 node(s), 6 in all; the Ray cluster's "
        "nodes have [5] CPUs ([5] on those with 1 GPU(s)) after waiting mixed_r1.cluster_wait_s=0 s"
    ) in capsys.readouterr().err


def test_a_local_ray_gets_the_cpus_this_process_may_use(caplog):
    config = compose_recipe("smoke")
    assert OmegaConf.select(config, RAY_CPUS_KEY) is None
    with caplog.at_level(logging.WARNING, logger="mixed_r1_verl.main"):
        default_ray_cpus(config, {}, usable_cpus=3)
    assert OmegaConf.select(config, RAY_CPUS_KEY) == 3 and "of the host's" in caplog.text

    chosen = compose_recipe("smoke", f"{RAY_CPUS_KEY}=16")
    default_ray_cpus(chosen, {}, usable_cpus=3)
    assert OmegaConf.select(chosen, RAY_CPUS_KEY) == 16
    # Connecting to a running cluster, ray.init refuses num_cpus.
    on_cluster = compose_recipe("smoke")
    default_ray_cpus(on_cluster, {"RAY_ADDRESS": "127.0.0.1:6379"}, usable_cpus=3)
    assert OmegaConf.select(on_cluster, RAY_CPUS_KEY) is None


def model_config_with_context(model_dir, root, context_length):
    """A copy of `model_dir`'s config whose language model takes `context_length` tokens."""
    hf_config = json.loads((model_dir / "config.json").read_text())
    text_config = hf_config.get("text_config", hf_config)
    text_config["max_position_embeddings"] = context_length
    root.mkdir()
    (root / "config.json").write_text(json.dumps(hf_config))
    return root


def test_an_unset_max_model_len_becomes_the_prompt_and_the_response_within_the_models_context(
    tiny_model_dir, tmp_path, caplog
):
    own = json.loads((tiny_model_dir / "config.json").read_text())
    config = compose_recipe("smoke", f"actor_rollout_ref.model.path={tiny_model_dir}")
    rollout = config.actor_rollout_ref.rollout
    context_length = model_context_length(config.actor_rollout_ref.model)
    assert context_length == own.get("text_config", own)["max_position_embeddings"]
    assert context_length > rollout.prompt_length + rollout.response_length
    with caplog.at_level(logging.WARNING, logger="mixed_r1_verl.main"):
        pin_max_model_len(rollout, context_length)
    assert rollout.max_model_len == rollout.prompt_length + rollout.response_length and caplog.messages == []
    assert response_caps([rollout.prompt_length, 10], rollout) == [rollout.response_length] * 2

    short = model_config_with_context(tiny_model_dir, tmp_path / "short", 1100)
    config = compose_recipe("smoke", f"actor_rollout_ref.model.path={short}")
    rollout = config.actor_rollout_ref.rollout
    assert (rollout.prompt_length, rollout.response_length, rollout.max_model_len) == (1024, 128, None)
    context_length = model_context_length(config.actor_rollout_ref.model)
    assert context_length == 1100 and context_length_errors(rollout, context_length) == []
    with caplog.at_level(logging.WARNING, logger="mixed_r1_verl.main"):
        pin_max_model_len(rollout, context_length)
    [line] = caplog.messages
    assert "context of 1100 tokens" in line and "1024 + 128" in line and "more than 972 tokens" in line
    assert response_caps([1024, 972, 900], rollout) == [76, 128, 128]


def test_rollout_lengths_vllm_would_refuse_once_started_stop_the_entry(tiny_internvl_dir, tmp_path):
    short = model_config_with_context(tiny_internvl_dir, tmp_path / "short", 1100)
    model = f"actor_rollout_ref.model.path={short}"
    assert model_context_length(compose_recipe("smoke_internvl", model).actor_rollout_ref.model) == 1100

    [beyond] = context_length_errors(compose_recipe("smoke", model, "actor_rollout_ref.rollout.max_model_len=2048")
                                     .actor_rollout_ref.rollout, 1100)  # fmt: skip
    assert "actor_rollout_ref.rollout.max_model_len=2048 exceeds the model's context of 1100 tokens" in beyond
    [no_room] = context_length_errors(compose_recipe("smoke", model, "data.max_prompt_length=1100").actor_rollout_ref
                                      .rollout, 1100)  # fmt: skip
    assert "prompts of up to 1100 tokens" in no_room and "the model's max_position_embeddings=1100" in no_room
    set_short = compose_recipe("smoke", model, "actor_rollout_ref.rollout.max_model_len=1000")
    [no_room] = context_length_errors(set_short.actor_rollout_ref.rollout, 1100)
    assert "within the rollout's 1000 tokens (actor_rollout_ref.rollout.max_model_len=1000)" in no_room
    pin_max_model_len(set_short.actor_rollout_ref.rollout, 1100)
    assert set_short.actor_rollout_ref.rollout.max_model_len == 1000


def test_a_model_path_that_resolves_to_no_config_has_no_context_length_here(tmp_path):
    assert model_context_length(OmegaConf.create({"path": str(tmp_path / "absent")})) is None
    assert model_context_length(OmegaConf.create({"path": str(tmp_path)})) is None

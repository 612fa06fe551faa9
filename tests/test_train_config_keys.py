"""Every key our config and recipes set must be one that verl 0.9.1 (or this package) actually reads.

A key under a node that verl turns into a dataclass (its `_target_`) must be a field of that dataclass
and not one of the fields verl declares but never reads; any other verl key needs a reviewed entry in
READ_BY_VERL saying where verl reads it. Keys of this package must be read by the module that owns
them. A key that is set but never read does nothing, silently."""

import dataclasses
import re
from functools import cache
from pathlib import Path

import pytest
import verl
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from mixed_r1_verl.main import config_dir, recipe_dir
from test_train_config import RECIPES, compose_recipe

REPO = Path(__file__).resolve().parent.parent
VERL_CONFIG_DIR = Path(verl.__file__).parent / "trainer" / "config"

# Keys under nodes without a verl dataclass, each checked by hand in verl 0.9.1's source.
READ_BY_VERL = {
    "data.train_files": "trainer/main_ppo.py create_rl_dataset",
    "data.val_files": "trainer/main_ppo.py create_rl_dataset",
    "data.prompt_key": "utils/dataset/rl_dataset.py RLHFDataset.__init__",
    "data.image_key": "utils/dataset/rl_dataset.py RLHFDataset.__init__",
    "data.max_prompt_length": "utils/dataset/rl_dataset.py RLHFDataset.__init__ (length filter)",
    "data.max_response_length": "rollout response_length interpolates it",
    "data.filter_overlong_prompts": "utils/dataset/rl_dataset.py RLHFDataset.__init__",
    "data.image_patch_size": "utils/dataset/rl_dataset.py RLHFDataset.__init__ (null: the processor's)",
    "data.train_batch_size": "trainer/ppo/v1/trainer_base.py dataloader",
    "data.dataloader_num_workers": "trainer/ppo/v1/trainer_base.py dataloader",
    "data.seed": "utils/dataset/rl_dataset.py RLHFDataset.__init__; also the task-balanced sampler's order",
    "data.custom_cls.path": "utils/dataset/rl_dataset.py get_dataset_class",
    "data.custom_cls.name": "utils/dataset/rl_dataset.py get_dataset_class",
    "actor_rollout_ref.model.override_config.attn_implementation": "workers/config/model.py HFModelConfig",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": "workers/engine_workers.py pops it for the ref",
    "actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes": (
        "workers/rollout/vllm_rollout/vllm_async_server.py passes engine_kwargs.vllm to vLLM's server arguments"
    ),
    "trainer.v1.trainer_mode": "trainer/main_ppo.py TaskRunnerV1 picks the trainer",
    "trainer.v1.sampler.custom_sampler.path": "trainer/ppo/v1/trainer_base.py load_extern_type",
    "trainer.v1.sampler.custom_sampler.name": "trainer/ppo/v1/trainer_base.py load_extern_type",
    "trainer.project_name": "utils/tracking.py Tracking",
    "trainer.experiment_name": "utils/tracking.py Tracking",
    "trainer.logger": "utils/tracking.py Tracking",
    "trainer.total_epochs": "trainer/ppo/v1/trainer_base.py fit loop",
    "trainer.total_training_steps": "trainer/ppo/v1/trainer_base.py fit loop",
    "trainer.save_freq": "trainer/ppo/v1/trainer_base.py fit loop",
    "trainer.test_freq": "trainer/ppo/v1/trainer_base.py fit loop",
    "trainer.val_before_train": "trainer/ppo/v1/trainer_base.py fit loop",
    "trainer.resume_mode": "trainer/ppo/v1/trainer_base.py _load_checkpoint",
    "trainer.critic_warmup": "trainer/ppo/v1/trainer_base.py fit loop",
    "trainer.default_local_dir": "trainer/ppo/v1/trainer_base.py checkpoints",
    "trainer.nnodes": "trainer/main_ppo.py resource pool",
    "trainer.n_gpus_per_node": "trainer/main_ppo.py resource pool",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units": (
        "trainer/main_ppo.py tq.init; transfer_queue 0.1.11 storage/bootstrap/simple_storage_bootstrap.py"
    ),
}

# Dataclass fields that verl 0.9.1 declares but never reads.
DECLARED_BUT_UNREAD = {
    "actor_rollout_ref.actor.use_torch_compile": "the FSDP engine reads actor.fsdp_config.use_torch_compile",
    "actor_rollout_ref.actor.freeze_vision_tower": "nothing freezes the vision tower",
}

# Keys verl reads only when another key is true.
ONLY_READ_WITH = {
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": "actor_rollout_ref.actor.use_dynamic_bsz",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu": "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz",
    "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu": "actor_rollout_ref.ref.log_prob_use_dynamic_bsz",
}

# This package's own keys and the module that reads them.
OWN_KEYS = {
    # First match wins: the stop_by settings are read by StopBy, the other mixed_r1 ones by the entry.
    "mixed_r1.stop_": REPO / "mixed_r1_verl" / "verl_adapter" / "stop_by.py",
    "mixed_r1.": REPO / "mixed_r1_verl" / "main.py",
    "reward.reward_kwargs.": REPO / "mixed_r1_verl" / "verl_adapter" / "reward_manager.py",
    "trainer.v1.sampler.sampler_kwargs.": REPO / "mixed_r1_verl" / "verl_adapter" / "dynamic_sampling.py",
    "data.sampler.": REPO / "mixed_r1_verl" / "data" / "balanced_sampler.py",
}
NOT_CONFIG = {"hydra", "defaults"}


def leaf_paths(node, prefix: str = "") -> list[str]:
    paths = []
    for key, value in node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items():
        path = f"{prefix}{key}"
        if isinstance(value, DictConfig) and len(value) > 0:
            paths += leaf_paths(value, f"{path}.")
        else:
            paths.append(path)
    return paths


def our_config_files() -> list[Path]:
    return [config_dir() / "mixed_r1.yaml", *sorted((config_dir() / "filtering").glob("*.yaml")),
            *sorted((config_dir() / "lora").glob("*.yaml")), *sorted(recipe_dir().glob("*.yaml"))]  # fmt: skip


def keys_set_in(path: Path) -> list[str]:
    node = OmegaConf.load(path)
    return [key for key in leaf_paths(node) if key.split(".")[0] not in NOT_CONFIG]


@cache
def verl_defaults() -> DictConfig:
    with initialize_config_dir(str(VERL_CONFIG_DIR), version_base=None):
        return compose("ppo_trainer")


def dataclass_of_parent(key: str):
    parent = OmegaConf.select(verl_defaults(), key.rpartition(".")[0], default=None)
    if isinstance(parent, DictConfig) and "_target_" in parent:
        return get_class(parent._target_)
    return None


def why_unread(key: str) -> str | None:
    """None when the key is read, else the reason it is not."""
    for prefix, reader in OWN_KEYS.items():
        if key.startswith(prefix):
            name = key.rpartition(".")[2]
            found = re.search(rf"\b{re.escape(name)}\b", reader.read_text())
            return None if found else f"{reader.name} never mentions {name}"
    if key in READ_BY_VERL:
        return None
    if key in DECLARED_BUT_UNREAD:
        return f"declared by verl but unread: {DECLARED_BUT_UNREAD[key]}"
    cls = dataclass_of_parent(key)
    if cls is None:
        return "not a dataclass field and not in the reviewed READ_BY_VERL list"
    fields = {field.name for field in dataclasses.fields(cls)}
    return None if key.rpartition(".")[2] in fields else f"not a field of {cls.__name__}"


@pytest.mark.parametrize("path", our_config_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_key_we_set_is_read(path):
    unread = {key: why for key in keys_set_in(path) if (why := why_unread(key))}
    assert not unread, f"{path.name} sets keys nothing reads: {unread}"


@pytest.mark.parametrize("recipe", RECIPES)
def test_keys_read_only_with_a_switch_come_with_the_switch_on(recipe):
    config = compose_recipe(recipe)
    files = [path for path in our_config_files() if path.parent != recipe_dir() or path.stem == recipe]
    set_here = {key for path in files for key in keys_set_in(path)}
    for key, switch in ONLY_READ_WITH.items():
        if key in set_here and OmegaConf.select(config, key) is not None:
            assert OmegaConf.select(config, switch) is True, f"{recipe}: {key} is read only with {switch}=true"


def test_the_checker_knows_the_keys_verl_declares_but_never_reads():
    # The reviewed lists point at real places: dataclass fields and keys of verl's default config.
    for key in DECLARED_BUT_UNREAD:
        assert why_unread(key) is not None
        assert key.rpartition(".")[2] in {f.name for f in dataclasses.fields(dataclass_of_parent(key))}
    for key in READ_BY_VERL:
        assert isinstance(OmegaConf.select(verl_defaults(), key.rpartition(".")[0]), DictConfig), key
    assert why_unread("data.return_raw_chat") is not None
    assert why_unread("actor_rollout_ref.actor.fsdp_config.use_torch_compile") is None

"""Training entry: GRPO with Mixed-Reward on verl.

    python -m mixed_r1_verl.main recipe=qwen25vl_7b [any verl key=value ...]
    python -m mixed_r1_verl.main recipe=smoke --cfg job      # print the merged config, no GPU needed

The config is verl's `ppo_trainer` with `conf/mixed_r1.yaml` and one `recipes/<name>.yaml` on top.
Training itself is verl's own `run_ppo` with its V1 task runner.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

PRIMARY_CONFIG = "mixed_r1"
RECIPE_GROUP = "recipe"
EXIT_NEEDS_GPU = 2
EXIT_USAGE = 2

NO_GPU_MESSAGE = """\
mixed_r1_verl.main trains with GRPO (vLLM rollouts + FSDP updates) and needs at least one CUDA GPU
visible to torch; torch.cuda.is_available() is False on this machine.
What runs here without a GPU:
  - data preparation:  python -m mixed_r1_verl.data.prepare input=<jsonl> image_root=<dir> output_dir=<dir>
  - the rewards:       from mixed_r1_verl.rewards import compute_score
  - the merged config: python -m mixed_r1_verl.main recipe=<name> --cfg job
"""


def resource_root() -> Path:
    """Directory holding `conf/` and `recipes/`: the source checkout (editable installs, Ray working
    dirs) or `<prefix>/share/mixed_r1_verl` (wheel installs)."""
    candidates = (Path(__file__).resolve().parent.parent, Path(sys.prefix) / "share" / "mixed_r1_verl")
    for root in candidates:
        if (root / "conf" / f"{PRIMARY_CONFIG}.yaml").is_file():
            return root
    raise FileNotFoundError(f"conf/{PRIMARY_CONFIG}.yaml not found under any of {[str(c) for c in candidates]}")


def config_dir() -> Path:
    return resource_root() / "conf"


def recipe_dir() -> Path:
    return resource_root() / "recipes"


def register_recipes() -> list[str]:
    """Make every recipes/<name>.yaml selectable as `recipe=<name>` (global package, so a recipe sets
    verl keys at their usual paths). Returns the recipe names."""
    store = ConfigStore.instance()
    names = []
    for path in sorted(recipe_dir().glob("*.yaml")):
        store.store(group=RECIPE_GROUP, name=path.stem, node=OmegaConf.load(path), package="_global_")
        names.append(path.stem)
    return names


def exit_unless_local_gpus_suffice(config: DictConfig) -> None:
    """Without RAY_ADDRESS, verl starts Ray on this node and asks it for nnodes x n_gpus_per_node GPUs;
    if they are not here Ray would wait for them forever, so stop now and say why. With RAY_ADDRESS
    (ray job submit, the Slurm launcher) the driver joins a cluster and needs no GPU itself."""
    if os.environ.get("RAY_ADDRESS"):
        return
    import torch

    if not torch.cuda.is_available():
        fail(NO_GPU_MESSAGE)
    if config.trainer.nnodes != 1:
        fail(
            f"trainer.nnodes={config.trainer.nnodes} needs a Ray cluster: start one (launch/slurm/train.sbatch) "
            "or submit to it (launch/ray_job.sh), or set RAY_ADDRESS to join it.\n"
        )
    wanted, present = config.trainer.n_gpus_per_node, torch.cuda.device_count()
    if present < wanted:
        fail(
            f"trainer.n_gpus_per_node={wanted} but this node has {present} CUDA GPU(s); run with "
            f"trainer.n_gpus_per_node={present} (batch sizes must stay divisible by it) or use a Ray cluster.\n"
        )


def fail(message: str) -> None:
    print(message, file=sys.stderr, end="")
    sys.exit(EXIT_NEEDS_GPU)


def make_paths_absolute(config: DictConfig, keys: tuple[str, ...]) -> None:
    """Ray workers do not share the launching directory, so relative paths are pinned to it here."""
    for key in keys:
        value = OmegaConf.select(config, key)
        if value is not None and not os.path.isabs(value):
            OmegaConf.update(config, key, os.path.abspath(value))


def prepare_smoke(smoke: DictConfig, model_dir: str, data_dir: str) -> None:
    """Build the tiny model and the synthetic four-task dataset unless they already exist."""
    if not (Path(model_dir) / "config.json").is_file():
        from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl

        build_tiny_qwen25vl(model_dir, seed=smoke.seed)
    data = Path(data_dir)
    if (data / "train.parquet").is_file() and (data / "val.parquet").is_file():
        return
    from mixed_r1_verl.data.synthetic import write_synthetic_dataset

    jsonl_path, image_root = write_synthetic_dataset(
        Path(smoke.work_dir) / "synthetic", rows_per_task=smoke.rows_per_task, seed=smoke.seed
    )
    subprocess.run(
        [
            sys.executable, "-m", "mixed_r1_verl.data.prepare",
            f"input={jsonl_path}", f"image_root={image_root}", f"output_dir={data}",
            f"model_family={smoke.model_family}",
        ],
        check=True,
    )  # fmt: skip


def train(config: DictConfig) -> None:
    exit_unless_local_gpus_suffice(config)
    make_paths_absolute(config, ("mixed_r1.data_dir", "mixed_r1.smoke.work_dir"))
    if config.mixed_r1.smoke is not None:
        prepare_smoke(config.mixed_r1.smoke, config.actor_rollout_ref.model.path, config.mixed_r1.data_dir)

    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    run_ppo(config, task_runner_class=TaskRunnerV1)


def usage(recipes: list[str]) -> str:
    return (
        "usage: python -m mixed_r1_verl.main recipe=<name> [verl.key=value ...] [--cfg job] [--help]\n"
        f"recipes: {', '.join(recipes)}\n"
        "With a recipe, --help lists the config groups and the merged config; --cfg job prints it.\n"
    )


def main() -> None:
    recipes = register_recipes()
    if not any(arg.lstrip("+").startswith(f"{RECIPE_GROUP}=") for arg in sys.argv[1:]):
        asked_for_help = bool({"--help", "-h"} & set(sys.argv[1:]))
        print(usage(recipes), file=sys.stdout if asked_for_help else sys.stderr, end="")
        sys.exit(0 if asked_for_help else EXIT_USAGE)
    hydra.main(config_path=str(config_dir()), config_name=PRIMARY_CONFIG, version_base=None)(train)()


if __name__ == "__main__":
    main()

"""Training entry: GRPO with Mixed-Reward on verl.

    python -m mixed_r1_verl.main recipe=qwen25vl_7b [any verl key=value ...]
    python -m mixed_r1_verl.main recipe=smoke --cfg job      # print the merged config, no GPU needed

The config is verl's `ppo_trainer` with `conf/mixed_r1.yaml` and one `recipes/<name>.yaml` on top.
Training itself is verl's own `run_ppo` with its V1 task runner.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mixed_r1_verl.data.model_files import missing_model_path
from mixed_r1_verl.entry import register_recipe_files, run_recipe_entry
from mixed_r1_verl.settings import EXIT_NEEDS_GPU, EXIT_NOTHING_TO_TRAIN, EXIT_USAGE

logger = logging.getLogger(__name__)

PRIMARY_CONFIG = "mixed_r1"

# The verl plugins of this package: the `mixed_r1` reward manager, the `mixed_r1_sync` trainer mode and
# the `mixed_r1_single_turn` agent loop.
PLUGIN_MODULES = (
    "mixed_r1_verl.verl_adapter.reward_manager",
    "mixed_r1_verl.verl_adapter.trainer",
    "mixed_r1_verl.verl_adapter.agent_loop",
    "mixed_r1_verl.verl_adapter.internvl",
)
RAY_ENV_VARS_KEY = "ray_kwargs.ray_init.runtime_env.env_vars"
RAY_CPUS_KEY = "ray_kwargs.ray_init.num_cpus"
# Set by Ray for the driver of a submitted job, whose working directory is a node-local copy of the code.
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
FILE_LOGGER_PATH_ENV, FILE_LOGGER_ROOT_ENV = "VERL_FILE_LOGGER_PATH", "VERL_FILE_LOGGER_ROOT"
CLUSTER_POLL_S = 5.0
# Under the model's settings (`actor_rollout_ref.model` in GRPO, `model` in SFT).
FLASH_ATTN_FALLBACK = {"override_config.attn_implementation": "sdpa", "use_remove_padding": False}
POLICY_MODEL_KEY = "actor_rollout_ref.model"

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


def fail(message: str, code: int = EXIT_NEEDS_GPU) -> None:
    print(message, file=sys.stderr, end="")
    sys.exit(code)


def cluster_capacity() -> tuple[int, list[int], list[int]]:
    """Alive nodes of the Ray cluster this process is connected to, and the GPUs and CPUs of each."""
    import ray

    alive = [node for node in ray.nodes() if node["Alive"]]
    resources = [node["Resources"] for node in alive]
    return len(alive), [int(each.get("GPU", 0)) for each in resources], [int(each.get("CPU", 0)) for each in resources]


def verl_cpus_per_gpu() -> int:
    """The CPUs verl's trainer reserves beside each GPU in its placement group of a node (its resource
    pool's `max_colocate_count`): Ray waits for them as it waits for GPUs, forever."""
    from verl.single_controller.ray.base import ResourcePoolManager

    return ResourcePoolManager.__dataclass_fields__["max_colocate_count"].default


def transfer_queue_cpus(config: DictConfig) -> tuple[int, str]:
    """The CPUs TransferQueue's actors hold for the whole run, and which: verl's task runner starts them
    before it asks for its GPUs, its controller and, with the SimpleStorage backend, each storage unit
    taking one."""
    backend = config.transfer_queue.backend
    if backend.storage_backend != "SimpleStorage":
        return 1, "TransferQueue's controller holds 1"
    units = backend.SimpleStorage.num_data_storage_units
    return 1 + units, (
        f"TransferQueue's controller and its {units} storage units "
        f"(transfer_queue.backend.SimpleStorage.num_data_storage_units) hold 1 each"
    )


def composed_config(overrides: list[str]) -> DictConfig | None:
    """The config the entry composes from its `overrides` (recipe=..., the user's; Hydra's own hydra.* settings
    aside); None where they do not compose (the entry says why)."""
    from hydra import compose, initialize_config_dir

    register_recipes()
    try:
        with initialize_config_dir(str(config_dir()), version_base=None):
            return compose(PRIMARY_CONFIG, overrides=[arg for arg in overrides if not arg.startswith("hydra.")])
    except Exception:  # noqa: BLE001 - the entry reports a config that does not compose, with its reason
        return None


def slurm_cpu_shortfall(cpus_per_node: int, overrides: list[str]) -> str | None:
    """Why Slurm nodes of `cpus_per_node` CPUs each lack the CPUs verl's run holds (3 beside each GPU on every
    node, and TransferQueue's in all), for the run the entry's `overrides` compose (recipe=..., trainer.nnodes,
    trainer.n_gpus_per_node, the user's); None when they have them, or where the overrides do not compose
    (the entry says why)."""
    config = composed_config(overrides)
    if config is None:
        return None
    nodes, gpus = config.trainer.nnodes, config.trainer.n_gpus_per_node
    per_node = verl_cpus_per_gpu() * gpus
    queue_cpus, queue_held = transfer_queue_cpus(config)
    needed = per_node * nodes + queue_cpus
    if cpus_per_node >= per_node and cpus_per_node * nodes >= needed:
        return None
    return (
        f"each node gets {cpus_per_node} CPU(s) for {gpus} GPU(s), and verl reserves {verl_cpus_per_gpu()} CPUs "
        f"beside each GPU ({per_node} a node) and {queue_held}: {needed} in all on {nodes} node(s). Submit with "
        f"--cpus-per-task={max(per_node, -(-needed // nodes))} or more"
    )


def local_ray_cpu_shortfall(config: DictConfig) -> str | None:
    """Why a Ray started by this process lacks the CPUs verl's run holds on its node (those it reserves for
    trainer.n_gpus_per_node GPUs, and TransferQueue's); None when it has them (or Ray runs elsewhere)."""
    cpus, gpus = OmegaConf.select(config, RAY_CPUS_KEY), config.trainer.n_gpus_per_node
    queue_cpus, queue_held = transfer_queue_cpus(config)
    needed = verl_cpus_per_gpu() * gpus + queue_cpus
    if cpus is None or cpus >= needed:
        return None
    return (
        f"{RAY_CPUS_KEY}={cpus}, but verl reserves {verl_cpus_per_gpu()} CPUs beside each GPU and {queue_held}: "
        f"trainer.n_gpus_per_node={gpus} needs {needed}, and Ray would wait for them forever. Run with "
        f"more CPUs (Slurm: --cpus-per-task) or set {RAY_CPUS_KEY}={needed} (Ray's CPUs are slots, not cores).\n"
    )


def wait_for_cluster_gpus(config: DictConfig) -> None:
    """Joining a cluster, verl would wait silently forever for GPUs (and the CPUs it reserves beside them)
    that are not there: wait at most mixed_r1.cluster_wait_s for trainer.nnodes nodes of
    trainer.n_gpus_per_node GPUs and their CPUs, then stop."""
    nnodes, per_node = config.trainer.nnodes, config.trainer.n_gpus_per_node
    cpus_needed = verl_cpus_per_gpu() * per_node
    queue_cpus, queue_held = transfer_queue_cpus(config)
    deadline = time.monotonic() + config.mixed_r1.cluster_wait_s
    while True:
        alive, gpus, cpus = cluster_capacity()
        with_gpus = [cpu for gpu, cpu in zip(gpus, cpus) if gpu >= per_node]
        enough = sum(cpu >= cpus_needed for cpu in with_gpus) >= nnodes
        if enough and sum(cpus) >= cpus_needed * nnodes + queue_cpus:
            return
        if time.monotonic() >= deadline:
            waited = f"after waiting mixed_r1.cluster_wait_s={config.mixed_r1.cluster_wait_s} s"
            if len(with_gpus) >= nnodes:
                fail(
                    f"verl reserves {verl_cpus_per_gpu()} CPUs beside each GPU, and {queue_held}: "
                    f"trainer.n_gpus_per_node={per_node} needs {cpus_needed} CPUs on each of trainer.nnodes="
                    f"{nnodes} node(s), {cpus_needed * nnodes + queue_cpus} in all; the Ray cluster's nodes have "
                    f"{cpus} CPUs ({with_gpus} on those with {per_node} GPU(s)) {waited}. Start their Ray with "
                    f"more --num-cpus (Ray's CPUs are slots, not cores).\n"
                )
            fail(
                f"the config asks for {nnodes * per_node} GPU(s): trainer.nnodes={nnodes} node(s) x "
                f"trainer.n_gpus_per_node={per_node}; the Ray cluster has {alive} alive node(s) with "
                f"{sum(gpus)} GPU(s) in all (per node: {gpus}) {waited}. Add nodes or lower "
                "trainer.nnodes / trainer.n_gpus_per_node.\n"
            )
        logger.info("waiting for %d node(s) x %d GPU(s); the cluster has GPUs %s", nnodes, per_node, gpus)
        time.sleep(min(CLUSTER_POLL_S, max(deadline - time.monotonic(), 0.0)))


def refused_for_its_token(error: BaseException | None) -> bool:
    """ray.init reports a refused token as a ConnectionError whose cause quotes Ray's AuthenticationError
    (matched by name: Ray releases before token authentication lack the class)."""
    while error is not None:
        if type(error).__name__ == "AuthenticationError" or "AuthenticationError" in str(error):
            return True
        error = error.__cause__
    return False


def check_cluster_gpus(config: DictConfig) -> None:
    import ray

    try:
        ray.init(logging_level=logging.ERROR, log_to_driver=False)
    except ConnectionError as error:
        if not refused_for_its_token(error):
            raise
        fail(
            f"the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']} refused this driver's authentication "
            f"token (RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE', '<unset>')}). A Ray head with token "
            "authentication takes drivers run with RAY_AUTH_MODE=token that hold its token, the head's "
            "~/.ray/auth_token: here in RAY_AUTH_TOKEN, in the file RAY_AUTH_TOKEN_PATH names, or in "
            "~/.ray/auth_token.\n",
            EXIT_USAGE,
        )
    try:
        wait_for_cluster_gpus(config)
    finally:
        ray.shutdown()


def last_checkpointed_step(checkpoint_dir: str) -> int | None:
    """The step verl's resume_mode=auto would resume from (its tracker file), or None for a first run. A
    tracker naming a step whose folder is gone ends the run (exit 2): verl would print that the checkpoint
    does not exist and train from step 0, saving over the checkpoints left."""
    from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path, get_checkpoint_tracker_filename

    tracker = get_checkpoint_tracker_filename(checkpoint_dir)
    if not os.path.isfile(tracker):
        return None  # a first run: verl's lookup would print that the tracker file is missing
    folder = find_latest_ckpt_path(checkpoint_dir)
    if folder is None:
        with open(tracker) as file:
            named = file.read().strip()
        steps = sorted(int(path.name[len("global_step_"):]) for path in Path(checkpoint_dir).glob("global_step_*")
                       if path.name[len("global_step_"):].isdigit())  # fmt: skip
        left = ", ".join(f"global_step_{step}" for step in steps) or "none"
        fail(
            f"{tracker} names step {named}, whose checkpoint {checkpoint_dir}/global_step_{named} is missing "
            f"(checkpoints there: {left}); resumed, verl would train from step 0 over them. To resume from "
            "another, write its step into that file or set trainer.resume_mode=resume_path and "
            "trainer.resume_from_path=<its global_step_N>; to start again, use trainer.resume_mode=disable.\n",
            EXIT_USAGE,
        )
    return int(folder.rpartition("global_step_")[2])


def planned_steps(config: DictConfig) -> tuple[int | None, str]:
    """The last step of this run and where it comes from: trainer.total_training_steps, else an upper
    bound from the training rows verl reads (the parquet's, at most data.train_max_samples; it drops over-long
    prompts and the last partial batch)."""
    if config.trainer.total_training_steps is not None:
        return config.trainer.total_training_steps, "trainer.total_training_steps"
    files = data_files(config.data.train_files)
    if not all(os.path.isfile(path) for path in files):
        return None, ""
    rows = set_rows(config, "train_files")
    return rows // config.data.train_batch_size * config.trainer.total_epochs, (
        f"{rows} training rows / data.train_batch_size x trainer.total_epochs"
    )


def exit_if_steps_outrun_the_epochs(trainer: DictConfig, steps_per_epoch: int, trainer_name: str) -> None:
    """verl's training loops end after trainer.total_epochs even short of trainer.total_training_steps,
    and only the planned last step saves a checkpoint: such a run would end, exit 0, without one."""
    planned, in_epochs = trainer.total_training_steps, steps_per_epoch * trainer.total_epochs
    if planned is not None and planned > in_epochs:
        fail(
            f"trainer.total_training_steps={planned} is more than the {in_epochs} steps of "
            f"trainer.total_epochs={trainer.total_epochs} ({steps_per_epoch} a epoch): {trainer_name} would end "
            "after the last epoch without saving a checkpoint. Raise trainer.total_epochs or lower "
            "trainer.total_training_steps.\n",
            EXIT_USAGE,
        )


RESUME_MODES = ("auto", "disable", "resume_path")


def exit_unless_resume_settings_work(trainer: DictConfig, sft: bool = False) -> None:
    """trainer.resume_mode must be one verl knows, and trainer.resume_from_path, where verl resumes from it
    (resume_path; in verl's SFT trainer auto too, where set), a checkpoint's global_step_N directory (GRPO's
    with its actor/): verl checks them only once its workers, and vLLM, have started."""
    mode, path = trainer.resume_mode, trainer.get("resume_from_path")
    if mode not in RESUME_MODES:
        fail(
            f"trainer.resume_mode={mode!r}: use auto (resume from the latest checkpoint in "
            "trainer.default_local_dir), disable (start afresh) or resume_path (resume from "
            "trainer.resume_from_path).\n",
            EXIT_USAGE,
        )
    if mode == "resume_path" and not path:
        fail("trainer.resume_mode=resume_path needs trainer.resume_from_path=<a run's global_step_N>.\n", EXIT_USAGE)
    if resumed_path(trainer, sft) is None:
        return
    checkpoint = Path(path)
    problem = (
        "does not exist" if not checkpoint.exists()
        else "is no checkpoint's global_step_N directory" if not (
            checkpoint.is_dir() and re.fullmatch(r"global_step_\d+", checkpoint.name)
        )
        else None if sft or (checkpoint / "actor").is_dir()
        else "holds no actor/ checkpoint"
    )  # fmt: skip
    if problem:
        fail(f"trainer.resume_from_path={path} {problem}; verl resumes from a run's global_step_N.\n", EXIT_USAGE)


def resumed_path(trainer: DictConfig, sft: bool = False) -> str | None:
    """trainer.resume_from_path where verl resumes from it: with resume_path; in verl's SFT trainer with
    auto too, where set."""
    path = trainer.get("resume_from_path")
    return path if path and (trainer.resume_mode == "resume_path" or sft and trainer.resume_mode == "auto") else None


def resumed_step(trainer: DictConfig, sft: bool = False) -> tuple[int | None, str]:
    """The step a run resumes from and where it is: that of `resumed_path`'s global_step_N, else with auto
    the step of trainer.default_local_dir's tracker (None for a first run)."""
    path = resumed_path(trainer, sft)
    if path is not None:
        return int(Path(path).name.removeprefix("global_step_")), f"trainer.resume_from_path={path}"
    if trainer.resume_mode == "auto":
        return last_checkpointed_step(trainer.default_local_dir), str(trainer.default_local_dir)
    return None, ""


def exit_if_resuming_across_lora(config: DictConfig, model_key: str = POLICY_MODEL_KEY, sft: bool = False) -> None:
    """A LoRA run's checkpoint (verl writes its lora_train_meta.json beside the shards: GRPO's actor/, SFT's
    global_step_N/) holds the adapters' weights under peft's names, a full-parameter run's the model's own;
    verl loads a resumed one strictly, and would stop on the other kind only after start-up."""
    from mixed_r1_verl.models.lora import TRAIN_META

    trainer = config.trainer
    step, _ = resumed_step(trainer, sft)
    if step is None:
        return
    from_path = resumed_path(trainer, sft)
    checkpoint = Path(from_path or Path(trainer.default_local_dir) / f"global_step_{step}")
    saved_meta = (checkpoint if sft else checkpoint / "actor") / TRAIN_META
    saved_rank = json.loads(saved_meta.read_text())["r"] if saved_meta.is_file() else 0
    rank = OmegaConf.select(config, f"{model_key}.lora_rank") or 0
    if bool(saved_rank) == bool(rank):
        return
    resumed, elsewhere = (
        (f"trainer.resume_from_path={checkpoint}", "point it at a checkpoint of a run like this one")
        if from_path
        else (
            f"{checkpoint}, the latest checkpoint in trainer.default_local_dir, which this run resumes "
            "(trainer.resume_mode=auto),",
            "set another trainer.default_local_dir (or trainer.experiment_name, which names it unless the recipe "
            "sets it)",
        )
    )
    saved = f"LoRA adapters (rank {saved_rank})" if saved_rank else "the full weights"
    fail(
        f"{resumed} was trained with {saved}, and this run trains {'LoRA adapters' if rank else 'the full weights'} "
        f"({model_key}.lora_rank={rank}): verl would not load the one into the other, and would stop only after "
        f"start-up. To resume that run, run {'with' if saved_rank else 'without'} lora=on as it did; to train this "
        f"one, {elsewhere}, or start afresh with trainer.resume_mode=disable.\n",
        EXIT_USAGE,
    )


def exit_if_training_is_done(trainer: DictConfig, total: int | None, source: str, sft: bool = False) -> None:
    """A rerun that resumes from a checkpoint at or past the run's last step `total` (planned from
    `source`) would train nothing and exit 0, or, in verl's SFT trainer, train and save one step more. A
    run that only validates (trainer.val_only) resumes to validate that checkpoint."""
    if trainer.get("val_only"):
        return
    last, where = resumed_step(trainer, sft)
    if last is not None and total is not None and last >= total:
        start_again = (
            "point trainer.resume_from_path at an earlier step or use trainer.resume_mode=disable"
            if where.startswith("trainer.resume_from_path")
            else "use a new trainer.default_local_dir or trainer.resume_mode=disable"
        )
        fail(
            f"nothing to train: {where} holds a checkpoint of step {last} and this run ends at "
            f"step {total} ({source}). To train more, raise trainer.total_training_steps; to start again, "
            f"{start_again}.\n",
            EXIT_NOTHING_TO_TRAIN,
        )


def exit_if_stop_by_is_not_ahead(mixed_r1: DictConfig) -> None:
    """mixed_r1.stop_by must be a Unix time still ahead: a run started past it would be killed by the
    scheduler it stands for before its first checkpoint. With it, mixed_r1.stop_save_estimate_s must be a
    number of seconds, at least 0: a negative one would plan the last checkpoint past stop_by."""
    stop_by = mixed_r1.get("stop_by")
    if stop_by is None:
        return
    try:
        seconds_left = float(stop_by) - time.time()
    except (TypeError, ValueError):
        seconds_left = math.nan
    if not math.isfinite(seconds_left):
        fail(f"mixed_r1.stop_by={stop_by!r} is not a Unix time in seconds (as `date +%s` prints it).\n", EXIT_USAGE)
    if seconds_left <= 0:
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(stop_by)))
        fail(
            f"mixed_r1.stop_by={stop_by} was {-seconds_left:.0f} s ago ({when}): no step could end before it. "
            "Set a later time or null.\n",
            EXIT_USAGE,
        )
    estimate = mixed_r1.get("stop_save_estimate_s")
    if isinstance(estimate, bool) or not isinstance(estimate, int | float) or not 0 <= estimate < math.inf:
        fail(
            f"mixed_r1.stop_save_estimate_s={estimate!r}: the seconds a checkpoint save is assumed to take "
            "before mixed_r1.stop_by must be a finite number of at least 0.\n",
            EXIT_USAGE,
        )


def log_prob_micro_batch_mismatches(config: DictConfig) -> list[str]:
    """Log-prob micro-batch sizes that do not divide the samples each GPU holds in a step. verl's FSDP
    engine requires it (without dynamic batch sizes) but asserts only once the workers and the rollout
    have started; its config check does not look at these."""
    from verl.trainer.ppo.utils import need_reference_policy

    gpus = config.trainer.nnodes * config.trainer.n_gpus_per_node
    samples = config.data.train_batch_size * config.actor_rollout_ref.rollout.n
    roles = ["rollout"] + (["ref"] if need_reference_policy(config) else [])
    mismatches = []
    for role in roles:
        settings = config.actor_rollout_ref[role]
        micro = settings.log_prob_micro_batch_size_per_gpu
        if settings.log_prob_use_dynamic_bsz or not micro or samples % (gpus * micro) == 0:
            continue
        mismatches.append(
            f"actor_rollout_ref.{role}.log_prob_micro_batch_size_per_gpu={micro} does not divide the "
            f"{samples / gpus:g} samples each GPU holds (data.train_batch_size={config.data.train_batch_size} x "
            f"actor_rollout_ref.rollout.n={config.actor_rollout_ref.rollout.n} / {gpus} GPUs): use a divisor, or "
            "actor_rollout_ref.actor.use_dynamic_bsz=true"
        )
    return mismatches


def sequence_parallel_mismatch(gpus: int, size: int, key: str) -> str | None:
    """verl groups the GPUs `size` at a time for sequence parallelism: `size` must divide them."""
    if gpus % size:
        return f"{key}={size} does not divide the {gpus} GPU(s), which sequence parallelism groups {size} at a time"
    return None


def actor_update_mismatches(config: DictConfig) -> list[str]:
    """Mini- and micro-batch sizes the actor update cannot split a step into. verl's config check asks
    only that a mini-batch is no larger than the step; its FSDP workers assert the rest at the first
    update, after the first rollout: each data-parallel rank cuts its share of the step into
    mini-batches of ppo_mini_batch_size x rollout.n / ranks samples, and those into micro-batches."""
    actor, n = config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout.n
    prompts, mini = config.data.train_batch_size, actor.ppo_mini_batch_size
    sequence_parallel, key = max(
        (actor.ulysses_sequence_parallel_size, "actor_rollout_ref.actor.ulysses_sequence_parallel_size"),
        (
            actor.fsdp_config.ulysses_sequence_parallel_size,
            "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size",
        ),
    )
    gpus = config.trainer.nnodes * config.trainer.n_gpus_per_node
    if mismatch := sequence_parallel_mismatch(gpus, sequence_parallel, key):
        return [mismatch]
    ranks = gpus // sequence_parallel
    where = f"{ranks} GPUs" if sequence_parallel == 1 else f"{ranks} data-parallel groups of {sequence_parallel} GPUs"
    mini_samples = f"actor_rollout_ref.actor.ppo_mini_batch_size={mini} x actor_rollout_ref.rollout.n={n}"
    mismatches = []
    if prompts % mini:
        mismatches.append(
            f"data.train_batch_size={prompts} is not a multiple of actor_rollout_ref.actor.ppo_mini_batch_size={mini}: "
            "a step's prompts must split into whole mini-batches"
        )
    if mini * n % ranks:
        mismatches.append(f"the {mini * n} samples of a mini-batch ({mini_samples}) do not split evenly over {where}")
        return mismatches
    micro, per_rank = actor.ppo_micro_batch_size_per_gpu, mini * n // ranks
    if not actor.use_dynamic_bsz and micro and per_rank % micro:
        mismatches.append(
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro} does not divide the {per_rank} samples of "
            f"a mini-batch each GPU holds ({mini_samples} / {where}): use a divisor, or "
            "actor_rollout_ref.actor.use_dynamic_bsz=true"
        )
    return mismatches


def sync_step_mismatches(config: DictConfig) -> list[str]:
    """verl's sync trainer samples a step's prompts in `parameter_sync_step` equal parts, and asserts that
    they divide only inside the first step, after start-up and validation."""
    from mixed_r1_verl.verl_adapter.dynamic_sampling import PARAMETER_SYNC_STEP_SETTING

    parts, prompts = OmegaConf.select(config, PARAMETER_SYNC_STEP_SETTING), config.data.train_batch_size
    if parts is None or type(parts) is int and parts >= 1 and prompts % parts == 0:
        return []
    return [f"{PARAMETER_SYNC_STEP_SETTING}={parts!r} does not divide data.train_batch_size={prompts} into equal parts"]


def rollout_parallel_mismatches(config: DictConfig) -> list[str]:
    """vLLM replicas that do not tile the GPUs: verl's rollout workers assert it only after they have
    loaded the actor (and the reference model)."""
    rollout, trainer = config.actor_rollout_ref.rollout, config.trainer
    gpus = trainer.nnodes * trainer.n_gpus_per_node
    replica = rollout.tensor_model_parallel_size * rollout.data_parallel_size * rollout.pipeline_model_parallel_size
    if gpus % replica == 0:
        return []
    sizes = f"actor_rollout_ref.rollout.tensor_model_parallel_size={rollout.tensor_model_parallel_size}"
    if replica != rollout.tensor_model_parallel_size:
        sizes += (
            f" x data_parallel_size={rollout.data_parallel_size}"
            f" x pipeline_model_parallel_size={rollout.pipeline_model_parallel_size}"
        )
    return [
        f"each vLLM replica takes {replica} GPUs ({sizes}), which does not divide the {gpus} GPUs of "
        f"trainer.nnodes={trainer.nnodes} x trainer.n_gpus_per_node={trainer.n_gpus_per_node}"
    ]


def start_from_merged_adapter(config: DictConfig) -> None:
    """A model directory holding a LoRA adapter (a LoRA run's merged checkpoint) is trained from its weights
    with the adapter merged in (mixed_r1_verl/models/lora.py): verl's actor and vLLM would load the base
    weights alone."""
    from mixed_r1_verl.models.lora import with_lora_merged

    model = config.actor_rollout_ref.model
    if os.path.isdir(model.path):
        model.path = with_lora_merged(model.path)


def recipe_rate_under_lora(config: DictConfig, hydra_config: DictConfig, lora_file: Path, lr_key: str) -> str | None:
    """With lora=on, the line naming the learning rate the adapters train at where it is the recipe's own rate,
    not lora=on's (`lora_file`'s, LoRA's tenfold of a full-parameter rate): the recipe comes after lora=on,
    and its rate wins. None where lora=on's rate applies, or the command line sets the rate."""
    choices = hydra_config.runtime.choices
    if choices.get("lora") != "on" or any(
        override.lstrip("+~").partition("=")[0] == lr_key for override in hydra_config.overrides.task
    ):
        return None
    rate, lora_rate = OmegaConf.select(config, lr_key), OmegaConf.select(OmegaConf.load(lora_file), lr_key)
    if rate == lora_rate:
        return None
    return (
        f"lora=on with recipe={choices.recipe}: the adapters train at the recipe's own {lr_key}={rate}, not at "
        f"lora=on's {lora_rate}; set {lr_key}=<rate> for another"
    )


def log_recipe_rate_under_lora(config: DictConfig, lora_file: Path, lr_key: str) -> None:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and (note := recipe_rate_under_lora(config, HydraConfig.get(), lora_file, lr_key)):
        logger.warning(note)


def lora_mismatches(config: DictConfig) -> list[str]:
    """LoRA adapters the configuration would put on the vision tower or projector, which vLLM's rollouts
    ignore (mixed_r1_verl/models/lora.py): the actor would train them while every rollout samples
    without them. Read from the checkpoint's architecture; nothing for a model path that does not resolve
    (verl reports that), nor with `lora.merge`, where verl merges every adapter into the full weights it
    sends vLLM."""
    model = config.actor_rollout_ref.model
    if not model.get("lora_rank") or model.lora.get("merge"):
        return []
    from mixed_r1_verl.data.model_files import resolve_model_dir
    from mixed_r1_verl.models.lora import vision_modules_with_adapters

    try:
        model_dir = resolve_model_dir(model.path)
    except FileNotFoundError:
        return []
    target, exclude = (OmegaConf.to_container(model[key]) if OmegaConf.is_config(model[key]) else model[key]
                       for key in ("target_modules", "exclude_modules"))  # fmt: skip
    adapted = vision_modules_with_adapters(model_dir, target, exclude)
    if not adapted:
        return []
    return [
        f"actor_rollout_ref.model.lora_rank={model.lora_rank} with target_modules={target!r} and "
        f"exclude_modules={exclude!r} puts LoRA adapters on {len(adapted)} modules of the vision tower or "
        f"projector ({', '.join(adapted[:2])}, ...), which vLLM's rollouts ignore: the rollouts would sample "
        "from another policy than the one trained. Use lora=on, exclude them with "
        "actor_rollout_ref.model.exclude_modules, or set actor_rollout_ref.model.lora.merge=true (verl then "
        "merges the adapters into the full weights it sends vLLM at every step)"
    ]


def model_context_length(model: DictConfig) -> int | None:
    """The model's `max_position_embeddings` (its language model's in a VLM), read as verl's vLLM servers
    read it; None where the model path resolves to no config here."""
    from transformers import AutoConfig
    from verl.workers.rollout.utils import get_max_position_embeddings

    from mixed_r1_verl.data.model_files import resolve_model_dir

    try:
        model_dir = resolve_model_dir(model.path)
    except FileNotFoundError:
        return None
    if not (model_dir / "config.json").is_file():
        return None
    hf_config = AutoConfig.from_pretrained(model_dir, trust_remote_code=model.get("trust_remote_code", False))
    try:
        return get_max_position_embeddings(hf_config)
    except ValueError:
        return None  # verl's servers say so themselves


def context_length_errors(rollout: DictConfig, context_length: int) -> list[str]:
    """Rollout lengths that verl's vLLM servers refuse only once they have started: a `max_model_len` beyond
    the model's context, and prompts that leave no room to generate (every such request fails)."""
    limit = rollout.max_model_len or context_length
    if rollout.max_model_len is not None and rollout.max_model_len > context_length:
        return [
            f"actor_rollout_ref.rollout.max_model_len={rollout.max_model_len} exceeds the model's context of "
            f"{context_length} tokens (max_position_embeddings): lower it, or leave it unset to generate within that"
        ]
    if rollout.prompt_length >= limit:
        return [
            f"prompts of up to {rollout.prompt_length} tokens (data.max_prompt_length) leave no room for a response "
            f"within the rollout's {limit} tokens ({describe_limit(rollout, context_length)})"
        ]
    return []


def describe_limit(rollout: DictConfig, context_length: int) -> str:
    if rollout.max_model_len is not None:
        return f"actor_rollout_ref.rollout.max_model_len={rollout.max_model_len}"
    return f"the model's max_position_embeddings={context_length}"


def pin_max_model_len(rollout: DictConfig, context_length: int) -> None:
    """An unset `max_model_len` becomes `prompt_length + response_length`, within the model's context, so
    that the trainer's clip ratios and the overlong penalty cap each response where vLLM does. verl's vLLM
    servers would take the whole context, and vLLM starts only when one request that long fits its KV cache
    (Qwen3-VL's 262,144 tokens do not, beside the weights of an 8B model on an 80 GB GPU), though no request
    is longer than the prompt and the response. Says so when the context cuts responses short of
    `response_length`."""
    if rollout.max_model_len is not None:
        return
    rollout.max_model_len = min(context_length, rollout.prompt_length + rollout.response_length)
    if rollout.prompt_length + rollout.response_length > context_length:
        logger.warning(
            "the model's context of %d tokens (max_position_embeddings) is less than prompt_length + "
            "response_length = %d + %d: a response to a prompt of more than %d tokens is cut short of %d tokens",
            context_length, rollout.prompt_length, rollout.response_length,
            context_length - rollout.response_length, rollout.response_length,
        )  # fmt: skip


def filtering_setting_errors(config: DictConfig) -> list[str]:
    """What the per-task filtering sampler would refuse only once the trainer is built or rollouts are
    scored: its options, verl's sync sub-steps, and a `metric` the mixed_r1 reward does not report as a
    number (without a custom reward function, whose fields only it knows)."""
    from mixed_r1_verl.verl_adapter.dynamic_sampling import (
        PARAMETER_SYNC_STEP_SETTING,
        FilteringSettings,
        PerTaskDynamicSampler,
        parameter_sync_step_error,
    )
    from mixed_r1_verl.verl_adapter.metrics import AVERAGED_KEYS
    from mixed_r1_verl.verl_adapter.reward_manager import REWARD_MANAGER_NAME

    sampler = OmegaConf.select(config, "trainer.v1.sampler")
    if sampler is None or OmegaConf.select(sampler, "custom_sampler.name") != PerTaskDynamicSampler.__name__:
        return []
    errors = []
    sync_step_error = parameter_sync_step_error(OmegaConf.select(config, PARAMETER_SYNC_STEP_SETTING))
    if sync_step_error:
        errors.append(sync_step_error)
    try:
        settings = FilteringSettings.from_kwargs(sampler.get("sampler_kwargs"))
    except (TypeError, ValueError) as error:
        return [*errors, str(error)]
    scored_by_mixed_reward = OmegaConf.select(config, "reward.reward_manager.name") == REWARD_MANAGER_NAME and not (
        OmegaConf.select(config, "reward.custom_reward_function.path")
    )
    if scored_by_mixed_reward and settings.metric not in AVERAGED_KEYS:
        errors.append(
            f"trainer.v1.sampler.sampler_kwargs.metric={settings.metric!r} (algorithm.filter_groups.metric) is not "
            f"a number the mixed_r1 reward reports; use one of {', '.join(AVERAGED_KEYS)}"
        )
    return errors


def reward_setting_errors(config: DictConfig) -> list[str]:
    """What the mixed_r1 reward manager would refuse only in its workers, once Ray and the trainer are up:
    an option it does not know or cannot use, a wrong overlong_buffer_cfg."""
    from mixed_r1_verl.verl_adapter.reward_manager import REWARD_MANAGER_NAME, configured_overlong_buffer

    if OmegaConf.select(config, "reward.reward_manager.name") != REWARD_MANAGER_NAME:
        return []
    try:
        configured_overlong_buffer(config)
    except ValueError as error:
        return [str(error)]
    return []


def image_bound_setting_errors(config: DictConfig) -> list[str]:
    """A `data.mm_processor_kwargs` bound the image processor would ignore; the dataset refuses it only
    once Ray and the trainer are up."""
    from mixed_r1_verl.data.dataset import lone_pixel_bound_error

    error = lone_pixel_bound_error(OmegaConf.select(config, "data.mm_processor_kwargs"))
    return [error] if error else []


def sampler_setting_errors(config: DictConfig) -> list[str]:
    """A `data.sampler` the `mixed_r1_sync` trainer could not load (it loads it only after building the
    training and validation sets), or one set for another trainer mode: only `mixed_r1_sync` applies it,
    verl's own trainers shuffle without it."""
    from mixed_r1_verl.data.balanced_sampler import SamplerConfigError, sampler_class
    from mixed_r1_verl.verl_adapter.trainer import TRAINER_MODE

    try:
        selected = sampler_class(config.data)
    except SamplerConfigError as error:
        return [str(error)]
    trainer_mode = OmegaConf.select(config, "trainer.v1.trainer_mode")
    if selected is not None and trainer_mode != TRAINER_MODE:
        return [
            f"data.sampler.class_name={config.data.sampler.class_name} is applied only by "
            f"trainer.v1.trainer_mode={TRAINER_MODE}, not trainer.v1.trainer_mode={trainer_mode}, whose trainer "
            "would shuffle the prompts without it; set data.sampler.class_path=null data.sampler.class_name=null "
            "for verl's shuffle"
        ]
    return []


def pin_embedding_model(config: DictConfig) -> list[str]:
    """`reward.reward_kwargs.embedding_model` pinned as the policy's path is (`pin_model_path`: the reward workers
    do not share the launching directory), or why the mixed_r1 reward workers would not find it: they load it
    only after the actor and the reference model (not with a custom reward function, which replaces
    Mixed-Reward)."""
    from mixed_r1_verl.verl_adapter.reward_manager import REWARD_MANAGER_NAME

    reward = config.reward
    model = OmegaConf.select(reward, "reward_kwargs.embedding_model")
    if not model or OmegaConf.select(reward, "reward_manager.name") != REWARD_MANAGER_NAME:
        return []
    if OmegaConf.select(reward, "custom_reward_function.path"):
        return []
    try:
        reward.reward_kwargs.embedding_model = pin_model_path(str(model))
    except FileNotFoundError as error:
        return [f"reward.reward_kwargs.embedding_model={model}: {error}"]
    return []


# verl's top-level reward settings before its reward loop, and where verl 0.9.1 reads each now (as verl's
# own migration for its fully-async entry moves them); its trainer leaves the old keys unread.
LEGACY_REWARD_NODES = ("custom_reward_function", "reward_model", "sandbox_fusion")
LEGACY_REWARD_KEYS = {
    "reward_model.num_workers": "reward.num_workers",
    "reward_model.reward_manager": "reward.reward_manager.name",
    "reward_model.reward_loop_source": "reward.reward_manager.source",
    "reward_model.reward_loop_module_path": "reward.reward_manager.module.path",
    "reward_model.reward_loop_class_name": "reward.reward_manager.module.name",
    "reward_model.model.path": "reward.reward_model.model_path",
    "reward_model.reward_kwargs": "reward.reward_kwargs",
}


def legacy_reward_settings(config: DictConfig) -> list[str]:
    """verl's old top-level reward settings that are set: verl 0.9.1's trainer reads only `reward.*`, so a
    `custom_reward_function.path=my_reward.py` from an older script would train with Mixed-Reward, silently."""
    errors = []
    for node in LEGACY_REWARD_NODES:
        settings = OmegaConf.to_container(config.get(node) or {}, resolve=True)
        for key, value in flat_settings(settings, node):
            if value is None:
                continue
            place = LEGACY_REWARD_KEYS.get(key, f"reward.{key}")
            shown = str(value).lower() if isinstance(value, bool) else value  # as the command line wrote it
            errors.append(f"{key}={shown} is a setting verl 0.9.1's trainer no longer reads: set {place}")
    return errors


def flat_settings(settings, prefix: str) -> list[tuple[str, object]]:
    """(dotted key, value) for every leaf of a nested dict."""
    if not isinstance(settings, dict):
        return [(prefix, settings)]
    return [leaf for key, value in settings.items() for leaf in flat_settings(value, f"{prefix}.{key}")]


def file_logger_env(environ) -> dict[str, str]:
    """Where verl's file logger writes, made absolute: $VERL_FILE_LOGGER_PATH, else a file under
    $VERL_FILE_LOGGER_ROOT (default: the working directory of the Ray worker that logs)."""
    if environ.get(FILE_LOGGER_PATH_ENV):
        return {FILE_LOGGER_PATH_ENV: os.path.abspath(os.path.expanduser(environ[FILE_LOGGER_PATH_ENV]))}
    return {FILE_LOGGER_ROOT_ENV: os.path.abspath(os.path.expanduser(environ.get(FILE_LOGGER_ROOT_ENV, ".")))}


def logs_to_file(config: DictConfig) -> bool:
    loggers = config.trainer.logger
    return "file" in ([loggers] if isinstance(loggers, str) else loggers)


def file_logger_path(config: DictConfig, logger_env: dict[str, str]) -> Path:
    """The file verl's file logger writes, given the environment `file_logger_env` returned."""
    if FILE_LOGGER_PATH_ENV in logger_env:
        return Path(logger_env[FILE_LOGGER_PATH_ENV])
    root = Path(logger_env[FILE_LOGGER_ROOT_ENV])
    return root / config.trainer.project_name / f"{config.trainer.experiment_name}.jsonl"


def prepare_metrics_log(path: Path) -> Path | None:
    """Readies the file verl's file logger will write; returns where an earlier run's metrics were kept.

    verl creates only its default directory, so an explicit path's directory is made here. And it
    empties its file when a run starts, so a rerun (a resume, say) would erase the steps logged before:
    a non-empty file is renamed to `<stem>.<n>.jsonl` (the first free n) and kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    number = 1
    while (kept := path.with_name(f"{path.stem}.{number}{path.suffix}")).exists():
        number += 1
    path.rename(kept)
    logger.warning("metrics of the previous run kept as %s; this run logs to %s", kept, path)
    return kept


def in_ray_job_copy(path: str, environ) -> bool:
    """Whether `path` lies in the node-local copy of the code a submitted Ray job runs in."""
    return RAY_JOB_CONFIG_ENV in environ and Path(path).resolve().is_relative_to(Path.cwd().resolve())


def unshared_output_settings(config: DictConfig, environ) -> list[str]:
    """Output locations that several nodes or a later submission cannot share: relative ones (each Ray
    worker resolves them in its own working directory) and, in a submitted Ray job, those inside the
    job's node-local copy."""
    outputs = {"trainer.default_local_dir": config.trainer.default_local_dir}
    if logs_to_file(config):
        name = FILE_LOGGER_PATH_ENV if environ.get(FILE_LOGGER_PATH_ENV) else FILE_LOGGER_ROOT_ENV
        outputs[name] = os.path.expanduser(environ.get(name, "."))
    return [
        f"{name}={value}"
        for name, value in outputs.items()
        if not os.path.isabs(value) or in_ray_job_copy(value, environ)
    ]


def pin_output_paths(config: DictConfig, environ) -> dict[str, str]:
    """Make checkpoint and log locations absolute; returns the file logger's environment for every Ray
    worker. Multi-node runs must name shared ones. A submitted Ray job runs in a node-local copy of the
    code, a new one whenever the code changes: checkpoints kept there are not found by the next
    submission (trainer.resume_mode=auto starts afresh) and are left in Ray's temporary directory."""
    in_job = RAY_JOB_CONFIG_ENV in environ
    if config.trainer.nnodes > 1 or in_job:
        unshared = unshared_output_settings(config, environ)
        if unshared:
            fail(
                f"trainer.nnodes={config.trainer.nnodes}{' in a Ray job' if in_job else ''}: checkpoints and logs "
                "must go to a directory every node shares, given as an absolute path outside the job's working "
                "copy (a Ray job's node-local copy of the code, a new one when the code changes); not there: "
                f"{', '.join(unshared)}; set e.g. trainer.default_local_dir=/shared/ckpt/<run> and "
                "VERL_FILE_LOGGER_ROOT=/shared/logs.\n"
            )
    make_paths_absolute(config, ("trainer.default_local_dir",))
    return file_logger_env(environ)


def add_ray_env_vars(config: DictConfig, env_vars: dict[str, str], environ) -> None:
    """Environment of every Ray worker verl starts. In a submitted job these repeat (made absolute) what the
    job's runtime env may already set, so the driver's values win instead of Ray refusing the merge."""
    for name, value in env_vars.items():
        OmegaConf.update(config, f"{RAY_ENV_VARS_KEY}.{name}", value, force_add=True)
        environ[name] = value
    environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"


def import_plugins(modules: tuple[str, ...]) -> dict[str, str]:
    """verl loads its `verl.plugins` entry points itself but logs a failing one at debug level only, and
    the run then stops on `Unknown reward manager`; imported here, a broken plugin fails with its own error.
    Returns the variable that makes verl import them in every Ray worker too."""
    for module in modules:
        importlib.import_module(module)
    requested = [m for m in os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    return {"VERL_USE_EXTERNAL_MODULES": ",".join(dict.fromkeys([*requested, *modules]))}


def flash_attn_importable() -> bool:
    try:
        importlib.import_module("flash_attn")
    except Exception:  # ImportError, or OSError/RuntimeError from a build that does not match torch
        return False
    return True


def choose_attention(config: DictConfig, flash_attn_available: bool, model_key: str = POLICY_MODEL_KEY) -> None:
    """verl loads the model (settings under `model_key`) with flash_attention_2 unless told otherwise, and
    padding removal needs flash-attn's variable-length kernels: without flash-attn use sdpa on padded batches."""
    if flash_attn_available:
        return
    if OmegaConf.select(config, f"{model_key}.override_config.attn_implementation") not in (None, "flash_attention_2"):
        return  # the user chose an attention that does not need flash-attn
    fallback = {f"{model_key}.{key}": value for key, value in FLASH_ATTN_FALLBACK.items()}
    for key, value in fallback.items():
        OmegaConf.update(config, key, value, force_add=True)
    logger.warning(
        "flash_attn is not importable: training with %s (pip install flash-attn --no-build-isolation to use it)",
        " ".join(f"{key}={value}" for key, value in fallback.items()),
    )


def default_ray_cpus(config: DictConfig, environ, usable_cpus: int) -> None:
    """A Ray started by this process counts the host's CPUs, more than a container, a Slurm step or a
    `taskset` lets it use, and sizes its worker pools by them: give it the CPUs this process may run
    on, unless `ray_kwargs.ray_init.num_cpus` is set or Ray runs elsewhere (RAY_ADDRESS), where it
    may not be given."""
    if environ.get("RAY_ADDRESS") or OmegaConf.select(config, RAY_CPUS_KEY) is not None:
        return
    OmegaConf.update(config, RAY_CPUS_KEY, usable_cpus, force_add=True)
    if usable_cpus != os.cpu_count():
        logger.warning("%s=%d: the CPUs this process may use, of the host's %s", RAY_CPUS_KEY, usable_cpus, os.cpu_count())


def make_paths_absolute(config: DictConfig, keys: tuple[str, ...]) -> None:
    """Ray workers (and torchrun workers) do not share the launching directory, so relative paths, a
    path or a list of them, are pinned to it here."""
    for key in keys:
        value = OmegaConf.select(config, key)
        if value is not None:
            absolute = [os.path.abspath(path) for path in data_files(value)]
            OmegaConf.update(config, key, absolute[0] if isinstance(value, str) else absolute)


def pin_model_path(path: str) -> str:
    """A model path that processes outside the launching directory read alike: an existing local path
    made absolute (`~` expanded); a Hugging Face hub id as given (verl loads it through transformers, which
    fetches it or reads the cache), except that with HF_HUB_OFFLINE it becomes its snapshot in the cache,
    checked to hold weights. FileNotFoundError when it is neither, or when offline and the cache lacks it."""
    missing = missing_model_path(path)
    if missing:
        raise FileNotFoundError(missing)
    if os.path.exists(os.path.expanduser(path)):
        return os.path.abspath(os.path.expanduser(path))
    from huggingface_hub import constants

    from mixed_r1_verl.data.model_files import resolve_model_dir

    if not constants.HF_HUB_OFFLINE:
        return path
    snapshot = resolve_model_dir(path)
    if not any(snapshot.glob("*.safetensors")) and not any(snapshot.glob("*.bin")):
        raise FileNotFoundError(
            f"the Hugging Face cache holds no weights of {path!r} ({snapshot}; the data tools fetch only the "
            f"processor files) and HF_HUB_OFFLINE is set: run `hf download {path}` where the "
            "network is reachable, or pass a local directory"
        )
    return str(snapshot)


def data_files(setting) -> list[str]:
    """data.train_files / data.val_files: one parquet path or a list of them."""
    return [setting] if isinstance(setting, str) else list(setting)


def parquet_rows(path: str | Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def max_samples(config: DictConfig, key: str) -> int:
    """data.train_max_samples or data.val_max_samples, for data.train_files or data.val_files (-1: all)."""
    return config.data.get("train_max_samples" if key == "train_files" else "val_max_samples", -1)


def set_rows(config: DictConfig, key: str) -> int:
    """Rows of data.train_files or data.val_files that verl's datasets read (their max_samples limit)."""
    rows = sum(parquet_rows(path) for path in data_files(config.data[key]))
    limit = max_samples(config, key)
    return min(rows, limit) if limit > 0 else rows


def has_rows(path: Path) -> bool:
    return path.is_file() and parquet_rows(path) > 0


def exit_unless_data_files_exist(data: DictConfig, environ) -> None:
    """verl builds the training and the validation set at start-up, in a Ray worker, and fails there on
    a missing file; say which setting names it here."""
    for key in ("train_files", "val_files"):
        for path in data_files(data[key]):
            if Path(path).is_file():
                continue
            if in_ray_job_copy(path, environ):
                advice = (
                    "A Ray job resolves relative paths in its node-local copy of the code, which carries no data "
                    f"(launch/ray_job.sh leaves data/ and *.parquet out): set MIXED_R1_DATA, or data.{key}, to an "
                    "absolute path every node reads."
                )
            else:
                advice = (
                    "Convert the data first (python -m mixed_r1_verl.data.prepare ... output_dir=<dir>, then "
                    f"mixed_r1.data_dir=<dir>) or point data.{key} at a parquet file. verl builds the validation "
                    "set even with trainer.test_freq=-1, so a conversion with val_ratio=0 needs data.val_files "
                    "set to another parquet."
                )
            fail(f"data.{key}: {path} does not exist. {advice}\n", EXIT_USAGE)


def build_tiny_model(model_family: str, model_dir: str, seed: int) -> None:
    if model_family == "qwen2_5_vl":
        from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl

        build_tiny_qwen25vl(model_dir, seed=seed)
    elif model_family == "qwen3_vl":
        from mixed_r1_verl.models.tiny_qwen3vl import build_tiny_qwen3vl

        build_tiny_qwen3vl(model_dir, seed=seed)
    elif model_family == "internvl":
        from mixed_r1_verl.models.tiny_internvl import build_tiny_internvl

        build_tiny_internvl(model_dir, seed=seed)
    else:
        fail(
            f"mixed_r1.smoke.model_family={model_family!r}: the smoke recipes build qwen2_5_vl, qwen3_vl or internvl\n",
            EXIT_USAGE,
        )


def prepare_smoke(smoke: DictConfig, model_dir: str, data_dir: str, max_prompt_length: int) -> None:
    """Build the tiny model and the synthetic four-task dataset unless they already exist (a dataset
    with an empty split, as older versions wrote, is built again)."""
    if not (Path(model_dir) / "config.json").is_file():
        build_tiny_model(smoke.model_family, model_dir, seed=smoke.seed)
    data = Path(data_dir)
    if has_rows(data / "train.parquet") and has_rows(data / "val.parquet"):
        summary = data / "summary.json"
        converted_for = json.loads(summary.read_text()).get("model_family") if summary.is_file() else None
        if converted_for not in (None, smoke.model_family):
            fail(
                f"{data} was converted for {converted_for}, not for mixed_r1.smoke.model_family={smoke.model_family} "
                "(its boxes are in another frame): give each model family its own mixed_r1.smoke.work_dir\n",
                EXIT_USAGE,
            )
        return
    from mixed_r1_verl.data.synthetic import write_synthetic_dataset

    jsonl_path, image_root = write_synthetic_dataset(
        Path(smoke.work_dir) / "synthetic", rows_per_task=smoke.rows_per_task, seed=smoke.seed
    )
    subprocess.run(
        [
            sys.executable, "-m", "mixed_r1_verl.data.prepare",
            f"input={jsonl_path}", f"image_root={image_root}", f"output_dir={data}",
            f"model_family={smoke.model_family}", f"model_path={model_dir}",
            f"max_prompt_length={max_prompt_length}",
        ],
        check=True,
    )  # fmt: skip


def installed_tasks_env() -> dict[str, str]:
    """The driver's installed tasks, for the reward workers to check theirs; an installed task that cannot be
    used stops the entry here (the reward workers would stop on it at start-up, after Ray and the models)."""
    from mixed_r1_verl.rewards.tasks import TaskPluginError, driver_tasks_env

    try:
        return driver_tasks_env()
    except TaskPluginError as error:
        fail(f"{error}\n", EXIT_USAGE)


# The GPU counts, batch sizes and parallel sizes the entry's own checks divide by; the micro-batch sizes may
# be null (verl then sizes micro-batches by tokens).
GRPO_SIZE_KEYS = (
    "trainer.nnodes", "trainer.n_gpus_per_node", "data.train_batch_size", "actor_rollout_ref.rollout.n",
    "actor_rollout_ref.actor.ppo_mini_batch_size", "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
    "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size",
    "actor_rollout_ref.rollout.tensor_model_parallel_size", "actor_rollout_ref.rollout.data_parallel_size",
    "actor_rollout_ref.rollout.pipeline_model_parallel_size",
)  # fmt: skip
GRPO_OPTIONAL_SIZE_KEYS = (
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
)


def exit_unless_sizes_are_positive(config: DictConfig, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Each of `keys`, and each of `optional` that is set, must be a whole number of at least 1: the checks
    after this one divide by them."""
    for key in (*keys, *optional):
        value = OmegaConf.select(config, key)
        if key in optional and value is None:
            continue
        if type(value) is not int or value < 1:
            fail(f"{key}={value!r}: it must be a whole number of at least 1.\n", EXIT_USAGE)


def train(config: DictConfig) -> None:
    exit_unless_sizes_are_positive(config, GRPO_SIZE_KEYS, GRPO_OPTIONAL_SIZE_KEYS)
    make_paths_absolute(config, ("mixed_r1.data_dir", "mixed_r1.smoke.work_dir", "trainer.resume_from_path"))
    worker_env = pin_output_paths(config, os.environ)
    exit_unless_resume_settings_work(config.trainer)
    exit_if_resuming_across_lora(config)
    exit_if_training_is_done(config.trainer, *planned_steps(config))
    exit_if_stop_by_is_not_ahead(config.mixed_r1)
    mismatches = [
        *actor_update_mismatches(config),
        *log_prob_micro_batch_mismatches(config),
        *rollout_parallel_mismatches(config),
        *sync_step_mismatches(config),
    ]
    if mismatches:
        fail("; ".join(mismatches) + ". verl would stop on it only after start-up.\n", EXIT_USAGE)
    tasks_env = installed_tasks_env()  # first: the checks below read the installed tasks
    setting_errors = [
        *legacy_reward_settings(config), *filtering_setting_errors(config), *reward_setting_errors(config),
        *sampler_setting_errors(config), *image_bound_setting_errors(config),
    ]  # fmt: skip
    if setting_errors:
        fail("; ".join(setting_errors) + ".\n", EXIT_USAGE)
    exit_unless_local_gpus_suffice(config)
    if os.environ.get("RAY_ADDRESS"):
        check_cluster_gpus(config)
    if config.mixed_r1.smoke is not None:
        prepare_smoke(
            config.mixed_r1.smoke,
            config.actor_rollout_ref.model.path,
            config.mixed_r1.data_dir,
            config.data.max_prompt_length,
        )
    try:  # absolute, so that Ray's workers and the checkpoints' run config read it alike
        config.actor_rollout_ref.model.path = pin_model_path(config.actor_rollout_ref.model.path)
    except FileNotFoundError as error:
        fail(f"actor_rollout_ref.model.path: {error}\n", EXIT_USAGE)
    start_from_merged_adapter(config)
    model_errors = [*pin_embedding_model(config), *lora_mismatches(config)]
    context_length = model_context_length(config.actor_rollout_ref.model)
    if context_length is not None:
        model_errors += context_length_errors(config.actor_rollout_ref.rollout, context_length)
    if model_errors:
        fail("; ".join(model_errors) + ".\n", EXIT_USAGE)
    if context_length is not None:
        pin_max_model_len(config.actor_rollout_ref.rollout, context_length)
    exit_unless_data_files_exist(config.data, os.environ)
    steps_per_epoch = set_rows(config, "train_files") // config.data.train_batch_size
    exit_if_steps_outrun_the_epochs(config.trainer, steps_per_epoch, "verl's trainer")
    add_ray_env_vars(config, {**worker_env, **tasks_env, **import_plugins(PLUGIN_MODULES)}, os.environ)
    default_ray_cpus(config, os.environ, len(os.sched_getaffinity(0)))
    shortfall = local_ray_cpu_shortfall(config)
    if shortfall:
        fail(shortfall)
    choose_attention(config, flash_attn_importable())
    log_recipe_rate_under_lora(config, config_dir() / "lora" / "on.yaml", "actor_rollout_ref.actor.optim.lr")

    import ray
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    if logs_to_file(config):
        prepare_metrics_log(file_logger_path(config, worker_env))
    # Resolved here, where Hydra's resolver is: verl resolves the config in its Ray actor, which would
    # stop on a `${hydra:runtime.choices.<group>}` that names a sweep's jobs.
    OmegaConf.resolve(config)
    try:
        run_ppo(config, task_runner_class=TaskRunnerV1)
    finally:
        # With every worker of the run: the next job of a `-m` sweep, run in this process, then starts Ray
        # with its own workers' environment and every GPU free.
        ray.shutdown()


def register_recipes() -> list[str]:
    return register_recipe_files(recipe_dir())


def main() -> None:
    run_recipe_entry("mixed_r1_verl.main", recipe_dir(), config_dir(), PRIMARY_CONFIG, train)


if __name__ == "__main__":
    main()

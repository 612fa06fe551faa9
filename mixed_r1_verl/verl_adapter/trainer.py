"""V1 trainer `mixed_r1_sync`: verl's synchronous PPO/GRPO trainer that also logs, every step, the
reward, accuracy, correct rate, format rate, error rate and response length of each Mixed-R1 task
(`mixed_r1/<task>/...`), logs verl's length clip ratios against the rollout's limits, and with
`mixed_r1.stop_by` ends the run with a checkpoint before that time (`stop_by.py`). Each checkpoint
gets the run's config beside it (`mixed_r1_verl/run_config.py`), and a LoRA run's a Hugging Face copy
with the adapters merged in, where verl saves them under peft's names (`mixed_r1_verl/models/lora.py`).

Select it with `trainer.v1.trainer_mode=mixed_r1_sync`. Its settings are verl's `sync` ones
(`trainer.v1.sync.*`; verl's is empty, so they are added with a leading `+`, e.g.
`+trainer.v1.sync.parameter_sync_step=2`).
"""

from __future__ import annotations

import os
import time
from itertools import compress
from pathlib import Path

import ray
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf

from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.debug import marked_timer
from mixed_r1_verl.data.balanced_sampler import check_resumed_sampler, with_configured_sampler
from mixed_r1_verl.models.lora import merge_saved_adapters
from mixed_r1_verl.models.weight_files import remove_weight_files
from mixed_r1_verl.run_config import resumed_settings_note, train_file_digests, write_run_config
from mixed_r1_verl.verl_adapter.loader_processes import resume_with_saved_worker_count, stop_loader_processes
from mixed_r1_verl.verl_adapter.metrics import PerTaskMetricsLog, length_clip_ratios, prompt_uid, response_caps
from mixed_r1_verl.verl_adapter.stop_by import StopBy, write_early_end

TRAINER_MODE = "mixed_r1_sync"
VERL_SYNC_MODE = "sync"


def is_padding(tag) -> bool:
    return tag.get("is_padding", False)


def reward_extra_infos(extra_fields, tags, keys) -> tuple[list[dict], list[str]]:
    """The reward manager's extra info of every non-padding row ({} where it has none), and the row's prompt
    group (the uid its TransferQueue key starts with)."""
    infos, groups = [], []
    for extra, tag, key in zip(extra_fields, tags, keys, strict=True):
        if not is_padding(tag):
            infos.append((extra.get("reward_extra_info") if isinstance(extra, dict) else None) or {})
            groups.append(prompt_uid(key))
    return infos, groups


def batch_trajectories(batch) -> tuple[list[dict], list[str], list[int], list[int]]:
    """The reward manager's extra info, the prompt group, and the prompt and response lengths in tokens of
    every non-padding trajectory of a TransferQueue batch, from one fetch."""
    fields = ["extra_fields", "prompts", "responses"]
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
    infos, groups = reward_extra_infos(data.pop("extra_fields").tolist(), batch.tags, batch.keys)
    real = [not is_padding(tag) for tag in batch.tags]
    # TransferQueue hands token fields back jagged, even where every row has the same length.
    prompts, responses = (data[field].offsets().diff().tolist() for field in ("prompts", "responses"))
    return infos, groups, list(compress(prompts, real)), list(compress(responses, real))


def wait_for_reward_workers(workers) -> None:
    """Returns once every reward worker is built; raises the first worker's start-up error otherwise."""
    try:
        ray.get([worker.__ray_ready__.remote() for worker in workers])
    except ray.exceptions.RayActorError as error:
        raise RuntimeError(f"a reward worker failed to start: {error}") from error


def resumed_checkpoint(trainer_config, global_step: int) -> str:
    """The checkpoint folder verl resumed from at `global_step`."""
    if trainer_config.resume_mode == "resume_path":
        return str(trainer_config.resume_from_path)
    return os.path.join(str(trainer_config.default_local_dir), f"global_step_{global_step}")


@register_trainer(TRAINER_MODE)
class MixedR1SyncTrainer(PPOTrainerSync):
    """verl's sync trainer plus per-task metrics.

    verl reads the mode from the config in many places (the trainer's own `__init__`, which picks the
    replay buffer and `trainer.v1.<mode>.parameter_sync_step`, the rollout skip manager, checkpoints)
    and branches on the name `"sync"`. verl has already chosen this class by the time it is built, so
    the config is switched to verl's name before any of that runs: the mode is `sync` in every respect.
    """

    def __init__(self, config: DictConfig):
        config.trainer.v1.trainer_mode = VERL_SYNC_MODE
        self._task_metrics = PerTaskMetricsLog()
        self._stop_by = StopBy.from_config(config)
        super().__init__(config)

    def _setup(self):
        super()._setup()
        # verl starts the reward workers without waiting for them: one that could not start (an
        # embedding model that cannot be loaded, no GPU for BMAS) would only surface as failed rollouts.
        wait_for_reward_workers(self.reward_loop_manager.reward_loop_workers)

    def _init_dataloader(self):
        """verl 0.9.1 has no custom-sampler setting; `data.sampler` (class_path, class_name) adds one."""
        super()._init_dataloader()
        self.train_dataloader = with_configured_sampler(self.train_dataloader, self.config.data)
        self._train_files = train_file_digests(self.config)

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.global_steps:
            checkpoint = resumed_checkpoint(self.config.trainer, self.global_steps)
            check_resumed_sampler(self.train_dataloader, checkpoint)
            said = resume_with_saved_worker_count(self.train_dataloader, checkpoint, "data.dataloader_num_workers")
            changed = resumed_settings_note(Path(checkpoint), self._run_config(), self._train_files)
            for note in (said, changed):
                if note:
                    print(note, flush=True)

    def _save_checkpoint(self):
        """verl's save, with the run's config (and, for LoRA, the Hugging Face copy with the adapters merged
        in) written once the actor is saved, before verl records the checkpoint as the latest; weights an
        earlier run saved in the step's Hugging Face copy are removed first."""
        save_actor = self.actor_rollout_wg.save_checkpoint

        def save_actor_then_finish(local_path, *args, **kwargs):
            remove_weight_files(Path(local_path) / "huggingface")
            saved = save_actor(local_path, *args, **kwargs)
            write_run_config(self._run_config(), Path(local_path).parent, self._train_files)
            if self.config.actor_rollout_ref.model.lora_rank > 0:
                merge_saved_adapters(Path(local_path) / "huggingface")
            return saved

        self.actor_rollout_wg.save_checkpoint = save_actor_then_finish
        try:
            super()._save_checkpoint()
        finally:
            self.actor_rollout_wg.save_checkpoint = save_actor

    def _run_config(self) -> DictConfig:
        """The config as the run was started: a rerun from the saved one selects this mode, not verl's."""
        return OmegaConf.merge(self.config, {"trainer": {"v1": {"trainer_mode": TRAINER_MODE}}})

    def fit(self, agent_loop_manager):
        try:
            super().fit(agent_loop_manager)
        finally:
            stop_loader_processes(self.train_dataloader)
            stop_loader_processes(self.val_dataloader)

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        rollout = self.config.actor_rollout_ref.rollout
        infos, groups, prompt_lengths, response_lengths = batch_trajectories(batch)
        caps = response_caps(prompt_lengths, rollout)
        metrics.update(length_clip_ratios(prompt_lengths, response_lengths, caps, rollout.prompt_length))
        metrics.update(self._task_metrics.step(infos, groups, zip(response_lengths, caps, strict=True)))

    # verl calls these around every validation, the one before training (which it does not time) included,
    # so stop_by knows what the last step's validation takes from the first step on.
    def on_validate_begin(self):
        super().on_validate_begin()
        self._validation_started = time.time()

    def on_validate_end(self):
        super().on_validate_end()
        if self._stop_by is not None:
            self._stop_by.record_validation(time.time() - self._validation_started)

    def on_train_begin(self):
        super().on_train_begin()
        self._planned_last_step = self.total_training_steps
        self._cycle_started = time.time()

    def on_step_end(self):
        # Before verl's weight sync wakes the rollout: a checkpoint saved here is saved where verl saves its own.
        if self._stop_by is not None:
            self._end_before_stop_by()
        super().on_step_end()

    def _end_before_stop_by(self):
        """Moves the last step to the last one that still fits before mixed_r1.stop_by; when that is the
        step just finished, saves its checkpoint (unless verl just did) and ends the run after it."""
        now, stop_by, trainer = time.time(), self._stop_by, self.config.trainer
        stop_by.record_cycle(now - self._cycle_started)
        self._cycle_started = now
        saved = "save_checkpoint" in self.timing_raw
        if saved:
            stop_by.record_save(self.timing_raw["save_checkpoint"])
        if self.global_steps >= self.total_training_steps:
            return  # verl decided before this step that it ends the run: a later estimate cannot move the end
        validates = trainer.test_freq > 0
        last = stop_by.last_step(self.global_steps, self._planned_last_step, now, validates)
        if last == self.total_training_steps:
            return
        estimate = stop_by.estimate(now, validates)
        planned = self._planned_last_step
        write_early_end(trainer.default_local_dir, last, planned, stop_by.stop_by)
        if last == self.global_steps:
            if not saved and trainer.save_freq > 0:
                with marked_timer("save_checkpoint", self.timing_raw, color="green"):
                    self._save_checkpoint()
                saved = True
            checkpoint = "saved" if saved else "not saved: trainer.save_freq <= 0"
            print(f"mixed_r1.stop_by: ending after step {last} of {planned}, {checkpoint} ({estimate})", flush=True)
        else:
            print(f"mixed_r1.stop_by: the last step is now {last} of {planned} ({estimate})", flush=True)
        self.total_training_steps = last

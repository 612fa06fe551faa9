"""V1 trainer `mixed_r1_sync`: verl's synchronous PPO/GRPO trainer that also logs, every step, the
reward, accuracy, format rate and error rate of each Mixed-R1 task (`mixed_r1/<task>/...`).

Select it with `trainer.v1.trainer_mode=mixed_r1_sync`.
"""

from __future__ import annotations

import numpy as np
import transfer_queue as tq

from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from mixed_r1_verl.data.balanced_sampler import with_configured_sampler
from mixed_r1_verl.verl_adapter.metrics import per_task_metrics

TRAINER_MODE = "mixed_r1_sync"
VERL_SYNC_MODE = "sync"


def reward_extra_infos(extra_fields, tags) -> list[dict]:
    """The reward manager's extra info of every non-padding row."""
    keep = np.array([not tag.get("is_padding", False) for tag in tags], dtype=bool)
    infos = []
    for row, extra in zip(keep, extra_fields):
        if row and isinstance(extra, dict):
            infos.append(extra.get("reward_extra_info") or {})
    return infos


@register_trainer(TRAINER_MODE)
class MixedR1SyncTrainer(PPOTrainerSync):
    """verl's sync trainer plus per-task metrics. verl branches on `trainer_mode == "sync"` (replay
    buffer, refill, checkpoints), so the mode is set back to verl's name before anything reads it."""

    def _init_dataloader(self):
        """verl 0.9.1 has no custom-sampler setting; `data.sampler` (class_path, class_name) adds one."""
        super()._init_dataloader()
        self.train_dataloader = with_configured_sampler(self.train_dataloader, self.config.data)

    def _build_replay_buffer(self):
        self.trainer_mode = VERL_SYNC_MODE
        return super()._build_replay_buffer()

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
        metrics.update(per_task_metrics(reward_extra_infos(data.pop("extra_fields").tolist(), batch.tags)))

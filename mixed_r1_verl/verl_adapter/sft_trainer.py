"""verl's SFT trainer with `mixed_r1.stop_by`: the run ends with a checkpoint at the last step that still
fits before that Unix time, as the `mixed_r1_sync` GRPO trainer does (`stop_by.py`).

verl's `SFTTrainer.fit` ends at the step where `global_step >= self.total_training_steps`, checked after
every step, and then validates (with a validation set) and saves. After every training batch this class
times the step and lowers `total_training_steps` to the last step that fits, so verl's own last-step
path validates and saves it. Every rank takes rank 0's decision, so all of them stop at the same step.
A resumed run may also change `data.num_workers` (`loader_processes.py`). The datasets leave out rows
longer than `data.max_length`; the sets left must still fill a batch and the planned steps, as the
entry checks the parquet's rows before start-up. Each checkpoint gets the run's config beside it
(`mixed_r1_verl/run_config.py`), and a LoRA run's a Hugging Face copy with the adapters merged in,
where verl saves them under peft's names (`mixed_r1_verl/models/lora.py`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed
from omegaconf import DictConfig
from verl.trainer.sft_trainer import SFTTrainer
from verl.utils.distributed import destroy_global_process_group, initialize_global_process_group

from mixed_r1_verl.models.lora import merge_saved_adapters
from mixed_r1_verl.models.weight_files import remove_weight_files
from mixed_r1_verl.run_config import resumed_settings_note, train_file_digests, write_run_config
from mixed_r1_verl.sft import exit_unless_rows_fill_the_run
from mixed_r1_verl.verl_adapter.loader_processes import resume_with_saved_worker_count
from mixed_r1_verl.verl_adapter.stop_by import StopBy


class MixedR1SFTTrainer(SFTTrainer):
    def __init__(self, config: DictConfig):
        self._stop_by = StopBy.from_config(config)
        super().__init__(config)
        if self.resume_global_step:
            checkpoint = self.ckpt_handler._determine_resume_path()
            if self.resume_global_step % self.steps_per_epoch == 0:
                # Saved after the epoch's last batch, before the loader's end: restored, the next epoch (verl
                # starts there) would yield nothing. It starts afresh, as in a run that did not stop.
                self.train_dataloader.next_iter_state = None
            said = resume_with_saved_worker_count(self.train_dataloader, checkpoint, "data.num_workers")
            if self.rank == 0:
                for note in (said, resumed_settings_note(Path(checkpoint), config, self._train_files)):
                    if note:
                        print(note, flush=True)

    def _build_dataset(self):
        super()._build_dataset()
        # Read whole by the rank that saves them only: every rank would read each file again.
        self._train_files = train_file_digests(self.config) if self.rank == 0 else {}
        rows = {"train_files": len(self.train_dataset)}
        if self.val_dataset is not None:
            rows["val_files"] = len(self.val_dataset)
        exit_unless_rows_fill_the_run(self.config, rows, f" within data.max_length={self.config.data.max_length}")

    def _build_dataloader(self):
        super()._build_dataloader()
        # verl 0.9.1 leaves its DistributedSampler at seed 0 whatever trainer.seed says.
        self.train_sampler.seed = int(self.config.trainer.seed)

    def _build_engine(self):
        super()._build_engine()
        if self._stop_by is None:
            return
        train_batch, infer_batch = self.training_client.train_batch, self.training_client.infer_batch
        self._validation_s = 0.0

        def timed_train_batch(*args, **kwargs):
            output = train_batch(*args, **kwargs)
            self._end_before_stop_by()
            return output

        def timed_infer_batch(*args, **kwargs):
            started = time.time()
            output = infer_batch(*args, **kwargs)
            self._validation_s += time.time() - started
            return output

        self.training_client.train_batch = timed_train_batch
        self.training_client.infer_batch = timed_infer_batch

    def _build_ckpt_handler(self):
        super()._build_ckpt_handler()
        self._finish_each_saved_checkpoint()
        if self._stop_by is None:
            return
        save_checkpoint = self.ckpt_handler.save_checkpoint

        def timed_save_checkpoint(*args, **kwargs):
            started = time.time()
            save_checkpoint(*args, **kwargs)
            self._stop_by.record_save(time.time() - started)

        self.ckpt_handler.save_checkpoint = timed_save_checkpoint

    def _finish_each_saved_checkpoint(self):
        """After the engine saves a checkpoint, and before verl records it as the latest, rank 0 saves the
        run's config beside it and, for LoRA, rewrites its Hugging Face copy (huggingface/, saved with
        hf_model) with the adapters merged in. Before, rank 0 (which alone writes that copy) removes the
        weights an earlier run saved there."""
        engine = self.ckpt_handler.engine
        save_checkpoint = engine.save_checkpoint
        lora = self.config.model.lora_rank > 0

        def save_checkpoint_finished(*args, local_path, **kwargs):
            if self.rank == 0:
                remove_weight_files(Path(local_path) / "huggingface")
            save_checkpoint(*args, local_path=local_path, **kwargs)
            if self.rank == 0:
                write_run_config(self.config, Path(local_path), self._train_files)
                if lora:
                    merge_saved_adapters(Path(local_path) / "huggingface")
            torch.distributed.barrier()

        engine.save_checkpoint = save_checkpoint_finished

    def fit(self):
        self._planned_last_step = self.total_training_steps
        self._step = self.resume_global_step
        self._cycle_started = time.time()
        super().fit()

    def _end_before_stop_by(self):
        """After each training batch (verl checks for its last step right after): the last step that
        still fits before stop_by, on rank 0, for every rank."""
        now, stop_by = time.time(), self._stop_by
        self._step += 1
        stop_by.record_cycle(now - self._cycle_started)
        self._cycle_started = now
        if self._validation_s:
            stop_by.record_validation(self._validation_s)
            self._validation_s = 0.0
        validates = self.val_dataloader is not None
        last = stop_by.last_step(self._step, self._planned_last_step, now, validates)
        if torch.distributed.get_world_size() > 1:
            decided = torch.tensor([last], device=self.device_name)
            torch.distributed.broadcast(decided, src=0)
            last = int(decided.item())
        if last >= self.total_training_steps:
            return
        estimate = stop_by.estimate(now, validates)
        planned = self._planned_last_step
        if self.rank == 0:
            if last == self._step:
                print(f"mixed_r1.stop_by: ending after step {last} of {planned}, saved ({estimate})", flush=True)
            else:
                print(f"mixed_r1.stop_by: the last step is now {last} of {planned} ({estimate})", flush=True)
        self.total_training_steps = last


def run_sft(config: DictConfig) -> None:
    """verl's `run_sft` with this trainer."""
    initialize_global_process_group()
    MixedR1SFTTrainer(config).fit()
    destroy_global_process_group()

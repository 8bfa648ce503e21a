"""Preemption: SLURM's pre-timeout signal becomes a checkpoint at the next step boundary and a requeue.

Exactly one component owns the signal and the requeue: this callback. (Lightning's SLURM handler saves inside
the signal handler, mid-step; it is switched off with SLURMEnvironment(auto_requeue=False).) The checkpoint
holds the model, optimizer, schedule and loop state, plus the batch position in the epoch and the RNG state,
so the resumed run continues exactly where it stopped. The batch position is saved by the loader itself
(framework.data.TensorBatches implements Lightning's resumable-loader interface).
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytorch_lightning as pl
import torch


class Preempted(Exception):
    """Raised after the checkpoint is saved and the requeue asked for: the process should exit."""


def slurm_job_id() -> str | None:
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class Preemption(pl.Callback):
    def __init__(self, checkpoint: Path, signum: int = signal.SIGUSR1, requeue: bool = True):
        self.checkpoint, self.signum, self.requeue = Path(checkpoint), signum, requeue
        self.requested = False
        self._previous = None

    # -- the signal only sets a flag; the work happens at a step boundary
    def on_fit_start(self, trainer, pl_module):
        self._previous = signal.signal(self.signum, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def on_fit_end(self, trainer, pl_module):
        self._restore_handler()

    def on_exception(self, trainer, pl_module, exception):
        self._restore_handler()

    def _restore_handler(self):
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.requested:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # let the epoch end (its metrics, validation); stop after the next epoch's first batch
        # Lightning writes this step's metrics only after this hook: write them now, or the row is lost
        trainer._logger_connector.update_train_step_metrics()
        for logger in trainer.loggers:
            logger.save()
        # the loader has already yielded the next batch (Lightning prefetches): record what was trained
        trainer.train_dataloader.batches_done = batch_idx + 1
        tmp = self.checkpoint.with_suffix(".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.checkpoint)
            job = slurm_job_id()
            if self.requeue and job:
                subprocess.run(["scontrol", "requeue", job], check=False, timeout=30)
        raise Preempted(f"preempted at step {trainer.global_step}; checkpoint {self.checkpoint}")

    # -- what the checkpoint carries beyond Lightning's own state (the loader saves its batch position)
    def state_dict(self):
        return {"rng": torch.get_rng_state()}

    def load_state_dict(self, state):
        if "rng" in state:
            torch.set_rng_state(state["rng"])

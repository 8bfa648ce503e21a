"""Stop signals, owned for the whole task: SLURM's pre-timeout USR1, SIGTERM and Ctrl-C.

Exactly one component owns the signals and the requeue: this module. (Lightning's SLURM handler saves inside
the signal handler, mid-step; it is switched off with SLURMEnvironment(auto_requeue=False).) `StopSignals` is
installed once per task (`repro run`, an array task) and knows which phase the current run is in:

- fit: any of the three signals is a request; the `Preemption` callback checkpoints at the next step boundary
  (after an epoch's last batch: before the next epoch's first, so a full-batch run of one batch an epoch stops too)
  (model, optimizer, schedule, loop state, the batch position in the epoch, the RNG), the run is recorded
  `pending` with its checkpoint, and the task stops (USR1 under SLURM also asks for a requeue);
- prepare (data being built) and between runs: SIGTERM and Ctrl-C stop at once (nothing computed is lost;
  the run, if one had started, is recorded `failed: terminated` / `failed: interrupted`); USR1 stops before
  the next fit, with the run left `pending`;
- persist (final evaluation, writing the store): every signal waits until the run is stored, then the task
  stops before the next run.

The exit codes that follow are in framework/cli.py (EXIT_*).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytorch_lightning as pl
import torch


class Stop(Exception):
    """A stop signal ended the task; the run it names was recorded (pending with a checkpoint, or failed)."""
    reason = "stopped"
    signum = 0


class Preempted(Stop):
    reason, signum = "preempted", int(signal.SIGUSR1)


class Terminated(Stop):
    reason, signum = "terminated", int(signal.SIGTERM)


class Interrupted(Stop):
    reason, signum = "interrupted", int(signal.SIGINT)


STOPS = {int(signal.SIGUSR1): Preempted, int(signal.SIGTERM): Terminated, int(signal.SIGINT): Interrupted}


def slurm_job_id() -> str | None:
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class StopSignals:
    """The task's handler of USR1, TERM and INT (see the module docstring). One instance: SIGNALS."""

    def __init__(self):
        self.requested: int | None = None
        self.phase = "idle"
        self.requeued = False
        self._previous: dict[int, object] = {}

    def install(self) -> bool:
        """Takes the three signals; False when they were already taken (or this is not the main thread)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return False
        for signum in STOPS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return True

    @contextlib.contextmanager
    def owned(self):
        """Owns the signals for the block, unless an outer block (the command, the array task) already does."""
        mine = self.install()
        try:
            yield self
        finally:
            if mine:
                self.uninstall()
                self.reset()

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum, frame):
        second_ctrl_c = signum == signal.SIGINT and self.requested is not None
        self.requested = self.requested or signum
        deferred = signum == signal.SIGUSR1 or (self.phase in ("fit", "persist") and not second_ctrl_c)
        if deferred:
            return  # acted on at the next step boundary, or once the run is stored
        raise STOPS[signum](f"{STOPS[signum].reason} by signal {signal.Signals(signum).name}")

    def check(self, where: str) -> None:
        """Raises the pending stop, if any (called between runs and between a run's phases). The requeue a USR1
        under SLURM asks for comes later, once the stop is recorded (persist.record_stop, the task, the command):
        SLURM's requeue sends the task a TERM, which must not cut the recording short."""
        if self.requested is not None:
            raise STOPS[self.requested](f"{STOPS[self.requested].reason} by signal "
                                        f"{signal.Signals(self.requested).name} {where}")

    def requeue(self) -> bool:
        """Asks SLURM, once, to requeue this job (USR1 only); False when not under SLURM or not asked."""
        job = slurm_job_id()
        if self.requested != signal.SIGUSR1 or not job:
            return False
        if not self.requeued:
            subprocess.run(["scontrol", "requeue", job], check=False, timeout=30)
            self.requeued = True
        return True

    def reset(self) -> None:
        self.requested, self.phase, self.requeued = None, "idle", False


SIGNALS = StopSignals()


class Preemption(pl.Callback):
    """Turns a stop request during fit into a checkpoint at the next step boundary."""

    def __init__(self, checkpoint: Path, signals: StopSignals = SIGNALS):
        self.checkpoint, self.signals = Path(checkpoint), signals

    def on_fit_start(self, trainer, pl_module):
        self.signals.phase = "fit"

    def on_train_start(self, trainer, pl_module):
        if self.signals._previous:
            # Lightning registers its own SIGTERM handler after on_fit_start; it ends fit with SystemExit(0) at
            # the next batch, with no checkpoint and exit status 0. The task's handler takes SIGTERM back for
            # the fit (Lightning restores the handler it found, the task's, when fit ends).
            signal.signal(signal.SIGTERM, self.signals._handle)
            # a SIGTERM in the instant between the two also set the task's flag: it is handled here, not by
            # Lightning's SystemExit(0)
            trainer._signal_connector.received_sigterm = False

    def on_fit_end(self, trainer, pl_module):
        self.signals.phase = "persist"

    def on_exception(self, trainer, pl_module, exception):
        self.signals.phase = "persist"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.signals.requested is None:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # let the epoch end (its metrics, validation); on_train_batch_start of the next one stops
        # Lightning writes this step's metrics only after this hook: write them now, or the row is lost
        trainer._logger_connector.update_train_step_metrics()
        self._stop(trainer, pl_module, batches_done=batch_idx + 1)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        """A request that came during an epoch's last batch (every batch, when an epoch is one full batch: gradient
        descent) stops here, the epoch's metrics and validation done, before this batch trains."""
        if self.signals.requested is not None:
            # Lightning adds one to its logging step count on restoring a checkpoint saved mid-step (it assumes the
            # save came before the step's own count, as at batch end): saved before this step, count one less, or
            # the resumed run logs every row one step late
            trainer.fit_loop.epoch_loop._batches_that_stepped -= 1
            self._stop(trainer, pl_module, batches_done=batch_idx)

    def _stop(self, trainer, pl_module, batches_done: int):
        for logger in [*trainer.loggers, *getattr(pl_module, "member_loggers", [])]:  # a fused group's members'
            logger.save()
        # the loader has already yielded the next batch (Lightning prefetches): record what was trained
        trainer.train_dataloader.batches_done = batches_done
        tmp = self.checkpoint.with_suffix(".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.checkpoint)
        stop = STOPS[self.signals.requested](f"{STOPS[self.signals.requested].reason} at step {trainer.global_step}; "
                                             f"checkpoint {self.checkpoint}")
        stop.checkpoint = self.checkpoint
        raise stop

    # -- what the checkpoint carries beyond Lightning's own state (the loader saves its batch position)
    def state_dict(self):
        return {"rng": torch.get_rng_state()}

    def load_state_dict(self, state):
        if "rng" in state:
            torch.set_rng_state(state["rng"])

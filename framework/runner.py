"""Train a run, or a group of runs fused into one fit: one lifecycle (prepare, fit, evaluate, persist) for both.
framework/persist.py holds its store side and the failure policy; framework/process.py the process set-up."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.loggers import CSVLogger

from framework.config import RunConfig, config_hash, to_dict
from framework.data import TensorDataModule, build_splits
from framework.diagnostics import Diagnostics
from framework.fused import FusedModule, fused_steps
from framework.fused_data import FusedDataModule
from framework.locks import RunBusy, RunLock
from framework.module import build_module
from framework.persist import Member, group_checkpoint, persist, prepare_store, record_stop
from framework.preemption import SIGNALS, Preemption
from framework.probes import Probes
from framework.process import build_trainer, is_lead_process, quiet_lightning, set_threads
from framework.store import RunStore
from framework.tracking import finish_run, make_wandb_logger


class StepProgress(pl.Callback):
    """Advances a rich progress task by training steps (the suite shows one bar per run)."""

    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def on_train_start(self, trainer, pl_module):
        self.progress.update(self.task, total=int(trainer.estimated_stepping_batches), completed=0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.progress.update(self.task, completed=trainer.global_step)


def train(cfg: RunConfig, store: RunStore, scale: str = "", force: bool = False, progress=None,
          callbacks: tuple = ()) -> dict:
    """Runs cfg unless the store already holds it finished; returns its summary (with 'status'). A group of one.
    Raises RunBusy when another live process owns the run, and a `Stop` when a signal ended the task."""
    (result,) = train_group([cfg], store, scale, force, progress, callbacks)
    if isinstance(result, RunBusy):
        raise result
    return result


def train_group(cfgs: list[RunConfig], store: RunStore, scale: str = "", force: bool = False, progress=None,
                callbacks: tuple = (), axes: list[dict] | None = None) -> list:
    """Trains the unfinished runs of `cfgs` together (one fused fit when there are several; the planner,
    framework/planner.py, decides what may fuse) and returns, in order, each run's summary, or the RunBusy of a
    run another live process owns (the others train without it).
    `callbacks`: extra Lightning callbacks for the fit (they do not change any run's identity). `axes`: each run's
    grid point (axis -> value), shown in its W&B config as `grid` (not part of its identity)."""
    ids = [config_hash(c) for c in cfgs]
    results: list = [None] * len(cfgs)

    def reuse(i: int) -> bool:
        if force:
            return False
        why = store.unusable(cfgs[i], ids[i])
        if why is None:
            results[i] = {**store.summary(cfgs[i].experiment, ids[i]), "skipped": True}
            return True
        if not why.startswith("not finished"):  # stored finished, and yet it cannot stand for the config: say so
            print(f"warning: run {cfgs[i].experiment}/{ids[i]} ({cfgs[i].variant}) is not reused: {why}; it "
                  f"trains again", file=sys.stderr, flush=True)
        return False

    todo = [i for i in range(len(cfgs)) if not reuse(i)]
    lead = is_lead_process()  # only rank 0 owns runs and writes the store (and W&B, through Lightning)
    locks: dict[int, RunLock | None] = {}
    try:
        for i in todo:
            try:
                locks[i] = store.lock(cfgs[i].experiment, ids[i]) if lead else None
            except RunBusy as e:
                results[i] = e
        with SIGNALS.owned():
            # finished by another process meanwhile
            members = [Member(cfgs[i], ids[i], locks[i], axes[i] if axes else None)
                       for i in locks if not (lead and reuse(i))]
            if members:
                for i, out in zip([ids.index(m.run_id) for m in members],
                                  _attempt(members, store, scale, force, progress, callbacks, lead)):
                    results[i] = out
    finally:
        for lock in locks.values():
            if lock is not None:
                lock.release()
    return results


def _build(members: list[Member], store: RunStore, scale: str) -> tuple:
    """Data, nets and loggers of every member, each built exactly as an unfused run of its config builds them;
    returns the module and data module Lightning fits (fused when there are several members)."""
    splits_cache: dict[str, object] = {}
    datamodules = []
    for m in members:
        key = json.dumps(to_dict(m.cfg.data), sort_keys=True)
        pl.seed_everything(m.cfg.seed, workers=False, verbose=False)
        if key not in splits_cache:
            splits_cache[key] = build_splits(m.cfg.data)
        m.splits = splits_cache[key]
        m.module = build_module(m.cfg, m.splits)
        m.module.rng_after_build = torch.get_rng_state()  # where a lone run's dropout draws start (fused.FusedDropout)
        datamodules.append(TensorDataModule(m.splits, m.cfg.data, m.cfg.seed))
        run_dir = store.run_dir(m.exp, m.run_id)
        m.loggers = [CSVLogger(save_dir=str(run_dir), name="", version="lightning")]
        m.wandb = make_wandb_logger(m.cfg, m.run_id, run_dir, scale, several=len(members) > 1, attempt=m.attempt,
                                     axes=m.axes)
        if m.wandb is not None:
            m.loggers.append(m.wandb)
    if len(members) == 1:
        return members[0].module, datamodules[0], members[0].loggers
    return (FusedModule([m.module for m in members], [m.loggers for m in members], [m.splits for m in members]),
            FusedDataModule(datamodules), [])


def _callbacks(members: list[Member], checkpoint: Path, extra, progress, task) -> list:
    cfg = members[0].cfg
    callbacks = [Preemption(checkpoint), *extra]
    if cfg.diagnostics.enabled:
        callbacks.append(Diagnostics(cfg.diagnostics.every_n_steps, cfg.diagnostics.saturation_threshold))
    if len(members) == 1 and cfg.trainer.stop_at_train_acc > 0:  # a fused group stops each member itself
        callbacks.append(EarlyStopping(monitor="train/acc", mode="max", patience=10**9, check_finite=False,
                                       stopping_threshold=cfg.trainer.stop_at_train_acc - 1e-6,  # its test is strict
                                       check_on_train_epoch_end=True))
    if cfg.diagnostics.probe_every > 0:
        callbacks.append(Probes(cfg.diagnostics, [(m.module, m.splits, m.loggers) for m in members]))
    if task is not None:
        callbacks.append(StepProgress(progress, task))
    return callbacks


def _attempt(members: list[Member], store, scale, force, progress, extra_callbacks, lead) -> list[dict]:
    """One attempt at a group of runs (a single run is a group of one): prepare, fit, evaluate and persist each
    member; every way out is recorded in each member's status.json (`_record_stop`, the failure policy)."""
    quiet_lightning()
    checkpoint = group_checkpoint(store, members)
    resume = prepare_store(members, store, force, lead, checkpoint)
    started = time.time()
    label = members[0].cfg.variant if len(members) == 1 else f"{len(members)} fused runs ({members[0].cfg.variant}, ...)"
    task = progress.add_task(f"  {label}", total=None) if progress is not None else None
    out: list[dict] = []  # the members persisted so far: a failure after them is recorded for the others only
    try:
        trainer, module, diagnostics, initial = _fit(members, store, scale, checkpoint, resume,
                                                     [*extra_callbacks], progress, task)
        if trainer.global_rank != 0:
            return [{"status": "done", "rank": trainer.global_rank}]
        for k, m in enumerate(members):
            steps, epochs = fused_steps(module, k, trainer) if len(members) > 1 else \
                (trainer.global_step, trainer.current_epoch)
            rows = diagnostics.member_rows(k) if diagnostics is not None else []
            out.append(persist(m, store, lead, trainer.strategy.root_device, initial[k], steps, epochs, rows,
                                started, resume, len(members)))
        checkpoint.unlink(missing_ok=True)
        return out
    except BaseException as e:
        return out + record_stop(e, members[len(out):], store, lead, stored=len(out))
    finally:
        for m in members:
            if m.wandb is not None and m.wandb._experiment is not None:
                finish_run(m.wandb.experiment)  # still in persist: a signal now waits until the W&B run is closed
        if task is not None:
            progress.remove_task(task)
        SIGNALS.phase = "idle"


def _fit(members: list[Member], store, scale, checkpoint: Path, resume, extra_callbacks, progress, task):
    """Builds the members and fits them (fused when there are several); returns the trainer, the module, the
    diagnostics callback and each member's initial training loss and accuracy."""
    SIGNALS.phase = "prepare"
    set_threads(members[0].cfg)
    module, datamodule, loggers = _build(members, store, scale)
    callbacks = _callbacks(members, checkpoint, extra_callbacks, progress, task)
    diagnostics = next((c for c in callbacks if isinstance(c, Diagnostics)), None)
    trainer = build_trainer(members[0].cfg, loggers, callbacks, checkpoint.parent,
                            **({"logger": False} if len(members) > 1 else {}))
    # whole-split evaluations run on the run's device (Lightning moves the module back to the CPU at the end
    # of fit): a CIFAR-sized split on a CPU would take minutes
    device = trainer.strategy.root_device
    initial = [m.module.to(device).evaluate(m.splits.x_train, m.splits.y_train) for m in members]
    SIGNALS.check("before training")
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)
    SIGNALS.phase = "persist"  # from here a signal waits until the runs are stored
    if len(members) > 1:
        module.unfuse()
        for lg in module.member_loggers:
            lg.save()
    return trainer, module, diagnostics, initial



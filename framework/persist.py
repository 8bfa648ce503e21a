"""The store's side of a run's lifecycle (framework/runner.py drives it): prepare each member's folder (status
running, config.yaml, the checkpoint to resume), persist what a fit computed (evaluation, metrics, diagnostics,
summary, status), and record a stop: `record_stop`, the failure policy of a run, in one place."""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

from framework.config import RunConfig, dump_yaml
from framework.files import StoreError, StoreFull, atomic_write, disk_full
from framework.locks import RunLock
from framework.optim import effective_lr
from framework.preemption import SIGNALS, Preempted, Stop
from framework.probes import final_probes
from framework.process import compute_label
from framework.registry import UserError
from framework.results.measures import diagnostics_summary, epochs_to_target, fit_step, last_epoch_loss, steps_to_target
from framework.store import RunStore


def tidy_metrics(csv_dir: Path) -> pd.DataFrame:
    """Lightning's CSV has one row per logging call, and one file per attempt (a resumed run starts a new one):
    merge them into one row per step, a later attempt's rows replacing an earlier one's."""
    parts = sorted(csv_dir.glob("metrics.part-*.csv"), key=lambda p: int(p.stem.split("-")[-1]))
    parts += [csv_dir / "metrics.csv"]
    frames = [pd.read_csv(p).assign(_part=i) for i, p in enumerate(parts) if p.exists() and p.stat().st_size]
    if not frames:
        return pd.DataFrame()
    raw = pd.concat(frames, ignore_index=True)
    merged = raw.groupby(["step", "_part"], as_index=False).first()
    merged = merged.groupby("step", as_index=False).last().drop(columns="_part").sort_values("step")
    return merged[["step", *sorted(c for c in merged.columns if c != "step")]]


def _keep_previous_attempt(csv_dir: Path) -> None:
    """CSVLogger deletes metrics.csv when it starts; a resumed run's earlier metrics are kept as a part."""
    current = csv_dir / "metrics.csv"
    if current.exists():
        n = len(list(csv_dir.glob("metrics.part-*.csv")))
        os.replace(current, csv_dir / f"metrics.part-{n}.csv")


def usable_checkpoint(store: RunStore, path: Path) -> Path | None:
    """The checkpoint when it loads; a damaged one (cut short, not a checkpoint) is set aside, with a line
    saying so, and the run (or group) starts again from step 0."""
    if not path.exists():
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return path
    except Exception as e:  # torch raises several types for a truncated zip or pickle
        aside = store.set_aside(path)
        print(f"warning: {path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]}); moved to "
              f"{aside.name}, the run starts again from step 0", file=sys.stderr, flush=True)
        return None


class Member:
    """One run of a fit (a group has one or more): its config, identity, lock and attempt."""

    def __init__(self, cfg: RunConfig, run_id: str, lock: RunLock | None, axes: dict | None = None):
        self.cfg, self.run_id, self.lock, self.axes = cfg, run_id, lock, axes
        self.exp = cfg.experiment
        self.attempt, self.module, self.splits, self.wandb = 0, None, None, None
        self.group: str | None = None  # the fused group's folder, when it trains in one

    def writes(self, lead: bool) -> bool:
        return lead and (self.lock is None or not self.lock.lost)  # a run whose lock was taken over writes nothing

    def set_status(self, store: RunStore, lead: bool, status: str, **extra) -> None:
        if self.writes(lead):
            group = {"group": self.group} if self.group else {}
            store.set_status(self.exp, self.run_id, status, attempt=self.attempt, **group, **extra)


def group_checkpoint(store: RunStore, members: list[Member]) -> Path:
    if len(members) == 1:
        return store.checkpoint(members[0].exp, members[0].run_id)
    return store.group_checkpoint(members[0].exp, [m.run_id for m in members])


def prepare_store(members: list[Member], store: RunStore, force: bool, lead: bool, checkpoint: Path) -> Path | None:
    """Status `running` and config.yaml for every member; returns the checkpoint to resume, if usable."""
    if not lead:
        return checkpoint if checkpoint.exists() else None
    if force:
        checkpoint.unlink(missing_ok=True)
    resume = usable_checkpoint(store, checkpoint)
    records = {}
    for m in members:
        try:
            records[m.run_id] = store.status_record(m.exp, m.run_id)
        except StoreError:
            records[m.run_id] = {}  # a damaged status is replaced by this attempt's
    if resume is not None:
        resume = _continuable(store, members, resume, records)
    for m in members:
        previous = records[m.run_id]
        if resume is not None:
            store.check_config(m.cfg, m.run_id)  # a checkpoint continues only the config that wrote it
        m.attempt = max(1, int(previous.get("attempt", 0)) + (resume is None))
        if resume is None:
            store.start_fresh(m.exp, m.run_id)
        else:
            _keep_previous_attempt(store.lightning_dir(m.exp, m.run_id))
        store.write_text(m.exp, m.run_id, "config.yaml", dump_yaml(m.cfg))
        m.group = str(checkpoint.parent) if len(members) > 1 else None
        m.set_status(store, lead, "running", resumed_from=str(resume) if resume else None)
    if len(members) > 1:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(checkpoint.parent / "members.json", json.dumps([m.run_id for m in members]))
    return resume


def _continuable(store: RunStore, members: list[Member], checkpoint: Path, records: dict[str, dict]) -> Path | None:
    """The checkpoint, when every member still holds the attempt it continues (its config and an unfinished status).
    A member whose folder was deleted (to retrain it) would otherwise be restored mid-training
    from the group's checkpoint with its first steps' metrics gone: its summary would read from the resumed part
    alone. Then the checkpoint is set aside, with a line, and every member starts again from step 0.
    `records`: each member's status record, as _prepare_store read it."""
    lost = [m for m in members if records[m.run_id].get("status") not in ("pending", "running", "failed")
            or not (store.run_dir(m.exp, m.run_id) / "config.yaml").exists()]
    if not lost:
        return checkpoint
    aside = store.set_aside(checkpoint)
    names = ", ".join(f"{m.run_id} ({m.cfg.variant})" for m in lost)
    print(f"warning: {checkpoint} is not resumed: {len(lost)} of its {len(members)} runs no longer hold the attempt "
          f"it continues ({names}: its folder deleted, or finished since); moved to {aside.name}, and the "
          f"{'group' if len(members) > 1 else 'run'} starts again from step 0", file=sys.stderr, flush=True)
    return None


def record_stop(e: BaseException, members: list[Member], store, lead, stored: int = 0) -> list[dict]:
    """The failure policy of a run, in one place: a stop signal leaves each member pending (resumable) or failed
    and ends the task; bad input fails them and ends the command; a full disk leaves them pending (as far as a
    status can still be written; a `running` one left behind trains again too) and ends the command; any other
    error fails them and the suite goes on. `members`: those not yet stored (`stored` of the group were)."""
    if disk_full(e):
        for m in members:
            try:
                m.set_status(store, lead, "pending", stopped="disk full")
            except OSError:
                pass
        raise StoreFull(f"no space left in {store.root} ({e.filename or 'a store file'}): {stored} of this group's "
                        f"{stored + len(members)} runs were stored; the others will train again: free space and "
                        f"rerun the same command") from None
    if isinstance(e, Stop):
        SIGNALS.phase = "persist"  # a further signal (the TERM of SLURM's requeue) waits until the statuses are written
        saved = getattr(e, "checkpoint", None)
        for m in members:
            if saved or isinstance(e, Preempted):  # a checkpoint, or stopped before training: resumable
                m.set_status(store, lead, "pending", stopped=e.reason, preempted=isinstance(e, Preempted),
                             checkpoint=str(saved) if saved else None)
            else:
                m.set_status(store, lead, "failed", error=e.reason)
        if any(m.writes(lead) for m in members):
            SIGNALS.requeue()
        raise e
    if isinstance(e, UserError):
        for m in members:
            m.set_status(store, lead, "failed", error=str(e))
        raise e
    if not isinstance(e, Exception):  # KeyboardInterrupt where signals are not owned (not the main thread), exit
        for m in members:
            m.set_status(store, lead, "failed",
                         error="interrupted" if isinstance(e, KeyboardInterrupt) else type(e).__name__)
        raise e
    for m in members:
        m.set_status(store, lead, "failed", error=f"{type(e).__name__}: {e}",
                     traceback=traceback.format_exc(limit=20))
    return [{"run_id": m.run_id, "experiment": m.exp, "variant": m.cfg.variant, "status": "failed",
             "error": f"{type(e).__name__}: {e}"} for m in members]


def persist(m: Member, store: RunStore, lead: bool, device, initial: dict, steps: int, epochs: int, rows: list,
             started: float, resume, group_size: int) -> dict:
    """Evaluates one member on its splits and writes its metrics, diagnostics, summary and status."""
    module, splits, cfg = m.module, m.splits, m.cfg
    module.to(device)
    final = {split: module.evaluate(x, y) for split, (x, y) in {
        "train": (splits.x_train, splits.y_train), "val": (splits.x_val, splits.y_val),
        "test": (splits.x_test, splits.y_test)}.items() if len(x)}
    diverged = module.diverged_step is not None or not math.isfinite(final["train"]["loss"])
    diag = pd.DataFrame(rows)
    metrics = tidy_metrics(store.lightning_dir(m.exp, m.run_id))
    summary = {
        "run_id": m.run_id, "experiment": m.exp, "variant": cfg.variant,
        "status": "diverged" if diverged else "done",
        "initial_train_loss": initial["loss"],
        **{f"{split}_{k}": v for split, d in final.items() for k, v in d.items()},
        "train_loss_last_epoch": last_epoch_loss(metrics),
        "steps": int(steps), "epochs": int(epochs),
        "diverged_step": module.diverged_step, "lr_effective": effective_lr(cfg.optim, cfg.data.batch_size),
        "n_train": len(splits.x_train), "n_test": len(splits.x_test), "wall_s": round(time.time() - started, 3),
        # how it trained: in a fused group of this many runs (1: alone), on what
        "fused_members": group_size, "compute": compute_label(device),
        "fit_step": fit_step(metrics, cfg.trainer.stop_at_train_acc),
        "steps_to_target": steps_to_target(metrics, cfg.diagnostics.target_loss),
        "epochs_to_target": epochs_to_target(metrics, cfg.diagnostics.target_loss),
        **diagnostics_summary(diag),
        **final_probes(module, splits, cfg.diagnostics, device),
    }
    if not m.writes(lead):
        raise RuntimeError(f"lost the lock of {store.run_dir(m.exp, m.run_id)} while training (its heartbeat stopped "
                           f"for longer than {RunLock.stale_after():.0f} s and another process took it over): "
                           f"nothing written")
    store.write_frame(m.exp, m.run_id, "metrics.csv", metrics)
    store.write_frame(m.exp, m.run_id, "diagnostics.csv", diag)
    store.write_json(m.exp, m.run_id, "summary.json", summary)
    if m.wandb is not None:
        m.wandb.experiment.summary.update({k: v for k, v in summary.items() if v is not None})
    m.set_status(store, lead, summary["status"], diverged_step=module.diverged_step,
                 resumed_from=str(resume) if resume else None)
    return summary

"""Train one run: config in, a Lightning fit, metrics and status in the run store and W&B."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.environments import SLURMEnvironment

from framework.config import RunConfig, config_hash, dump_yaml, to_dict
from framework.data import TensorDataModule, build_splits
from framework.diagnostics import Diagnostics
from framework.module import build_module
from framework.optim import effective_lr
from framework.probes import Probes
from framework.preemption import SIGNALS, Preempted, Preemption, Stop
from framework.registry import UserError
from framework.fused import fused_steps
from framework.store import RunBusy, RunLock, RunStore, StoreError, StoreFull, atomic_write, disk_full
from framework.tracking import make_wandb_logger


def quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|exists and is not empty|"
                                              r"LeafSpec|Checkpoint directory|number of training batches|"
                                              r"isinstance\(treespec, LeafSpec\)|The `srun` command is available).*")


class StepProgress(pl.Callback):
    """Advances a rich progress task by training steps (the suite shows one bar per run)."""

    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def on_train_start(self, trainer, pl_module):
        self.progress.update(self.task, total=int(trainer.estimated_stepping_batches), completed=0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.progress.update(self.task, completed=trainer.global_step)


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


def is_lead_process() -> bool:
    """Rank 0 of a distributed run (srun tasks, torchrun, or Lightning's own launcher), or a single process."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0")) == 0
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _keep_previous_attempt(csv_dir: Path) -> None:
    """CSVLogger deletes metrics.csv when it starts; a resumed run's earlier metrics are kept as a part."""
    current = csv_dir / "metrics.csv"
    if current.exists():
        n = len(list(csv_dir.glob("metrics.part-*.csv")))
        os.replace(current, csv_dir / f"metrics.part-{n}.csv")


def last_epoch_loss(metrics: pd.DataFrame) -> float:
    """The mean training loss of the last epoch, in training mode (batch norm on batch statistics, dropout on): the
    objective SGD minimised. train_loss is the net evaluated afterwards in eval mode, which for batch norm uses
    running statistics that a deep narrow net's batch statistics can stray far from. nan when none was logged."""
    if "train/loss_epoch" not in metrics:
        return math.nan
    logged = metrics.dropna(subset=["train/loss_epoch"])
    return float(logged.sort_values("step")["train/loss_epoch"].iloc[-1]) if len(logged) else math.nan


def fit_step(metrics: pd.DataFrame, threshold: float) -> int | None:
    """The first step at whose epoch end the training accuracy had reached `threshold` (None: never, or off)."""
    if threshold <= 0 or metrics.empty or "train/acc" not in metrics:
        return None
    hits = metrics.loc[metrics["train/acc"] >= threshold, "step"]
    return int(hits.iloc[0]) + 1 if len(hits) else None


SMOOTHING = 5  # logged minibatch losses averaged for steps_to_target when no probe loss is logged


def steps_to_target(metrics: pd.DataFrame, target: float) -> int | None:
    """The first step whose loss is at or below `target` (Shallue et al. 2019's and McCandlish et al. 2018's
    steps-to-result): the probe-set loss (probe/loss, measured before that step's update) when the run logs it,
    else the mean of the last SMOOTHING logged minibatch losses. None: never reached, or off (target 0)."""
    if target <= 0 or metrics.empty:
        return None
    if "probe/loss" in metrics:
        series = metrics.dropna(subset=["probe/loss"]).set_index("step")["probe/loss"]
    elif "train/loss" in metrics:
        series = metrics.dropna(subset=["train/loss"]).set_index("step")["train/loss"].rolling(SMOOTHING).mean()
    else:
        return None
    hits = series[series <= target]
    return int(hits.index[0]) if len(hits) else None


def log_crossing(before: float, after: float, target: float) -> float | None:
    """How far (0-1) from a point at loss `before` to the next at loss `after` a loss falling log-linearly between
    them crosses `target`; None unless before > target >= after > 0."""
    if not (before > target >= after > 0):
        return None
    return math.log(before / target) / math.log(before / after)


def epochs_to_target(metrics: pd.DataFrame, target: float) -> float | None:
    """Epochs until the training loss reaches `target`, read from the epoch-mean training losses every run logs:
    an epoch's mean stands at the epoch's midpoint, and the crossing is interpolated in log loss between two
    midpoints (sub-epoch resolution with no extra logging; x steps per epoch = steps to target at every batch
    size alike). None: never reached, or off (target 0)."""
    if target <= 0 or "train/loss_epoch" not in metrics:
        return None
    logged = metrics.dropna(subset=["train/loss_epoch"]).sort_values("epoch")
    before = None  # (epoch, loss) of the epoch logged before
    for epoch, loss in zip(logged["epoch"].astype(int), logged["train/loss_epoch"]):
        if loss <= target:  # between the midpoints of the epoch before (if logged) and this one
            w = log_crossing(before[1], loss, target) if before is not None and before[0] == epoch - 1 else None
            return epoch + 0.5 if w is None else epoch - 0.5 + w
        before = (epoch, loss)
    return None


def diagnostics_summary(diag: pd.DataFrame) -> dict[str, float]:
    """Median over logged steps of the first and last weight layer's gradient norm, and of saturation; at
    initialisation (the first measured step), the first/last hidden layer's back-propagated gradient norm ratio
    and the last/first activation-variance ratio."""
    if diag.empty:
        return {}
    by_layer = diag.groupby("layer")
    grad = by_layer["grad_norm"].median()
    first, last = float(grad.iloc[0]), float(grad.iloc[-1])
    out = {"grad_norm_first": first, "grad_norm_last": last,
           "grad_ratio_first_last": first / last if last > 0 else float("nan"),
           "saturation_mean": float(diag["saturation"].mean(skipna=True)) if diag["saturation"].notna().any()
           else float("nan")}
    hidden = diag.dropna(subset=["act_grad_norm", "act_var"]) if "act_grad_norm" in diag else diag.iloc[:0]
    if len(hidden):
        init = hidden[hidden["step"] == hidden["step"].min()].sort_values("layer")
        g, v = init["act_grad_norm"].to_numpy(), init["act_var"].to_numpy()
        out["backprop_ratio_at_init"] = float(g[0] / g[-1]) if g[-1] > 0 else float("nan")
        out["act_var_ratio_at_init"] = float(v[-1] / v[0]) if v[0] > 0 else float("nan")
        med = hidden.groupby("layer")["act_grad_norm"].median()
        out["backprop_ratio_first_last"] = float(med.iloc[0] / med.iloc[-1]) if med.iloc[-1] > 0 else float("nan")
    return out


def build_trainer(cfg: RunConfig, loggers: list, callbacks: list, root_dir: Path, **overrides) -> pl.Trainer:
    """The Lightning Trainer of a run (also what `repro bench` times); overrides go to pl.Trainer as they are."""
    t = cfg.trainer
    kwargs = dict(
        max_epochs=t.max_epochs, max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices,
        num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision,
        check_val_every_n_epoch=t.val_every_n_epochs,
        log_every_n_steps=t.log_every_n_steps, logger=loggers, callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, deterministic=t.deterministic, default_root_dir=str(root_dir),
        plugins=[SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None)
    return pl.Trainer(**{**kwargs, **overrides})


def set_threads(cfg: RunConfig) -> int:
    """Torch's intra-op threads: trainer.threads, else SLURM's CPUs per task (shared by the task's processes on
    a node), else 1. Measured on a 2-core machine (reports/benchmarks.md): with another process running, a
    50-layer MLP stepped 4-7x slower on 2 threads than on 1; idle, 2 threads gained at most 15% on small
    models (1.6x on a 2x2048 MLP: set trainer.threads=2 for such models)."""
    threads = cfg.trainer.threads
    if threads <= 0:
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0)
        threads = max(1, cpus) if cpus else 1
    torch.set_num_threads(threads)
    keep_freed_memory()
    return threads


@functools.cache
def keep_freed_memory() -> None:
    """glibc serves an allocation of 128 KB or more from fresh pages and hands them back to the OS when it is
    freed, so every step's large tensors cost page faults again: 1,000 to 4,000 a step for a 16 x 50-layer
    fused MLP's diagnostics, a third of a measured step on this VM. Raising malloc's mmap and trim thresholds
    (mallopt, by hand: no library sets them) keeps freed memory in the process for reuse, as PyTorch's CPU
    tuning guide gets from jemalloc or tcmalloc. No-op where libc has no mallopt (macOS)."""
    import ctypes
    import ctypes.util
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 256 << 20)
    mallopt(m_trim_threshold, 1 << 30)


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


def train(cfg: RunConfig, store: RunStore, scale: str = "", force: bool = False, progress=None,
          callbacks: tuple = ()) -> dict:
    """Runs cfg unless the store already holds it finished; returns its summary (with 'status'). A group of one.
    Raises RunBusy when another live process owns the run, and a `Stop` when a signal ended the task."""
    (result,) = train_group([cfg], store, scale, force, progress, callbacks)
    if isinstance(result, RunBusy):
        raise result
    return result


def train_group(cfgs: list[RunConfig], store: RunStore, scale: str = "", force: bool = False, progress=None,
                callbacks: tuple = ()) -> list:
    """Trains the unfinished runs of `cfgs` together (one fused fit when there are several; the planner,
    framework/planner.py, decides what may fuse) and returns, in order, each run's summary, or the RunBusy of a
    run another live process owns (the others train without it).
    `callbacks`: extra Lightning callbacks for the fit (they do not change any run's identity)."""
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
            members = [Member(cfgs[i], ids[i], locks[i]) for i in locks if not (lead and reuse(i))]
            if members:
                for i, out in zip([ids.index(m.run_id) for m in members],
                                  _attempt(members, store, scale, force, progress, callbacks, lead)):
                    results[i] = out
    finally:
        for lock in locks.values():
            if lock is not None:
                lock.release()
    return results


class Member:
    """One run of a fit (a group has one or more): its config, identity, lock and attempt."""

    def __init__(self, cfg: RunConfig, run_id: str, lock: RunLock | None):
        self.cfg, self.run_id, self.lock = cfg, run_id, lock
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


def _prepare_store(members: list[Member], store: RunStore, force: bool, lead: bool, checkpoint: Path) -> Path | None:
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


def _build(members: list[Member], store: RunStore, scale: str) -> tuple:
    """Data, nets and loggers of every member, each built exactly as an unfused run of its config builds them;
    returns the module and data module Lightning fits (fused when there are several members)."""
    from framework.fused import FusedDataModule, FusedModule
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
        m.wandb = make_wandb_logger(m.cfg, m.run_id, run_dir, scale, several=len(members) > 1)
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
    resume = _prepare_store(members, store, force, lead, checkpoint)
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
            out.append(_persist(m, store, lead, trainer.strategy.root_device, initial[k], steps, epochs, rows,
                                started, resume, len(members)))
        checkpoint.unlink(missing_ok=True)
        return out
    except BaseException as e:
        return out + _record_stop(e, members[len(out):], store, lead, stored=len(out))
    finally:
        for m in members:
            if m.wandb is not None and m.wandb._experiment is not None:
                m.wandb.experiment.finish()  # still in persist: a signal now waits until the W&B run is closed
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


def _record_stop(e: BaseException, members: list[Member], store, lead, stored: int = 0) -> list[dict]:
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


def compute_label(device) -> str:
    """What computed a run, for its summary: the device, and on a CPU the kernel path torch took (AVX2 and AVX512
    round reductions differently: a chaotic run's numbers differ between them), and torch's version."""
    kind = torch.device(device).type
    where = f"cpu {torch.backends.cpu.get_cpu_capability()}" if kind == "cpu" else \
        (torch.cuda.get_device_name(device) if kind == "cuda" else kind)
    return f"{where}, torch {torch.__version__}"


def _persist(m: Member, store: RunStore, lead: bool, device, initial: dict, steps: int, epochs: int, rows: list,
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

"""Train one run: config in, a Lightning fit, metrics and status in the run store and W&B."""
from __future__ import annotations

import logging
import math
import os
import time
import traceback
import warnings
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.environments import SLURMEnvironment

from framework.config import RunConfig, config_hash, dump_yaml
from framework.data import TensorDataModule, build_splits
from framework.diagnostics import Diagnostics
from framework.module import build_module
from framework.optim import effective_lr
from framework.preemption import Preempted, Preemption
from framework.registry import UserError
from framework.store import RunStore
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


def fit_step(metrics: pd.DataFrame, threshold: float) -> int | None:
    """The first step at whose epoch end the training accuracy had reached `threshold` (None: never, or off)."""
    if threshold <= 0 or metrics.empty or "train/acc" not in metrics:
        return None
    hits = metrics.loc[metrics["train/acc"] >= threshold, "step"]
    return int(hits.iloc[0]) + 1 if len(hits) else None


def diagnostics_summary(diag: pd.DataFrame) -> dict[str, float]:
    """Median over logged steps of the first and last weight layer's gradient norm, and of saturation."""
    if diag.empty:
        return {}
    by_layer = diag.groupby("layer")
    grad = by_layer["grad_norm"].median()
    first, last = float(grad.iloc[0]), float(grad.iloc[-1])
    out = {"grad_norm_first": first, "grad_norm_last": last,
           "grad_ratio_first_last": first / last if last > 0 else float("nan"),
           "saturation_mean": float(diag["saturation"].mean(skipna=True)) if diag["saturation"].notna().any()
           else float("nan")}
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


def train(cfg: RunConfig, store: RunStore, scale: str = "", force: bool = False, progress=None,
          callbacks: tuple = ()) -> dict:
    """Runs cfg unless the store already holds it finished; returns its summary (with 'status').
    `callbacks`: extra Lightning callbacks for this run (they do not change its identity)."""
    run_id = config_hash(cfg)
    exp = cfg.experiment
    if not force and store.is_finished(exp, run_id):
        return {**store.summary(exp, run_id), "skipped": True}

    quiet_lightning()
    run_dir = store.run_dir(exp, run_id)
    lead = is_lead_process()  # only rank 0 writes the run store (and W&B, through Lightning)
    checkpoint = run_dir / "checkpoint.ckpt"
    if lead:
        store.write_text(exp, run_id, "config.yaml", dump_yaml(cfg))
        store.set_status(exp, run_id, "running", resumed_from=str(checkpoint) if checkpoint.exists() else None)
        _keep_previous_attempt(run_dir / "lightning")
    started = time.time()
    wandb_logger = None
    task = progress.add_task(f"  {cfg.variant}", total=None) if progress is not None else None
    try:
        pl.seed_everything(cfg.seed, workers=False, verbose=False)
        splits = build_splits(cfg.data)
        module = build_module(cfg, splits)
        datamodule = TensorDataModule(splits, cfg.data, cfg.seed)
        diagnostics = Diagnostics(cfg.diagnostics.every_n_steps, cfg.diagnostics.saturation_threshold)
        loggers = [CSVLogger(save_dir=str(run_dir), name="", version="lightning")]
        wandb_logger = make_wandb_logger(cfg, run_id, run_dir, scale)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
        callbacks = [Preemption(checkpoint), *callbacks] + ([diagnostics] if cfg.diagnostics.enabled else [])
        if cfg.trainer.stop_at_train_acc > 0:
            callbacks.append(EarlyStopping(monitor="train/acc", mode="max", patience=10**9, check_finite=False,
                                           stopping_threshold=cfg.trainer.stop_at_train_acc - 1e-6,  # its test is strict
                                           check_on_train_epoch_end=True))
        if task is not None:
            callbacks.append(StepProgress(progress, task))
        trainer = build_trainer(cfg, loggers, callbacks, run_dir)
        # whole-split evaluations run on the run's device (Lightning moves the module back to the CPU at the end
        # of fit): a CIFAR-sized split on a CPU would take minutes
        device = trainer.strategy.root_device
        initial = module.to(device).evaluate(splits.x_train, splits.y_train)
        resume = str(checkpoint) if checkpoint.exists() else None
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        if trainer.global_rank != 0:
            return {"status": "done", "rank": trainer.global_rank}

        module.to(device)
        final = {split: module.evaluate(x, y) for split, (x, y) in {
            "train": (splits.x_train, splits.y_train), "val": (splits.x_val, splits.y_val),
            "test": (splits.x_test, splits.y_test)}.items() if len(x)}
        diverged = module.diverged_step is not None or not math.isfinite(final["train"]["loss"])
        diag = pd.DataFrame(diagnostics.rows)
        metrics = tidy_metrics(run_dir / "lightning")
        summary = {
            "run_id": run_id, "experiment": exp, "variant": cfg.variant,
            "status": "diverged" if diverged else "done",
            "initial_train_loss": initial["loss"],
            **{f"{split}_{k}": v for split, d in final.items() for k, v in d.items()},
            "steps": int(trainer.global_step), "epochs": int(trainer.current_epoch),
            "diverged_step": module.diverged_step, "lr_effective": effective_lr(cfg.optim, cfg.data.batch_size),
            "n_train": len(splits.x_train), "n_test": len(splits.x_test), "wall_s": round(time.time() - started, 3),
            "fit_step": fit_step(metrics, cfg.trainer.stop_at_train_acc),
            **diagnostics_summary(diag),
        }
        store.write_frame(exp, run_id, "metrics.csv", metrics)
        store.write_frame(exp, run_id, "diagnostics.csv", diag)
        store.write_json(exp, run_id, "summary.json", summary)
        if wandb_logger is not None:
            wandb_logger.experiment.summary.update({k: v for k, v in summary.items() if v is not None})
        store.set_status(exp, run_id, summary["status"], diverged_step=module.diverged_step,
                         resumed_from=resume)
        checkpoint.unlink(missing_ok=True)
        return summary
    except Preempted:
        if lead:
            store.set_status(exp, run_id, "pending", preempted=True, checkpoint=str(checkpoint))
        raise
    except UserError as e:
        if lead:
            store.set_status(exp, run_id, "failed", error=str(e))
        raise
    except KeyboardInterrupt:
        if lead:
            store.set_status(exp, run_id, "failed", error="interrupted")
        raise
    except Exception as e:  # a failed run is recorded and the suite goes on
        if lead:
            store.set_status(exp, run_id, "failed", error=f"{type(e).__name__}: {e}",
                             traceback=traceback.format_exc(limit=20))
        return {"run_id": run_id, "experiment": exp, "variant": cfg.variant, "status": "failed",
                "error": f"{type(e).__name__}: {e}"}
    finally:
        if wandb_logger is not None:
            import wandb
            wandb.finish()
        if task is not None:
            progress.remove_task(task)

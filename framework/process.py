"""What a training process sets up before a fit: quiet Lightning logs, torch's threads, the allocator, which
process leads a distributed run, the Trainer itself, and the label of what computed a run."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.environments import SLURMEnvironment

from framework.config import RunConfig


def quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|exists and is not empty|"
                                              r"LeafSpec|Checkpoint directory|number of training batches|"
                                              r"isinstance\(treespec, LeafSpec\)|The `srun` command is available).*")


def is_lead_process() -> bool:
    """Rank 0 of a distributed run (srun tasks, torchrun, or Lightning's own launcher), or a single process."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0")) == 0
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


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
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 256 << 20)
    mallopt(m_trim_threshold, 1 << 30)


def compute_label(device) -> str:
    """What computed a run, for its summary: the device, and on a CPU the kernel path torch took (AVX2 and AVX512
    round reductions differently: a chaotic run's numbers differ between them), and torch's version."""
    kind = torch.device(device).type
    where = f"cpu {torch.backends.cpu.get_cpu_capability()}" if kind == "cpu" else \
        (torch.cuda.get_device_name(device) if kind == "cuda" else kind)
    return f"{where}, torch {torch.__version__}"

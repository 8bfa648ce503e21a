"""`repro bench`: training throughput of the framework against a plain PyTorch loop, in the same process.

Both sides get the same model (same init), the same data tensors on the same device, the same batch size,
optimizer, schedule, precision, memory format and compile setting. The framework side is the run's own
Lightning Trainer (`process.build_trainer`) with the run's callbacks and a CSV logger, as `repro run` trains it;
validation is off on both sides. Each side runs `repeats` times, alternating, after a warm-up; the rates are
medians of samples per second over the timed steps, and the ratio is the median over adjacent (plain,
framework) pairs of framework / plain, with its range.
"""
from __future__ import annotations

import datetime
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from framework.config import RunConfig
from framework.data import Splits, TensorDataModule, build_splits
from framework.diagnostics import Diagnostics
from framework.losses import LOSSES
from framework.module import build_module
from framework.optim_build import build_optimizer
from framework.overrides import apply
from framework.preemption import Preemption
from framework.process import build_trainer, quiet_lightning, set_threads
from framework.registry import UserError
from framework.results.measures import steps_per_epoch


@dataclass
class Case:
    name: str
    in_shape: tuple[int, ...]
    overrides: dict
    n_samples: dict = field(default_factory=lambda: {"small": 2048, "full": 8192})
    full_on_cpu: dict = field(default_factory=dict)  # fewer steps where a step takes seconds on a CPU


CASES = [
    Case("deep_mlp_50x10", (784,), {"model.name": "mlp", "model.depth": 50, "model.width": 10,
                                     "data.batch_size": 128}),
    Case("wide_mlp_2x2048", (784,), {"model.name": "mlp", "model.depth": 2, "model.width": 2048,
                                      "data.batch_size": 256}),
    Case("resnet18_cifar", (3, 32, 32), {"model.name": "resnet18", "model.width": 64, "data.batch_size": 128},
         {"small": 256, "full": 4096}, full_on_cpu={"steps": 6, "warmup": 2, "repeats": 3}),
]
# small: CI on 2 CPU cores (seconds per case); full: the figures in reports/benchmarks.md
SIZES = {"small": {"steps": 30, "warmup": 5, "repeats": 2, "resnet_width": 8},
         "full": {"steps": 200, "warmup": 20, "repeats": 7, "resnet_width": 64}}


def _bench_config(device: str, overrides: dict) -> RunConfig:
    """A run config for timing: no validation, no W&B, SGD with momentum, on `device`."""
    return apply(RunConfig(), {
        "experiment": "bench", "data.val_fraction": 0.0, "optim.name": "momentum", "optim.lr": 0.01,
        "trainer.accelerator": "gpu" if device == "cuda" else "cpu", "trainer.val_every_n_epochs": 10**6,
        "tracking.mode": "disabled", **overrides})


def _config(case: Case, size: str, device: str, extra: dict) -> RunConfig:
    over = dict(case.overrides)
    if case.name.startswith("resnet18"):
        over["model.width"] = SIZES[size]["resnet_width"]
    return _bench_config(device, {**over, **extra})


def _splits(case: Case, n: int) -> Splits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *case.in_shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    empty_x, empty_y = x[:0], y[:0]
    return Splits(x, y, empty_x, empty_y, empty_x, empty_y, 10)


class _Clock(pl.Callback):
    """Wall time from the start of step `warmup` to the end of the last step, synchronised with the device."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            _sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        _sync(pl_module.device)
        self.end = time.perf_counter()
        self.steps = trainer.global_step - self.warmup


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _fit(cfg: RunConfig, splits: Splits, clock: pl.Callback, **overrides) -> None:
    """A fit as `repro run` does it (the run's Trainer, callbacks and CSV logger) in a scratch directory, with
    `clock` first among the callbacks and validation off."""
    quiet_lightning()
    pl.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg, splits)
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [clock, Preemption(Path(tmp) / "checkpoint.ckpt")]
        if cfg.diagnostics.enabled:
            callbacks.append(Diagnostics(cfg.diagnostics.every_n_steps, cfg.diagnostics.saturation_threshold))
        trainer = build_trainer(cfg, [CSVLogger(tmp, name="", version="bench")], callbacks, Path(tmp),
                                limit_val_batches=0, **overrides)
        trainer.fit(module, datamodule=TensorDataModule(splits, cfg.data, cfg.seed))


def framework_rate(cfg: RunConfig, splits: Splits, steps: int, warmup: int) -> float:
    """Samples per second of the framework's training step (the Trainer `repro run` uses)."""
    clock = _Clock(warmup)
    _fit(cfg, splits, clock, max_steps=warmup + steps, max_epochs=-1)
    return clock.steps * cfg.data.batch_size / (clock.end - clock.start)


def plain_rate(cfg: RunConfig, splits: Splits, steps: int, warmup: int, device: str) -> float:
    """Samples per second of a hand-written loop: shuffled index batches, forward, loss, backward, step."""
    pl.seed_everything(cfg.seed, verbose=False)
    net = build_module(cfg, splits).net.to(device)  # the same architecture and initialisation, nothing else
    channels_last = cfg.trainer.channels_last and device == "cuda" and len(splits.in_shape) == 3
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    forward = torch.compile(net) if cfg.trainer.compile else net
    loss_fn = LOSSES.get(cfg.loss.name)(splits.n_classes)
    bs = cfg.data.batch_size
    timed = apply(cfg, {"trainer.max_steps": warmup + steps})  # the schedule spans the warm-up and timed steps
    optimizer, schedule = build_optimizer(net.parameters(), [timed], steps_per_epoch(len(splits.x_train), bs))
    x, y = splits.x_train.to(device), splits.y_train.to(device)
    autocast = cfg.trainer.precision.startswith("bf16")
    step, start = 0, None
    net.train()
    while step < warmup + steps:
        order = torch.randperm(len(x)).to(device)
        for i in range(0, len(x), bs):
            if step == warmup:
                _sync(device)
                start = time.perf_counter()
            if step == warmup + steps:
                break
            idx = order[i:i + bs]
            xb, yb = x[idx], y[idx]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(forward(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
    _sync(device)
    return steps * bs / (time.perf_counter() - start)


def run(size: str = "small", device: str | None = None, cases: list[str] | None = None, extra: dict | None = None,
        report=print) -> list[dict]:
    """Benchmarks the chosen cases; returns one row per case (samples/s of each side and their ratio)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = False  # as the runs have it (trainer.deterministic)
    rows = []
    for case in CASES:
        if cases and case.name not in cases:
            continue
        settings = SIZES[size]
        if size == "full" and device == "cpu":
            settings = {**SIZES[size], **case.full_on_cpu}
        cfg = _config(case, size, device, extra or {})
        set_threads(cfg)  # both sides on the threads a run of this config gets
        splits = _splits(case, case.n_samples[size])
        ours, plain = [], []
        for _ in range(settings["repeats"]):  # alternate, so drift in machine load hits both sides alike
            plain.append(plain_rate(cfg, splits, settings["steps"], settings["warmup"], device))
            ours.append(framework_rate(cfg, splits, settings["steps"], settings["warmup"]))
        row = {"case": case.name, "device": device, "batch": cfg.data.batch_size, "steps": settings["steps"],
               "repeats": settings["repeats"],
               "params": sum(p.numel() for p in build_module(cfg, splits).net.parameters()),
               "plain_samples_s": statistics.median(plain), "framework_samples_s": statistics.median(ours),
               # the median of adjacent pairs' ratios: robust to the load drifting between pairs
               "ratio": statistics.median(o / p for o, p in zip(ours, plain)),
               "ratio_min": min(o / p for o, p in zip(ours, plain)),
               "ratio_max": max(o / p for o, p in zip(ours, plain))}
        rows.append(row)
        report(row)
    return rows


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def resnet18_epoch(device: str | None = None, extra: dict | None = None, epochs: int = 2) -> dict:
    """Seconds per training epoch of ResNet-18 (k = 64) on CIFAR-10 with crop+flip on the device, batch 128, as
    `repro run` trains it; the first epoch (allocation, cudnn autotuning, compilation) is not counted."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = _bench_config(device, {"data.name": "cifar10", "data.augment": "crop_flip", "data.batch_size": 128,
                                 "model.name": "resnet18", "model.width": 64, **(extra or {})})
    try:
        splits, data = build_splits(cfg.data), "CIFAR-10"
    except UserError:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(50_000, 3, 32, 32, generator=g), torch.randint(0, 10, (50_000,), generator=g)
        splits, data = Splits(x, y, x[:0], y[:0], x[:0], y[:0], 10), "CIFAR-shaped random images (50,000)"

    class EpochClock(pl.Callback):
        def __init__(self):
            self.marks: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            _sync(pl_module.device)
            self.marks.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            _sync(pl_module.device)
            self.marks.append(time.perf_counter())

    clock = EpochClock()
    _fit(cfg, splits, clock, max_epochs=epochs + 1, max_steps=-1)
    laps = [b - a for a, b in zip(clock.marks[1:-1], clock.marks[2:])]
    seconds = statistics.median(laps)
    return {"data": data, "device": device, "device_name": device_name(device), "seconds_per_epoch": seconds,
            "samples_s": len(splits.x_train) / seconds, "overrides": extra or {}}


def record(path: Path, rows: list[dict], epoch: dict | None, size: str, extra: dict,
           cases: list[str] | None = None) -> None:
    """Appends a dated markdown section with the table (and the epoch time) to `path`."""
    device = rows[0]["device"] if rows else (epoch or {}).get("device", "cpu")
    lines = [f"\n## {datetime.date.today().isoformat()}: {device_name(device)}, size {size}"
             + (f", {' '.join(f'{k}={v}' for k, v in extra.items())}" if extra else "") + "\n",
             f"torch {torch.__version__}, pytorch-lightning {pl.__version__}; `repro bench --size {size}"
             + "".join(f" --case {r['case']}" for r in rows if cases) + (" --epoch" if epoch else "")
             + "".join(f" {k}={v}" for k, v in extra.items()) + "`\n",
             "| case | batch | params | timed steps x repeats | plain samples/s | framework samples/s | "
             "framework / plain (range) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['batch']} | {r['params']:,} | {r['steps']} x {r['repeats']} | "
                     f"{r['plain_samples_s']:,.0f} | "
                     f"{r['framework_samples_s']:,.0f} | {r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |")
    if epoch:
        lines.append(f"\nResNet-18 (k=64), {epoch['data']}, batch 128, crop+flip on the device: "
                     f"{epoch['seconds_per_epoch']:.1f} s per epoch ({epoch['samples_s']:,.0f} samples/s).")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")

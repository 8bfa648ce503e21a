"""`repro bench`: training throughput of the framework against a plain PyTorch loop, in the same process.

Both sides get the same model (same init), the same data tensors on the same device, the same batch size,
optimizer, schedule, precision, memory format and compile setting. The framework side is the run's own
Lightning Trainer (`runner.build_trainer`) with the run's callbacks and a CSV logger, as `repro run` trains it;
validation is off on both sides. Each side runs `repeats` times, alternating, after a warm-up; the rates are
medians of samples per second over the timed steps, and the ratio is the median over adjacent (plain,
framework) pairs of framework / plain, with its range.
"""
from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch

from framework.config import RunConfig

from framework.overrides import apply
from framework.data import Splits, TensorDataModule
from framework.diagnostics import Diagnostics
from framework.losses import LOSSES
from framework.module import build_module
from framework.optim_build import build_optimizer
from framework.results.measures import steps_per_epoch
from framework.preemption import Preemption


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
    from framework.runner import build_trainer, quiet_lightning
    from pytorch_lightning.loggers import CSVLogger
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
        from framework.runner import set_threads
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
    import platform
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def resnet18_epoch(device: str | None = None, extra: dict | None = None, epochs: int = 2) -> dict:
    """Seconds per training epoch of ResNet-18 (k = 64) on CIFAR-10 with crop+flip on the device, batch 128, as
    `repro run` trains it; the first epoch (allocation, cudnn autotuning, compilation) is not counted."""
    from framework.data import build_splits
    from framework.registry import UserError
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
    import datetime
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


# -- fused training: K runs of one shape as one model (framework/fused.py), against the same K runs one after
# another and against a hand-written fused loop
FUSED_CASES = {"fused_mlp_16x50x10": {"members": 16, "model.depth": 50, "model.width": 10,
                                      "model.activation": "sigmoid", "data.batch_size": 128}}
_IMAGES = {"data.name": "random_images", "data.n_samples": 4096, "data.n_classes": 10, "data.val_fraction": 0.0,
           "data.batch_size": 128, "model.name": "resnet18"}
for _width in (4, 16):  # the fused-training issue's GPU figures: CIFAR-shaped data, no files needed
    FUSED_CASES[f"fused_resnet18_16xw{_width}"] = {"members": 16, **_IMAGES, "model.width": _width}
FUSED_SIZES = {"small": {"steps": 30, "warmup": 5, "repeats": 1}, "full": {"steps": 200, "warmup": 20, "repeats": 4}}
# a ResNet step takes seconds on a CPU: fewer steps there; on a GPU fewer repeats keep the four sides in minutes
IMAGE_SIZES = {("small", "cpu"): {"steps": 4, "warmup": 1, "repeats": 1},
               ("full", "cpu"): {"steps": 10, "warmup": 2, "repeats": 1},
               ("small", "cuda"): {"steps": 30, "warmup": 10, "repeats": 1},
               ("full", "cuda"): {"steps": 100, "warmup": 20, "repeats": 2}}


def _fused_configs(case: dict, steps: int, extra: dict, device: str = "cpu") -> list[RunConfig]:
    """K runs that differ in seed and learning rate (a seed x lr sweep), on the digits (1,078 training images)
    unless the case names other data."""
    over = {k: v for k, v in case.items() if k != "members"}
    lrs = (0.01, 0.02, 0.05, 0.1)
    return [_bench_config(device, {"experiment": "bench_fused", "data.name": "digits", "trainer.max_steps": steps,
                                  "trainer.max_epochs": -1, "seed": i, "optim.lr": lrs[i % len(lrs)], **over,
                                  **extra}) for i in range(case["members"])]


def _group_fit(cfgs: list[RunConfig], warmup: int, fuse: str) -> tuple[float, float, int]:
    """Trains the runs through the runner (as `repro run` does, --fuse auto: one group; off: one by one) in a
    scratch store; returns (seconds of the timed steps, seconds end to end, samples of the timed steps)."""
    from framework.runner import train_group
    from framework.store import RunStore
    timed, samples = 0.0, 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        groups = [cfgs] if fuse == "auto" else [[c] for c in cfgs]
        for group in groups:
            clock = _Clock(warmup)
            results = train_group(group, store, callbacks=(clock,))
            bad = [r for r in results if not isinstance(r, dict) or r.get("status") == "failed"]
            if bad:
                raise RuntimeError(f"bench run failed: {bad[0]}")
            timed += clock.end - clock.start
            samples += clock.steps * cfgs[0].data.batch_size * len(group)
    return timed, time.perf_counter() - start, samples


def raw_fused_rate(cfgs: list[RunConfig], steps: int, warmup: int) -> float:
    """Samples/s of a plain loop over the same fused net the framework trains (framework.fused.fuse_nets of the
    members' nets, as `repro bench`'s other cases time the run's own net): each member its own shuffled batches,
    the loss summed over members, SGD with momentum and per-member learning rates written out; no Lightning, no
    logging, no diagnostics."""
    from framework.data import build_splits
    from framework.fused_layers import fuse_nets
    cfg = cfgs[0]
    device = "cuda" if cfg.trainer.accelerator == "gpu" else "cpu"
    splits = build_splits(cfg.data)
    x, y = splits.x_train.to(device), splits.y_train.to(device)
    k, bs = len(cfgs), cfg.data.batch_size
    nets = []
    for c in cfgs:
        pl.seed_everything(c.seed, verbose=False)
        nets.append(build_module(c, splits).net)
    net = fuse_nets(nets).to(device)
    net.train()
    params = list(net.parameters())
    buffers = [torch.zeros_like(p) for p in params]
    lr = torch.tensor([c.optim.lr for c in cfgs], device=device)
    lrs = [lr.view(k, *([1] * (p.dim() - 1))) for p in params]
    mu = cfg.optim.momentum
    g = torch.Generator().manual_seed(0)
    orders = [torch.randperm(len(x), generator=g) for _ in range(k)]
    step, start, pos = 0, None, 0
    while step < warmup + steps:
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        if pos >= len(x):
            orders, pos = [torch.randperm(len(x), generator=g) for _ in range(k)], 0
        idx = torch.cat([o[pos:pos + bs] for o in orders]).to(device)
        pos += bs
        out = net(x[idx])
        loss = torch.nn.functional.cross_entropy(out, y[idx], reduction="none").view(k, -1).mean(1).sum()
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p, buf, r in zip(params, buffers, lrs):
                buf.mul_(mu).add_(p.grad)
                p.sub_(r * buf)
        step += 1
    _sync(device)
    return steps * bs * k / (time.perf_counter() - start)


def handwritten_fused_rate(cfgs: list[RunConfig], steps: int, warmup: int) -> float:
    """Samples/s of a hand-written fused MLP loop (no nn.Module): the K MLPs' weights stacked, batched matmuls
    (torch.baddbmm) in a (K, B, width) layout, SGD with momentum written out. A floor for what the module tree's
    Python costs: not the target's baseline."""
    from framework.data import build_splits
    cfg = cfgs[0]
    splits = build_splits(cfg.data)
    x, y = splits.x_train, splits.y_train
    k, bs, width, depth = len(cfgs), cfg.data.batch_size, cfg.model.width, cfg.model.depth
    sizes = [x.shape[1]] + [width] * depth + [splits.n_classes]
    g = torch.Generator().manual_seed(0)
    weights = [(torch.randn(k, a, b, generator=g) / a ** 0.5).requires_grad_() for a, b in zip(sizes, sizes[1:])]
    biases = [torch.zeros(k, 1, b, requires_grad=True) for b in sizes[1:]]
    params = weights + biases
    buffers = [torch.zeros_like(p) for p in params]
    lr = torch.tensor([c.optim.lr for c in cfgs]).view(k, 1, 1)
    mu = cfg.optim.momentum
    act = torch.sigmoid if cfg.model.activation == "sigmoid" else torch.relu
    orders = [torch.randperm(len(x), generator=g) for _ in range(k)]
    step, start, pos = 0, None, 0
    while step < warmup + steps:
        if step == warmup:
            start = time.perf_counter()
        if pos + bs > len(x):
            orders, pos = [torch.randperm(len(x), generator=g) for _ in range(k)], 0
        idx = torch.stack([o[pos:pos + bs] for o in orders])
        pos += bs
        h, yb = x[idx], y[idx]
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(weights) - 1:
                h = act(h)
        loss = torch.nn.functional.cross_entropy(h.reshape(-1, h.shape[-1]), yb.reshape(-1)) * k
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p, buf in zip(params, buffers):
                buf.mul_(mu).add_(p.grad)
                p.sub_(lr * buf)
        step += 1
    return steps * bs * k / (time.perf_counter() - start)


def run_fused(name: str = "fused_mlp_16x50x10", size: str = "small", extra: dict | None = None,
              report=print, device: str | None = None) -> dict:
    """Samples/s of the fused framework, of the same runs one after another (--fuse off) and of a raw fused loop,
    alternated `repeats` times in this process; the ratios are medians over the repeats."""
    from framework.runner import set_threads
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    mlp = FUSED_CASES[name].get("model.name", "mlp") == "mlp"
    s = FUSED_SIZES[size] if mlp else IMAGE_SIZES[(size, device)]
    cfgs = _fused_configs(FUSED_CASES[name], s["warmup"] + s["steps"], extra or {}, device)
    threads = set_threads(cfgs[0])
    fused, unfused, raw, hand, fused_e2e, unfused_e2e = [], [], [], [], [], []
    samples_whole = len(cfgs) * (s["warmup"] + s["steps"]) * cfgs[0].data.batch_size

    def framework(fuse: str, rates: list, whole_rates: list) -> None:
        timed, whole, samples = _group_fit(cfgs, s["warmup"], fuse)
        rates.append(samples / timed)
        whole_rates.append(samples_whole / whole)

    sides = [lambda: raw.append(raw_fused_rate(cfgs, s["steps"], s["warmup"])),
             lambda: hand.append(handwritten_fused_rate(cfgs, s["steps"], s["warmup"]) if mlp and device == "cpu"
                                 else math.nan),
             lambda: framework("auto", fused, fused_e2e), lambda: framework("off", unfused, unfused_e2e)]
    for r in range(s["repeats"]):  # each repeat starts with another side: drift in machine load hits all alike
        for i in range(len(sides)):
            sides[(i + r) % len(sides)]()
    row = {"case": name, "device": device, "members": len(cfgs), "batch": cfgs[0].data.batch_size, "steps": s["steps"],
           "repeats": s["repeats"], "threads": threads,
           "fused_samples_s": statistics.median(fused), "unfused_samples_s": statistics.median(unfused),
           "raw_samples_s": statistics.median(raw), "handwritten_samples_s": statistics.median(hand),
           "fused_over_unfused": statistics.median(f / u for f, u in zip(fused, unfused)),
           "fused_over_raw": statistics.median(f / r for f, r in zip(fused, raw)),
           "end_to_end_fused_over_unfused": statistics.median(f / u for f, u in zip(fused_e2e, unfused_e2e))}
    report(row)
    return row


def record_fused(path: Path, row: dict, size: str) -> None:
    import datetime
    lines = [f"\n## {datetime.date.today().isoformat()}: fused training, {device_name(row.get('device', 'cpu'))}, "
             f"size {size}\n",
             f"torch {torch.__version__}, pytorch-lightning {pl.__version__}; `repro bench --size {size} --case "
             f"{row['case']}`; {row['members']} runs, batch {row['batch']}, {row['steps']} timed steps x "
             f"{row['repeats']} repeats\n",
             "| fused framework samples/s | unfused framework samples/s | raw fused loop samples/s | "
             "hand-written bmm loop samples/s | fused / unfused | fused / raw | fused / unfused, whole runs |",
             "|---|---|---|---|---|---|---|",
             f"| {row['fused_samples_s']:,.0f} | {row['unfused_samples_s']:,.0f} | {row['raw_samples_s']:,.0f} | "
             f"{row['handwritten_samples_s']:,.0f} | "
             f"{row['fused_over_unfused']:.2f} | {row['fused_over_raw']:.2f} | "
             f"{row['end_to_end_fused_over_unfused']:.2f} |"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")

"""`repro bench`'s fused cases: K runs of one shape as one model (framework/fused.py), against the same K runs one
after another and against a hand-written fused loop."""
from __future__ import annotations

import datetime
import math
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from framework.bench.cases import _bench_config, _Clock, _sync, device_name
from framework.config import RunConfig
from framework.data import build_splits
from framework.fused_layers import fuse_nets
from framework.module import build_module
from framework.process import set_threads
from framework.runner import train_group
from framework.store import RunStore

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

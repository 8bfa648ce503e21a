"""What a suite costs before it runs: its runs, the fused groups the planner would make, and an estimate of device
time from the throughput `repro bench` measured (reports/benchmarks.md).

A step of a group of K members costs OVERHEAD + PER_MEMBER x K (launches, Python, the optimizer's bookkeeping) plus
K x batch x 3 x forward FLOPs / PEAK (backward ~ twice forward). The forward FLOPs per sample are counted by
torch's FlopCounterMode on a meta-device copy of the model (no memory, no data). The constants per device are fitted
to recorded figures, each named where it comes from; they price a suite before it is submitted, not a measurement:
against the cpu scales' measured times here the estimate was within a factor of about three, except where runs stop
early (random_labels stops at 100% training accuracy: the estimate assumes the whole budget). The H200 figures are
fp32; bf16 runs are likely faster, not yet measured.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from framework.config import RunConfig, flatten, to_dict
from framework.datasets import input_shape, training_size
from framework.optim_build import total_steps


@dataclass(frozen=True)
class Device:
    name: str
    overhead_s: float     # a step's fixed cost
    per_member_s: float   # and each fused member's
    peak_flops: float     # sustained training FLOP/s on convolutions and matrix products
    source: str


DEVICES = {
    # reports/benchmarks.md, 2026-11-23 (2-core x86 CPU, 2 threads): a 50 x 10 MLP step at batch 128 ~5.2 ms
    # (FLOPs negligible: overhead), ResNet-18 at batch 128 2.8 s (46 samples/s, 1.1 GFLOP forward each: 0.56 G
    # multiply-adds)
    "cpu": Device("this 2-core CPU", 0.005, 0.0005, 1.5e11, "benchmarks.md 2026-11-23, size full"),
    # reports/benchmarks.md, 2026-11-29 (NVIDIA H200, fp32, no compile): ResNet-18 width 4 alone 11.2 ms a step,
    # fused 16 x width 4 and 16 x width 16 27 ms and 47 ms a step
    "cuda": Device("NVIDIA H200 (fp32)", 0.010, 0.001, 2.0e13, "benchmarks.md 2026-11-29, fused ResNet-18"),
}


def steps(cfg: RunConfig) -> int:
    n = training_size(cfg.data)
    return total_steps(cfg, max(1, math.ceil(n / cfg.data.batch_size)))


@lru_cache(maxsize=256)
def _forward_flops(model_json: str, data_json: str) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from framework.nets import build_model
    from framework.overrides import apply
    cfg = apply(RunConfig(), flatten({"model": json.loads(model_json), "data": json.loads(data_json)}))
    shape, outputs = input_shape(cfg.data)
    with torch.device("meta"):
        model = build_model(cfg.model, shape, outputs).eval()  # eval: batch norm takes a batch of one
        x = torch.zeros((2, *shape))
        with FlopCounterMode(display=False) as counter:
            model(x)
    return int(counter.get_total_flops()) // 2


def forward_flops(cfg: RunConfig) -> int:
    """Forward FLOPs of one sample through the run's model."""
    d = to_dict(cfg)
    return _forward_flops(json.dumps(d["model"], sort_keys=True), json.dumps(d["data"], sort_keys=True))


def group_seconds(group: list[RunConfig], device: Device) -> float:
    """Estimated seconds to train a fused group (one member: a run alone) on `device`."""
    k = len(group)
    longest = max(steps(c) for c in group)
    c = group[0]
    compute = k * c.data.batch_size * 3 * forward_flops(c) / device.peak_flops
    return longest * (device.overhead_s + device.per_member_s * k + compute)


def device_of(cfg: RunConfig) -> str:
    return "cuda" if cfg.trainer.accelerator in ("gpu", "cuda") or (
        cfg.trainer.accelerator == "auto" and torch.cuda.is_available()) else "cpu"


def estimate(groups: list[list[RunConfig]], device: str) -> float:
    """Device-hours of a plan's groups, one after another."""
    return sum(group_seconds(g, DEVICES[device]) for g in groups) / 3600


"""Typed run configs: YAML in, dotted overrides, validation at load time, identity by hash.

A run's identity is the hash of the config fields that differ from their defaults (sorted, as JSON), so adding
a new option with a default keeps every existing run's hash, and a relaunched suite skips finished runs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass
class DataConfig:
    name: str = "digits"            # registry: framework.datasets.DATASETS (digits, mnist, fashion_mnist, cifar10, ...)
    root: str = ""                  # image datasets: torchvision's layout under here ("" = $REPRO_DATA or ~/.cache/repro/data)
    download: bool = True           # image datasets: fetch missing files where a network exists
    verify: bool = True             # image datasets: check torchvision's MD5s (false: a re-packed copy in the same format)
    n_samples: int = 1000           # synthetic datasets only
    n_features: int = 16            # gaussian only
    n_classes: int = 4              # gaussian only
    class_sep: float = 2.0          # gaussian: distance scale between class means
    noise: float = 0.1              # regression, quadratic, location: std of the target noise
    condition: float = 100.0        # quadratic: lambda_max / lambda_min of the loss's Hessian (lambda_max = 1)
    feature_scale: float = 1.0      # >1: feature j of d multiplied by feature_scale ** (j / (d - 1)), before any
                                    # standardisation (badly scaled inputs, LeCun et al. 1998 Sec. 4.3)
    standardise: bool = True        # false: inputs as they are (true: each feature centred and scaled by the
                                    # training split's statistics; synthetic problems with a prescribed spectrum never)
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    n_train: int = 0                # >0: keep only this many training samples
    split_seed: int = 0             # the draw of the data (split, label noise, synthetic problem): set to the seed
    batch_size: int = 64
    order_seed: int = 0             # >0: the training batches are drawn in another order than the run seed's alone
                                    # (runs of one seed that must not share their batches: independent SGD chains)
    label_noise: float = 0.0        # fraction of training labels replaced by a uniformly random class
    label_noise_wrong: bool = False # true: the replacement is a random *other* class, never the true one
                                    # (Nakkiran et al. 2019); false: any class, the true one included (Zhang et al.)
    corruption: str = "none"        # registry: framework.data.CORRUPTIONS (shuffled_pixels, random_pixels, gaussian)
    positive_fraction: float = 0.7  # wilson: P(y = +1)
    augment: str = "none"           # registry: framework.data.AUGMENTATIONS (none, crop, crop_flip), on the device
    crop_padding: int = 4           # augment=crop*: pad by this many pixels, then crop back to size
    on_device: bool = True          # keep the whole dataset on the accelerator; batches by index, no transfers


@dataclass
class ModelConfig:
    name: str = "mlp"               # registry: framework.nets.MODELS (mlp, linear, convnet, cnn5, resnet18, vgg)
    depth: int = 2                  # hidden layers (mlp), conv blocks (convnet), 11/13/16/19 (vgg)
    width: int = 64                 # units (mlp), first stage's channels k (conv nets: k, 2k, 4k, 8k)
    activation: str = "relu"        # registry: framework.models.ACTIVATIONS
    residual: bool = False
    batch_norm: bool = False
    dropout: float = 0.0
    init: str = "default"           # registry: framework.models.INITS
    init_std: float = 0.01          # init=normal
    init_value: float = 0.0         # init=constant
    init_gain: float = 1.0          # init=fan_in: weights N(0, init_gain / fan_in) (1: LeCun's 1/n, 2: He's 2/n)


@dataclass
class LossConfig:
    name: str = "cross_entropy"     # registry: framework.losses.LOSSES
    l2: float = 0.0                 # >0: 1/2 l2 ||theta||^2 over every parameter added to the training loss (an L2
                                    # penalty, differentiated by autograd; the logged losses leave it out)


@dataclass
class OptimConfig:
    name: str = "sgd"               # registry: framework.optim.OPTIMIZERS
    lr: float = 0.1
    base_batch_size: int = 0        # >0: linear scaling rule, lr_used = lr * batch_size / base_batch_size
    momentum: float = 0.9           # momentum, nesterov, rmsprop
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    name: str = "constant"          # registry: framework.optim.SCHEDULES
    warmup_epochs: float = 0.0      # linear warm-up from ~0 before the schedule
    step_epochs: float = 10.0       # step: decay every this many epochs
    gamma: float = 0.1              # step: decay factor
    final_fraction: float = 0.0     # cosine, linear: lr at the end as a fraction of the peak
    time_constant: float = 100.0    # inverse_time: lr * b / (b + t), b in steps


@dataclass
class TrainerConfig:
    max_epochs: int = 20
    max_steps: int = -1
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"      # Lightning's: 32-true, bf16-mixed (autocast), 16-mixed, ...
    channels_last: bool = False     # conv nets on CUDA: NHWC memory format (tensor-core convolutions); no-op on CPU
    compile: bool = False           # torch.compile the model
    fuse: bool = True               # false: this run always trains alone, never in a fused group. For chaotic nets
                                    # (deep batch norm, edge of stability), whose numbers a fused group's other
                                    # rounding changes by more than fusion's tolerance (README, "Fused training")
    gradient_clip: float = 0.0
    val_every_n_epochs: int = 1
    log_every_n_steps: int = 10
    deterministic: bool = True
    stop_at_train_acc: float = 0.0  # >0: stop once an epoch's training accuracy reaches this (time to fit)
    threads: int = 0                # torch's intra-op threads; 0: SLURM's CPUs per task, else 1 (process.set_threads)


@dataclass
class DiagnosticsConfig:
    enabled: bool = True
    every_n_steps: int = 10         # per-layer norms are scalars at an interval, never per-step histograms
    saturation_threshold: float = 0.05  # a unit is saturated when its activation's derivative is below this share of its maximum
    # Probes (framework/probes.py), every probe_every steps on a fixed probe set of training samples, in eval mode:
    # the full probe-set loss (probe/loss), and when asked the gradient noise scale and the top Hessian eigenvalue.
    probe_every: int = 0            # 0: no probes
    probe_samples: int = 1024       # the first this many training samples (0: all of them)
    noise_scale: bool = False       # B_simple = tr(Sigma) / |G|^2 from per-example gradients (McCandlish et al. 2018)
    sharpness: bool = False         # top Hessian eigenvalue by power iteration on Hessian-vector products
    power_iters: int = 20           # power iterations per sharpness probe (warm-started from the last vector)
    variance_batches: list[int] = field(default_factory=list)  # batch sizes B at which E|g_B - G|^2 is measured
                                    # directly (VARIANCE_DRAWS minibatches each, G the probe set's full gradient)
    probe_test: bool = False        # also the whole validation and test splits' loss and error at each probe
                                    # (probe/val_loss, probe/val_error, probe/test_loss, probe/test_error)
    final_sharpness: bool = False   # the summary's final_sharpness: the top Hessian eigenvalue of the trained net on
                                    # the probe set (power_iters iterations), beside final_weight_norm
    reparam_scale: float = 0.0      # >0 (a ReLU MLP): also the trained net with its first weight layer scaled by a and
                                    # the next by 1/a, the same function (Dinh et al. 2017): final_sharpness_reparam,
                                    # test_error_reparam
    target_loss: float = 0.0        # >0: summary's steps_to_target, the first step the probe loss (else the
                                    # minibatch loss, mean of 5 logged values) is at or below this


@dataclass
class TrackingConfig:
    project: str = "repro"
    entity: str = ""
    mode: str = "auto"              # auto (online only with an API key and a network), online, offline, disabled
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    experiment: str = "adhoc"
    variant: str = "default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# Labels, tracking, where the data files live and how many threads compute never change what a run computes, so
# they stay out of its identity.
NOT_IN_IDENTITY = ("variant", "tracking.", "data.root", "data.download", "data.verify", "data.on_device",
                   "trainer.threads", "trainer.fuse")
# Lightning's precision names (trainer.precision), checked at load time.
PRECISIONS = ("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "transformer-engine",
              "transformer-engine-float16")

# Fields whose value must be a registered name; checked at load time, never deep inside a job.
REGISTRY_FIELDS = {
    "data.name": ("framework.datasets", "DATASETS"),
    "data.corruption": ("framework.data", "CORRUPTIONS"),
    "data.augment": ("framework.data", "AUGMENTATIONS"),
    "model.name": ("framework.nets", "MODELS"),  # nets registers every model on import
    "model.activation": ("framework.models", "ACTIVATIONS"),
    "model.init": ("framework.models", "INITS"),
    "loss.name": ("framework.losses", "LOSSES"),
    "optim.name": ("framework.optim", "OPTIMIZERS"),
    "schedule.name": ("framework.optim", "SCHEDULES"),
}
TRACKING_MODES = ("auto", "online", "offline", "disabled")
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")  # a name that becomes one folder, never a path


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and not k.startswith("_"):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def in_identity_exempt(key: str) -> bool:
    return any(key == p or key.startswith(p) for p in NOT_IN_IDENTITY)


def identity(cfg: RunConfig) -> dict[str, Any]:
    """The fields that define what a run computes: those that differ from their defaults."""
    ours, default = flatten(to_dict(cfg)), flatten(to_dict(RunConfig()))
    return {k: v for k, v in sorted(ours.items()) if v != default.get(k) and not in_identity_exempt(k)}


def config_hash(cfg: RunConfig) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)

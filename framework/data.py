"""Datasets as in-memory tensors, a fixed train/val/test split, and batches cut from the tensors.

Batches are index slices of tensors already in memory (no per-sample DataLoader cost), on the accelerator
when the run has one (data.on_device), where image batches are also augmented. The shuffle order and the
augmentation draws are a function of (run seed, epoch) only; Lightning sets the epoch through
`.sampler.set_epoch`, so a resumed run sees the same batches as an uninterrupted one. Under DDP each rank
takes its share of every global batch. Image datasets come from framework/vision.py (torchvision).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch

from framework.datasets import DATASETS
from framework.registry import Registry, UserError


@dataclass
class Splits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    signed: bool = False

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_features(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def n_outputs(self) -> int:
        return self.n_classes or self.y_train.shape[1]


# Input corruptions of Zhang et al. 2017, Sec. 2, applied to every split before standardisation.
CORRUPTIONS: Registry[Callable[[torch.Tensor, np.random.Generator], torch.Tensor]] = Registry("corruption")
CORRUPTIONS.register("none")(lambda x, rng: x)


@CORRUPTIONS.register("shuffled_pixels")
def shuffled_pixels(x, rng):
    """One random permutation of the pixels, the same for every image."""
    return x[:, torch.from_numpy(rng.permutation(x.shape[1]))]


@CORRUPTIONS.register("random_pixels")
def random_pixels(x, rng):
    """A different random permutation for each image."""
    perms = torch.from_numpy(np.argsort(rng.uniform(size=x.shape), axis=1))
    return torch.gather(x, 1, perms)


@CORRUPTIONS.register("gaussian")
def gaussian_pixels(x, rng):
    """Gaussian noise with the dataset's mean and variance in place of the images."""
    noise = rng.standard_normal(size=tuple(x.shape)).astype(np.float32)
    return torch.from_numpy(noise) * x.std() + x.mean()


def scale_features(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Feature j of d (pixels in order, for images) multiplied by scale ** (j / (d - 1)): from x1 to x`scale`."""
    flat = x.flatten(1)
    factors = scale ** torch.linspace(0, 1, flat.shape[1]) if flat.shape[1] > 1 else torch.ones(1)
    return (flat * factors).reshape(x.shape)


def corrupt_labels(y: torch.Tensor, fraction: float, n_classes: int, rng, wrong: bool = False) -> torch.Tensor:
    """Each label is replaced with probability `fraction` by a uniformly random class: any class (it may stay the
    same; Zhang et al.'s random labels), or with `wrong` one of the other n_classes - 1 (Nakkiran et al.'s noise)."""
    hit = torch.from_numpy(rng.uniform(size=len(y)) < fraction)
    if wrong:
        shift = torch.from_numpy(rng.integers(1, n_classes, size=len(y)))
        return torch.where(hit, (y + shift) % n_classes, y)
    random = torch.from_numpy(rng.integers(0, n_classes, size=len(y)))
    return torch.where(hit, random, y)


def build_splits(cfg) -> Splits:
    """cfg: DataConfig. The split depends on data.split_seed only (the grid sets it to the run's seed); corruptions
    and label noise draw from their own streams, so every condition of a seed's sweep shares one split. A dataset with an
    official test split keeps it (test_fraction is then unused) and draws the validation split from its
    training pool."""
    rng = np.random.default_rng([cfg.split_seed, 0])
    ds = DATASETS.get(cfg.name, "data.name")(cfg, rng)
    n_pool = len(ds.x)
    x = ds.x if ds.x_test is None else torch.cat([ds.x, ds.x_test])
    y = ds.y if ds.y_test is None else torch.cat([ds.y, ds.y_test])
    # corrupted together, so a fixed pixel permutation is the same for training and test images
    x = CORRUPTIONS.get(cfg.corruption, "data.corruption")(x.flatten(1), np.random.default_rng(
        [cfg.split_seed, 2])).reshape(x.shape)
    order = torch.from_numpy(np.random.default_rng([cfg.split_seed, 1]).permutation(n_pool))
    if ds.x_test is None:
        n_test = int(round(cfg.test_fraction * n_pool))
        test, order = order[:n_test], order[n_test:]
    else:
        test = torch.arange(n_pool, len(x))
    n_val = int(round(cfg.val_fraction * n_pool))
    val, train = order[:n_val], order[n_val:]
    if cfg.n_train > 0:
        train = train[:cfg.n_train]
    if cfg.feature_scale != 1.0:
        x = scale_features(x, cfg.feature_scale)
    x_train, y_train = x[train], y[train]
    if cfg.label_noise > 0:
        if not ds.n_classes:
            raise UserError(f"data.label_noise needs a classification dataset; {cfg.name} has real-valued targets")
        y_train = corrupt_labels(y_train, cfg.label_noise, ds.n_classes, np.random.default_rng([cfg.split_seed, 3]),
                                 cfg.label_noise_wrong)
    if ds.standardise and cfg.standardise:
        # Statistics of the training split: per channel for images, per feature otherwise; constant features
        # (digits' always-blank border) are left unscaled.
        dims = (0, 2, 3) if ds.image else (0,)
        mean, std = x_train.mean(dims, keepdim=True)[0], x_train.std(dims, keepdim=True)[0]
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        norm = lambda t: (t - mean) / std  # noqa: E731
    else:
        norm = lambda t: t  # noqa: E731
    splits = Splits(norm(x_train), y_train, norm(x[val]), y[val], norm(x[test]), y[test], ds.n_classes, ds.signed)
    check_finite(splits, cfg)
    return splits


def check_finite(splits: Splits, cfg) -> None:
    """Built data must be finite: a nan or infinite input (data.feature_scale=1e300 overflows float32) makes every
    run diverge at step 0, and numbers of nets that never trained must not reach a claim."""
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        t = getattr(splits, name)
        if t.is_floating_point() and len(t) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(f"data: {bad} of {t.numel()} values of {cfg.name}'s {name} are not finite after "
                            f"building (data.feature_scale={cfg.feature_scale:g}, data.standardise="
                            f"{str(cfg.standardise).lower()}): float32 cannot hold them")


# On-device augmentation of image batches (data.augment). Each sample's draw is fixed at the start of the epoch
# from (seed, epoch), so a run resumed mid-epoch augments the remaining batches exactly as it would have.
AUGMENTATIONS: Registry[tuple[bool, bool]] = Registry("augmentation")  # name -> (random crop, horizontal flip)
AUGMENTATIONS.register("none")((False, False))
AUGMENTATIONS.register("crop")((True, False))
AUGMENTATIONS.register("crop_flip")((True, True))


def augment(x: torch.Tensor, shifts: torch.Tensor | None, flips: torch.Tensor | None, padding: int) -> torch.Tensor:
    """Random crops of the zero-padded images (zero is the mean after standardisation) and horizontal flips,
    batched on x's device. shifts: (B, 2) offsets in [0, 2 * padding]; flips: (B,) bool."""
    if shifts is not None:
        b, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        rows = (shifts[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (shifts[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded[torch.arange(b, device=x.device)[:, None, None, None],
                   torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    if flips is not None:
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
    return x


class TensorBatches:
    """An iterable of (x, y) batches sliced from tensors; its own `sampler`, so Lightning sets its epoch.
    The tensors may live on the accelerator: then batches are cut and augmented there, with no transfer."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 augment: str = "none", padding: int = 4):
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.crop, self.flip = AUGMENTATIONS.get(augment, "data.augment")
        if (self.crop or self.flip) and x.dim() != 4:
            raise UserError(f"data.augment={augment} needs image data (N, C, H, W); got shape {tuple(x.shape)}")
        self.padding = padding
        self.epoch = 0
        self.skip_batches = 0  # set once by a resume mid-epoch: those batches were trained before the stop
        self.batches_done = 0  # set by the preemption callback right before it saves a checkpoint
        self.sampler = self
        self.batch_sampler = None  # Lightning probes both; only `sampler` carries set_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    # Lightning's resumable-loader interface: it saves this in checkpoints and restores it before iterating.
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        # Lightning creates the resumed epoch's iterator before it calls set_epoch: take the epoch from here too
        epoch, done = int(state.get("epoch", self.epoch)), int(state.get("batches_done", 0))
        if done >= len(self):  # saved after the epoch's last batch: Lightning goes on with the next epoch
            epoch, done = epoch + 1, 0
        self.epoch, self.skip_batches = epoch, done

    def __iter__(self):
        for idx, augment_at in self.indices():
            yield self.take(idx, augment_at)

    def epoch_plan(self):
        """This epoch's sample order and augmentation draws, and where it starts (after a resume mid-epoch)."""
        n, device = len(self.x), self.x.device
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        # drawn per position in the epoch, after the order, from the same stream: fixed by (seed, epoch)
        shifts = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=g).to(device) if self.crop else None
        flips = (torch.rand(n, generator=g) < 0.5).to(device) if self.flip else None
        first, self.skip_batches = self.skip_batches * self.batch_size, 0
        return order.to(device), shifts, flips, first

    def indices(self):
        """Each batch's sample indices in this epoch's order, and what `take` needs to augment them."""
        order, shifts, flips, first = self.epoch_plan()
        rank, world = rank_and_world()
        for start in range(first, len(self.x), self.batch_size):
            batch = slice(start, start + self.batch_size)
            yield order[batch][rank::world], (shifts, flips, batch, rank, world)

    def take(self, idx: torch.Tensor, augment_at) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x.index_select(0, idx)  # 6x faster than x[idx] on a CPU
        if self.crop or self.flip:
            shifts, flips, batch, rank, world = augment_at
            x = augment(x, shifts[batch][rank::world] if self.crop else None,
                        flips[batch][rank::world] if self.flip else None, self.padding)
        return x, self.y.index_select(0, idx)


def check_shares(n_train: int, batch_size: int, world: int) -> None:
    """Under DDP every rank takes an equal share of every batch, the last one included: otherwise the mean of
    the ranks' gradients is not the batch's gradient, and a last batch smaller than the world leaves a rank
    with no samples (a NaN loss). Refused, not patched over."""
    last = n_train % batch_size
    if world > 1 and last % world:
        raise UserError(f"data.batch_size: the last batch of the {n_train} training samples has {last} samples, "
                        f"which {world} DDP processes cannot share equally; choose data.n_train or data.batch_size "
                        f"so that n_train % batch_size is 0 or a multiple of {world}")


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def order_stream(seed: int, order_seed: int) -> int:
    """The seed of a run's batch order: the run seed itself (order_seed 0, every run so far), else a 32-bit stream
    of (seed, order_seed) that no plain run seed's order shares by construction of SeedSequence."""
    if not order_seed:
        return seed
    return int(np.random.SeedSequence([seed, order_seed]).generate_state(1, dtype=np.uint32)[0]) + 2 ** 32


class TensorDataModule(pl.LightningDataModule):
    """cfg: DataConfig. With data.on_device (the default) the splits are moved to the trainer's device once, so
    a dataset that fits in accelerator memory is never copied batch by batch."""

    def __init__(self, splits: Splits, cfg, seed: int):
        super().__init__()
        self.splits, self.cfg, self.seed = splits, cfg, seed
        self._moved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = getattr(self.splits, f"x_{split}"), getattr(self.splits, f"y_{split}")
        trainer = getattr(self, "trainer", None)
        if not self.cfg.on_device or trainer is None:
            return x, y
        if split not in self._moved:
            device = trainer.strategy.root_device
            self._moved[split] = (x.to(device), y.to(device))
        return self._moved[split]

    def train_dataloader(self):
        x, y = self._tensors("train")
        check_shares(len(x), self.cfg.batch_size, rank_and_world()[1])
        return TensorBatches(x, y, self.cfg.batch_size, shuffle=True, seed=order_stream(self.seed, self.cfg.order_seed),
                             augment=self.cfg.augment, padding=self.cfg.crop_padding)

    def val_dataloader(self):
        x, y = self._tensors("val")
        return TensorBatches(x, y, max(1024, self.cfg.batch_size))

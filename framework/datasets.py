"""The datasets a run names (data.name): synthetic problems drawn from the split's generator, scikit-learn's digits,
and torchvision's image datasets (framework/vision.py), each as whole in-memory tensors."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from framework.registry import Registry, UserError
from framework.vision import SOURCES, load


@dataclass
class Dataset:
    x: torch.Tensor
    y: torch.Tensor          # long class indices, or float (N, k) targets for regression
    n_classes: int           # 0 for regression
    standardise: bool = True
    signed: bool = False     # targets are +-1 for a scalar output; error = sign mismatch
    x_test: torch.Tensor | None = None  # an official test split (image datasets); else test_fraction is drawn
    y_test: torch.Tensor | None = None

    @property
    def image(self) -> bool:
        return self.x.dim() == 4


DATASETS: Registry[Callable[[object, np.random.Generator], Dataset]] = Registry("dataset")


@DATASETS.register("regression1d")
def regression1d(cfg, rng) -> Dataset:
    """The curve-fitting setup: y = sin(2 pi x) + Gaussian noise, x uniform on [0, 1]."""
    x = rng.uniform(0, 1, size=(cfg.n_samples, 1))
    y = np.sin(2 * np.pi * x) + cfg.noise * rng.standard_normal(x.shape)
    return Dataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), 0, standardise=False)


@DATASETS.register("gaussian")
def gaussian(cfg, rng) -> Dataset:
    """Isotropic Gaussian classes around random means; class_sep scales the distance between means."""
    means = rng.standard_normal((cfg.n_classes, cfg.n_features)) * cfg.class_sep / math.sqrt(2)
    y = rng.integers(0, cfg.n_classes, size=cfg.n_samples)
    x = means[y] + rng.standard_normal((cfg.n_samples, cfg.n_features))
    return Dataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long), cfg.n_classes)


@DATASETS.register("random_images")
def random_images(cfg, rng) -> Dataset:
    """CIFAR-shaped images (3 x 32 x 32) of Gaussian pixels with uniformly random labels (n_classes): for timing
    image models where no image files are (repro bench's fused ResNet cases)."""
    x = rng.standard_normal((cfg.n_samples, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, cfg.n_classes, size=cfg.n_samples)
    return Dataset(torch.from_numpy(x), torch.tensor(y, dtype=torch.long), cfg.n_classes, standardise=False)


@DATASETS.register("quadratic")
def quadratic(cfg, rng) -> Dataset:
    """Least squares with a prescribed Hessian: n_samples rows of n_features, built so that X^T X / n is exactly
    R diag(lambda) R^T, lambda log-spaced from 1 down to 1 / condition, R a random rotation. Under loss.name=squared
    (1/2 (x.w - y)^2) the training loss is 1/2 (w - w*)^T H (w - w*) + const with that H, when every pool sample
    trains (data.val_fraction: 0; the test split is its own draw). y = x.w* + noise, w* ~ N(0, I / d)."""
    n, d = cfg.n_samples, cfg.n_features
    if n < d:
        raise UserError(f"data.n_samples: the quadratic needs at least n_features ({d}) samples, got {n}")
    lam = np.logspace(0, -np.log10(cfg.condition), d) if d > 1 else np.ones(1)
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]
    w_star = rng.standard_normal(d) / np.sqrt(d)

    def draw():
        q = np.linalg.qr(rng.standard_normal((n, d)))[0]  # orthonormal columns: q^T q = I exactly
        x = np.sqrt(n) * (q * np.sqrt(lam)) @ rotation.T
        return x, x @ w_star + cfg.noise * rng.standard_normal(n)
    (x, y), (xt, yt) = draw(), draw()
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return Dataset(t(x), t(y[:, None]), 0, standardise=False, x_test=t(xt), y_test=t(yt[:, None]))


@DATASETS.register("location")
def location(cfg, rng) -> Dataset:
    """The lecture notes' one-parameter model: x = 1 and y ~ N(0, noise^2), so a bias-free linear model under
    loss.name=squared minimises 1/2 (beta - y)^2 and its minimum is the training targets' mean."""
    def draw():
        return torch.ones(cfg.n_samples, 1), torch.tensor(cfg.noise * rng.standard_normal((cfg.n_samples, 1)),
                                                           dtype=torch.float32)
    (x, y), (xt, yt) = draw(), draw()
    return Dataset(x, y, 0, standardise=False, x_test=xt, y_test=yt)


@lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


@DATASETS.register("digits")
def digits(cfg, rng) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 real images, 10 classes): ships with the install."""
    x, y = _digits()
    return Dataset(torch.from_numpy(x.copy()), torch.from_numpy(y.copy()), 10)


@DATASETS.register("wilson")
def wilson(cfg, rng) -> Dataset:
    """Wilson et al. 2017, Sec. 3.3: y = +1 with probability p, else -1; x[0] = y, x[1] = x[2] = 1, and in the
    block of 5 features owned by sample i: x[3+5i] = 1, plus x[3+5i+1 .. 3+5i+4] = 1 when y = -1."""
    n = cfg.n_samples
    y = np.where(rng.uniform(size=n) < cfg.positive_fraction, 1.0, -1.0)
    x = np.zeros((n, 3 + 5 * n), dtype=np.float32)
    x[:, 0], x[:, 1], x[:, 2] = y, 1.0, 1.0
    rows = np.arange(n)
    x[rows, 3 + 5 * rows] = 1.0
    for k in range(1, 5):
        x[rows, 3 + 5 * rows + k] = (y < 0).astype(np.float32)
    return Dataset(torch.from_numpy(x), torch.tensor(y[:, None], dtype=torch.float32), 0, standardise=False,
                   signed=True)


def _vision(name: str):
    def build(cfg, rng) -> Dataset:
        x_train, y_train, x_test, y_test, n_classes = load(name, cfg.root, cfg.download, cfg.verify)
        return Dataset(x_train.float() / 255, y_train, n_classes, x_test=x_test.float() / 255, y_test=y_test)
    build.__doc__ = f"torchvision's {name} under data.root (official train/test split, pixels in [0, 1])."
    return build


for _name in SOURCES:
    DATASETS.register(_name)(_vision(_name))


def class_count(name: str, n_classes: int) -> int:
    """Classes of a dataset by name without loading it (data.n_classes is the synthetic datasets' setting)."""
    if name in SOURCES:
        return SOURCES[name].n_classes
    return 10 if name == "digits" else int(n_classes)


OFFICIAL_TRAIN = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}


def training_size(cfg) -> int:
    """Training samples of a run from its data config alone (cfg: DataConfig), as framework.data splits them: a
    dataset with an official test split draws validation from its training pool, any other draws both."""
    if cfg.name in OFFICIAL_TRAIN:
        pool = OFFICIAL_TRAIN[cfg.name]
        n = pool - int(round(cfg.val_fraction * pool))
    else:
        pool = 1797 if cfg.name == "digits" else cfg.n_samples
        n = pool - int(round(cfg.test_fraction * pool)) - int(round(cfg.val_fraction * pool))
    return min(n, cfg.n_train) if cfg.n_train > 0 else n


def input_shape(cfg) -> tuple[tuple[int, ...], int]:
    """(input shape, model outputs) of a dataset from its config alone, without loading it (cfg: DataConfig)."""
    if cfg.name in SOURCES:
        return SOURCES[cfg.name].shape, SOURCES[cfg.name].n_classes
    shapes = {"digits": ((64,), 10), "gaussian": ((cfg.n_features,), cfg.n_classes), "regression1d": ((1,), 1),
              "wilson": ((3 + 5 * cfg.n_samples,), 1), "quadratic": ((cfg.n_features,), 1), "location": ((1,), 1),
              "random_images": ((3, 32, 32), cfg.n_classes)}
    if cfg.name in shapes:
        return shapes[cfg.name]
    # a plug-in's dataset (framework/plugins.py): drawn once to read its shape
    ds = DATASETS.get(cfg.name, "data.name")(cfg, np.random.default_rng(0))
    outputs = ds.n_classes or (int(ds.y.shape[1]) if ds.y.ndim > 1 else 1)
    return tuple(int(d) for d in ds.x.shape[1:]), outputs

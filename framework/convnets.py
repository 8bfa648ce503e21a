"""Conv nets from the papers, each of width k: the first stage's channels, then 2k, 4k, 8k.

- convnet:  a plain or residual deep conv net, the conv analogue of `mlp` (He et al. 2016's plain vs residual
            CIFAR nets): `depth` 3x3 blocks in three stages of k, 2k, 4k channels.
- cnn5:     Nakkiran et al. 2019's 5-layer CNN: 4 conv layers (k, 2k, 4k, 8k) with batch norm, then linear.
- resnet18: Nakkiran et al. 2019's pre-activation ResNet-18 of width k (k = 64 is the standard ResNet-18).
- vgg:      VGG-11/13/16/19 with batch norm for small images (Wilson et al. 2017 used VGG-16 on CIFAR-10).

All end in global pooling, so 28x28 (MNIST) and 32x32 (CIFAR) inputs both work.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from framework.models import ACTIVATIONS, MODELS
from framework.registry import UserError


def _image_shape(name: str, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise UserError(f"model.name={name} needs images (channels, height, width); the data's samples have shape "
                        f"{in_shape}: use an image dataset (mnist, fashion_mnist, cifar10, cifar100)")
    return in_shape  # type: ignore[return-value]


class ConvBlock(nn.Module):
    """3x3 conv -> [batch norm] -> activation -> [dropout], with a skip connection when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, activation: str = "relu", batch_norm: bool = True,
                 dropout: float = 0.0, residual: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.activation = ACTIVATIONS.get(activation, "model.activation")
        self.act = self.activation.build()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.residual = residual and c_in == c_out and stride == 1

    def forward(self, x):
        h = self.drop(self.act(self.norm(self.conv(x))))
        return x + h if self.residual else h


class GlobalPool(nn.Module):
    """Global average (or max) pooling to one value per channel. By mean/amax rather than nn.Adaptive*Pool:
    their CUDA backward has no deterministic implementation, and trainer.deterministic is on by default."""

    def __init__(self, pool: str = "avg"):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        return x.mean((2, 3)) if self.pool == "avg" else x.amax((2, 3))


def head(channels: int, n_out: int, pool: str = "avg") -> nn.Module:
    """Global pooling, then a linear classifier."""
    return nn.Sequential(GlobalPool(pool), nn.Linear(channels, n_out))


@MODELS.register("convnet")
def build_convnet(cfg, in_shape, n_out):
    """depth blocks split over three stages (k, 2k, 4k channels); each later stage starts with stride 2."""
    c, _, _ = _image_shape("convnet", in_shape)
    k = cfg.width
    layers: list[nn.Module] = [ConvBlock(c, k, 1, cfg.activation, cfg.batch_norm)]
    c_in = k
    for stage in range(3):
        n = cfg.depth // 3 + (stage < cfg.depth % 3)
        for i in range(n):
            c_out, stride = k * 2 ** stage, 2 if (stage and i == 0) else 1
            layers.append(ConvBlock(c_in, c_out, stride, cfg.activation, cfg.batch_norm, cfg.dropout, cfg.residual))
            c_in = c_out
    return nn.Sequential(*layers, head(c_in, n_out))


@MODELS.register("cnn5")
def build_cnn5(cfg, in_shape, n_out):
    """Nakkiran et al. 2019, App. B: [conv-BN-ReLU] x 4 at k, 2k, 4k, 8k, max-pooling after the last three,
    global max-pooling, one linear layer."""
    c, _, _ = _image_shape("cnn5", in_shape)
    k, act = cfg.width, cfg.activation
    return nn.Sequential(
        ConvBlock(c, k, 1, act), ConvBlock(k, 2 * k, 1, act), nn.MaxPool2d(2), ConvBlock(2 * k, 4 * k, 1, act),
        nn.MaxPool2d(2), ConvBlock(4 * k, 8 * k, 1, act), nn.MaxPool2d(2), head(8 * k, n_out, pool="max"))


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, plus the input (through a 1x1 conv where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + skip


@MODELS.register("resnet18")
def build_resnet18(cfg, in_shape, n_out):
    """Pre-activation ResNet-18 (He et al. 2016b) for small images, widths k, 2k, 4k, 8k (Nakkiran et al. 2019)."""
    c, _, _ = _image_shape("resnet18", in_shape)
    k = cfg.width
    layers: list[nn.Module] = [nn.Conv2d(c, k, 3, 1, 1, bias=False)]
    c_in = k
    for stage, stride in enumerate((1, 2, 2, 2)):
        for i in range(2):
            layers.append(PreActBlock(c_in, k * 2 ** stage, stride if i == 0 else 1))
            c_in = k * 2 ** stage
    return nn.Sequential(*layers, head(c_in, n_out))


VGG_LAYERS = {  # channels per conv in units of k/64, 0 = 2x2 max-pool (Simonyan & Zisserman 2015, Table 1)
    11: [1, 0, 2, 0, 4, 4, 0, 8, 8, 0, 8, 8, 0],
    13: [1, 1, 0, 2, 2, 0, 4, 4, 0, 8, 8, 0, 8, 8, 0],
    16: [1, 1, 0, 2, 2, 0, 4, 4, 4, 0, 8, 8, 8, 0, 8, 8, 8, 0],
    19: [1, 1, 0, 2, 2, 0, 4, 4, 4, 4, 0, 8, 8, 8, 8, 0, 8, 8, 8, 8, 0],
}


@MODELS.register("vgg")
def build_vgg(cfg, in_shape, n_out):
    """VGG-<depth> with batch norm (model.depth in 11, 13, 16, 19; k = 64 is the original), and the CIFAR
    variant's classifier (Zagoruyko's cifar.torch, used by Wilson et al. 2017): dropout, linear 8k, BN, ReLU,
    dropout, linear. A pool that would shrink the image below 1x1 is left out (28x28 inputs)."""
    c, h, _ = _image_shape("vgg", in_shape)
    if cfg.depth not in VGG_LAYERS:
        raise UserError(f"model.depth: vgg comes in depths {', '.join(map(str, VGG_LAYERS))}; got {cfg.depth}")
    layers: list[nn.Module] = []
    c_in, k = c, cfg.width
    for units in VGG_LAYERS[cfg.depth]:
        if units == 0:
            if h >= 2:
                layers.append(nn.MaxPool2d(2))
                h //= 2
            continue
        layers.append(ConvBlock(c_in, units * k, 1, cfg.activation))
        c_in = units * k
    p = cfg.dropout
    return nn.Sequential(*layers, GlobalPool(), nn.Dropout(p), nn.Linear(c_in, c_in), nn.BatchNorm1d(c_in),
                         nn.ReLU(), nn.Dropout(p), nn.Linear(c_in, n_out))

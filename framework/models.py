"""Model, activation and initialisation registries, and the MLPs (framework/convnets.py registers the conv nets;
framework/nets.py builds any of them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from framework.fused_layers import FusedConv2d, FusedLinear
from framework.registry import Registry


@dataclass(frozen=True)
class Activation:
    build: Callable[[], nn.Module]
    # d(out)/d(in) from the module's input and output, a new tensor (diagnostics compare it in place), and its
    # maximum: saturation = slope far below the max.
    slope: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    max_slope: float
    reads_input: bool = True  # False: slope reads the output only (diagnostics then keep no copy of the input)


ACTIVATIONS: Registry[Activation] = Registry("activation")
for _name, _act in {
    "sigmoid": Activation(nn.Sigmoid, lambda x, y: torch.addcmul(y, y, y, value=-1), 0.25, reads_input=False),
    "tanh": Activation(nn.Tanh, lambda x, y: torch.addcmul(torch.ones_like(y), y, y, value=-1), 1.0,
                       reads_input=False),
    "relu": Activation(nn.ReLU, lambda x, y: (x > 0).float(), 1.0),
    "leaky_relu": Activation(nn.LeakyReLU, lambda x, y: torch.where(x > 0, 1.0, 0.01), 1.0),
    "elu": Activation(nn.ELU, lambda x, y: torch.where(x > 0, torch.ones_like(y), y + 1), 1.0),
    "identity": Activation(nn.Identity, lambda x, y: torch.ones_like(y), 1.0, reads_input=False),
}.items():
    ACTIVATIONS.register(_name)(_act)


INITS: Registry[Callable[[nn.Linear, object], None]] = Registry("init")


def _zero_bias(layer):
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


@INITS.register("default")
def _init_default(layer, cfg):  # PyTorch's own (Kaiming-uniform with a=sqrt(5))
    pass


@INITS.register("xavier")
def _init_xavier(layer, cfg):
    nn.init.xavier_normal_(layer.weight)
    _zero_bias(layer)


@INITS.register("he")
def _init_he(layer, cfg):
    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    _zero_bias(layer)


@INITS.register("fan_in")
def _init_fan_in(layer, cfg):
    """N(0, gain / fan_in): gain 1 is LeCun's 1/n, 2 is He's (kaiming_normal_), 4 doubles the variance a layer."""
    fan_in = layer.weight[0].numel()
    nn.init.normal_(layer.weight, std=(cfg.init_gain / fan_in) ** 0.5)
    _zero_bias(layer)


@INITS.register("normal")
def _init_normal(layer, cfg):
    nn.init.normal_(layer.weight, std=cfg.init_std)
    _zero_bias(layer)


@INITS.register("constant")
def _init_constant(layer, cfg):
    nn.init.constant_(layer.weight, cfg.init_value)
    _zero_bias(layer)


class Block(nn.Module):
    """Linear -> [batch norm] -> activation -> [dropout], with a skip connection when shapes allow."""

    def __init__(self, n_in: int, n_out: int, activation: str, batch_norm: bool, dropout: float, residual: bool):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.norm = nn.BatchNorm1d(n_out) if batch_norm else nn.Identity()
        self.activation = ACTIVATIONS.get(activation, "model.activation")
        self.act = self.activation.build()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.residual = residual and n_in == n_out

    def forward(self, x):
        h = self.drop(self.act(self.norm(self.linear(x))))
        # view_as: a no-op here; in a fused net (framework/fused.py) the first block's input is (K * B, n) rows
        # and h is (K, B, n) stacked
        return x.view_as(h) + h if self.residual else h


class MLP(nn.Module):
    def __init__(self, n_in: int, n_out: int, depth: int, width: int, activation: str = "relu",
                 residual: bool = False, batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        sizes = [n_in] + [width] * depth
        self.blocks = nn.ModuleList(
            Block(a, b, activation, batch_norm, dropout, residual) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], n_out)

    def forward(self, x):
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def _n_in(in_shape: tuple[int, ...]) -> int:
    return int(torch.Size(in_shape).numel())


@MODELS.register("mlp")
def build_mlp(cfg, in_shape: tuple[int, ...], n_out: int) -> nn.Module:
    return MLP(_n_in(in_shape), n_out, cfg.depth, cfg.width, cfg.activation, cfg.residual, cfg.batch_norm,
               cfg.dropout)


@MODELS.register("linear")
def build_linear(cfg, in_shape: tuple[int, ...], n_out: int) -> nn.Module:
    """A linear model without bias (Wilson et al. 2017's setting): w . x."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_n_in(in_shape), n_out, bias=False))


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """Weight layers from input to output: the depth axis of the gradient-norm matrix."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, FusedLinear, FusedConv2d))]


def activation_modules(model: nn.Module) -> list[tuple[nn.Module, Activation]]:
    """(module, its Activation) for every block that names one (MLP and conv blocks)."""
    return [(b.act, b.activation) for b in model.modules() if isinstance(getattr(b, "activation", None), Activation)]


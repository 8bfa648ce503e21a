"""Loss registry. Each loss takes the model's output and the batch targets (class indices or real values), and
`reduction` as torch.nn.functional does: "mean" (the default) or "none" (per row, or per element for losses on
real-valued outputs), from which a fused group takes each member's mean."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from framework.registry import Registry, UserError

LOSSES: Registry[Callable[[int], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = Registry("loss")


def _targets(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Class indices become one-hot rows for losses on real-valued outputs."""
    return F.one_hot(y, out.shape[1]).to(out.dtype) if y.dtype == torch.long else y


@LOSSES.register("cross_entropy")
def cross_entropy(n_classes: int):
    if n_classes == 0:
        raise UserError("loss.name=cross_entropy needs a classification dataset; use loss.name=mse for regression")
    return F.cross_entropy


@LOSSES.register("mse")
def mse(n_classes: int):
    return lambda out, y, reduction="mean": F.mse_loss(out, _targets(out, y), reduction=reduction)


@LOSSES.register("bce")
def bce(n_classes: int):
    if n_classes == 0:
        raise UserError("loss.name=bce needs a classification dataset; use loss.name=mse for regression")
    return lambda out, y, reduction="mean": F.binary_cross_entropy_with_logits(out, _targets(out, y),
                                                                               reduction=reduction)


@LOSSES.register("squared")
def squared(n_classes: int):
    """1/2 ||out - y||^2 per sample, the textbook's and the lecture notes' squared error: its Hessian in a linear
    model's weights is X^T X / n, with no factor 2 (mse averages over outputs and has one)."""
    def loss(out, y, reduction="mean"):
        per_row = 0.5 * (out - _targets(out, y)).pow(2).sum(1)
        return per_row.mean() if reduction == "mean" else per_row
    return loss


@LOSSES.register("sigmoid_mse")
def sigmoid_mse(n_classes: int):
    """Squared error of sigmoid outputs against one-hot targets, (sigmoid(out) - y)^2 averaged over outputs: the
    loss whose gradient a saturated sigmoid output multiplies by sigma' ~ 0 (Glorot & Bengio 2010, Sec. 4.2);
    bce is its cross-entropy counterpart on the same outputs."""
    return lambda out, y, reduction="mean": F.mse_loss(torch.sigmoid(out), _targets(out, y), reduction=reduction)

"""A run's optimizer and learning-rate schedule, built once for every way a run trains: alone (torch.optim and
its LambdaLR), in a fused group (fused_optim.MemberOptimizer, one rate a member, set each step by the group), and
in `repro bench`'s plain loop."""
from __future__ import annotations

from typing import Callable

import torch

from framework.config import RunConfig
from framework.fused_optim import MemberOptimizer
from framework.optim import OPTIMIZERS, effective_lr, lr_factor

FUSED_HPARAMS = ("momentum", "weight_decay", "beta1", "beta2", "eps")


def total_steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    """The steps a run trains for: trainer.max_steps, else its epochs x steps per epoch. Counted here, not with
    Lightning's estimated_stepping_batches: that sets up the training data before a checkpoint is restored, and
    the resumed loader would then never get its saved position back."""
    t = cfg.trainer
    return t.max_steps if t.max_steps > 0 else steps_per_epoch * t.max_epochs


def schedules(cfgs: list[RunConfig], steps_per_epoch: int) -> tuple[list[float], list[Callable[[int], float]]]:
    """Each run's peak learning rate (the linear scaling rule applied) and its factor on it at each step."""
    peaks = [effective_lr(c.optim, c.data.batch_size) for c in cfgs]
    factors = [lr_factor(c.schedule, total_steps(c, steps_per_epoch), steps_per_epoch) for c in cfgs]
    return peaks, factors


def build_optimizer(params, cfgs: list[RunConfig], steps_per_epoch: int):
    """One run: (its torch optimizer, a LambdaLR stepping its schedule). A fused group (several configs, one
    optimizer name): (a MemberOptimizer with each member's hyperparameters, None: the group sets each member's rate
    every step from `schedules`)."""
    peaks, factors = schedules(cfgs, steps_per_epoch)
    if len(cfgs) == 1:
        optimizer = OPTIMIZERS.get(cfgs[0].optim.name, "optim.name")(params, cfgs[0].optim, peaks[0])
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factors[0])
    names = {c.optim.name for c in cfgs}
    if len(names) > 1:
        raise ValueError(f"fusion: one optimizer a group, got {sorted(names)}")
    hparams = {k: [getattr(c.optim, k) for c in cfgs] for k in FUSED_HPARAMS}
    return MemberOptimizer(params, cfgs[0].optim.name, hparams, peaks), None

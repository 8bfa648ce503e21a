"""Optimizer and learning-rate schedule registries."""
from __future__ import annotations

import math
from typing import Callable

import torch

from framework.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")


def _register(name: str, build: Callable):
    OPTIMIZERS.register(name)(build)


_register("sgd", lambda p, c, lr: torch.optim.SGD(p, lr=lr, weight_decay=c.weight_decay))
_register("momentum", lambda p, c, lr: torch.optim.SGD(p, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay))
_register("nesterov", lambda p, c, lr: torch.optim.SGD(p, lr=lr, momentum=c.momentum, nesterov=True,
                                                       weight_decay=c.weight_decay))
_register("adam", lambda p, c, lr: torch.optim.Adam(p, lr=lr, betas=(c.beta1, c.beta2), eps=c.eps,
                                                    weight_decay=c.weight_decay))
_register("adamw", lambda p, c, lr: torch.optim.AdamW(p, lr=lr, betas=(c.beta1, c.beta2), eps=c.eps,
                                                      weight_decay=c.weight_decay))
# Loshchilov & Hutter 2019's AdamW (Algorithm 2): theta <- theta - eta_t (alpha adam_step + lambda theta), the decay
# scaled by the schedule multiplier eta_t only. torch's AdamW scales it by the learning rate alpha eta_t, so it gets
# lambda / alpha (torch_decay): the same update, with optim.weight_decay meaning the paper's lambda.
_register("adamw_decoupled", lambda p, c, lr: torch.optim.AdamW(p, lr=lr, betas=(c.beta1, c.beta2), eps=c.eps,
                                                                weight_decay=torch_decay(c.name, c.weight_decay, lr)))
_register("rmsprop", lambda p, c, lr: torch.optim.RMSprop(p, lr=lr, eps=c.eps, momentum=c.momentum,
                                                          weight_decay=c.weight_decay))
_register("adagrad", lambda p, c, lr: torch.optim.Adagrad(p, lr=lr, eps=c.eps, weight_decay=c.weight_decay))


def torch_decay(name: str, weight_decay: float, lr: float) -> float:
    """The weight_decay torch's update rule gets for optim.weight_decay at peak learning rate lr."""
    if name == "adamw_decoupled" and weight_decay:
        return weight_decay / lr
    return weight_decay


def effective_lr(optim_cfg, batch_size: int) -> float:
    """The linear scaling rule (Goyal et al. 2017) as a first-class option: lr * B / B_base."""
    if optim_cfg.base_batch_size > 0:
        return optim_cfg.lr * batch_size / optim_cfg.base_batch_size
    return optim_cfg.lr


# A schedule maps (step, total steps, steps per epoch, cfg) to a factor on the peak learning rate.
SCHEDULES: Registry[Callable[[int, int, int, object], float]] = Registry("schedule")
SCHEDULES.register("constant")(lambda t, total, per_epoch, c: 1.0)
SCHEDULES.register("step")(lambda t, total, per_epoch, c: c.gamma ** math.floor(t / max(1.0, c.step_epochs * per_epoch)))
SCHEDULES.register("cosine")(lambda t, total, per_epoch, c: c.final_fraction + (1 - c.final_fraction) * 0.5
                             * (1 + math.cos(math.pi * min(1.0, t / max(1, total)))))
SCHEDULES.register("linear")(lambda t, total, per_epoch, c: 1 - (1 - c.final_fraction) * min(1.0, t / max(1, total)))
SCHEDULES.register("inverse_time")(lambda t, total, per_epoch, c: c.time_constant / (c.time_constant + t))


def lr_factor(schedule_cfg, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up (from 1/W of the peak) for W steps, then the named schedule over the remaining steps."""
    base = SCHEDULES.get(schedule_cfg.name, "schedule.name")
    warmup = int(round(schedule_cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return base(step - warmup, max(1, total_steps - warmup), steps_per_epoch, schedule_cfg)
    return factor

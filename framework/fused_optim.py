"""Batched optimizers for fused groups: every parameter is a stack of K members' parameters (dim 0), and every
hyperparameter is a (K,) tensor, one value a member. Each rule is torch.optim's update written out per member
(tests/test_fused.py checks them step by step against torch.optim): torch.optim has no per-member
hyperparameters, so these are by hand. A member whose `active` entry is False is frozen: its parameters and
optimizer state stay as they are (a diverged or early-stopped run inside a group that goes on)."""
from __future__ import annotations

from typing import Callable

import torch

from framework.optim import torch_decay
from framework.registry import Registry

# name -> (hyperparameters it reads from OptimConfig, its update rule)
FUSED_OPTIMIZERS: Registry[tuple[tuple[str, ...], Callable]] = Registry("fused optimizer")


def _b(h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A (K,) hyperparameter shaped to broadcast over a stacked parameter (K, ...)."""
    return h.view(-1, *([1] * (p.dim() - 1)))


def _bs(h: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """_b for every parameter, one view per distinct number of dims (a hundred views a step cost ~1 ms)."""
    views = {d: h.view(-1, *([1] * (d - 1))) for d in {p.dim() for p in params}}
    return [views[p.dim()] for p in params]


def _decay(p, g, h):
    """L2 weight decay added to the gradient (torch.optim's weight_decay), skipped when every member has none."""
    return g + _b(h["weight_decay"], p) * p if h["any_decay"] else g


def _sgd(p, g, state, h, nesterov=False):
    g = _decay(p, g, h)
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(p)
    buf = state["momentum_buffer"]
    buf.mul_(_b(h["momentum"], p)).add_(g)
    step = g + _b(h["momentum"], p) * buf if nesterov else buf
    return p - _b(h["lr"], p) * step


def _adam(p, g, state, h, decoupled=False):
    if decoupled:
        p = p * (1 - _b(h["lr"] * h["weight_decay"], p))
    else:
        g = _decay(p, g, h)
    if "step" not in state:
        state.update(step=torch.zeros(p.shape[0], device=p.device), exp_avg=torch.zeros_like(p),
                     exp_avg_sq=torch.zeros_like(p))
    state["step"] += h["active"].to(state["step"].dtype)  # a frozen member's step count stays
    t = state["step"].clamp(min=1)
    b1, b2 = _b(h["beta1"], p), _b(h["beta2"], p)
    state["exp_avg"].mul_(b1).add_((1 - b1) * g)
    state["exp_avg_sq"].mul_(b2).add_((1 - b2) * g * g)
    bias1, bias2_sqrt = 1 - h["beta1"] ** t, (1 - h["beta2"] ** t).sqrt()
    denom = state["exp_avg_sq"].sqrt() / _b(bias2_sqrt, p) + _b(h["eps"], p)
    return p - _b(h["lr"] / bias1, p) * state["exp_avg"] / denom


def _rmsprop(p, g, state, h, alpha=0.99):  # torch.optim.RMSprop's default alpha, not centered
    g = _decay(p, g, h)
    if "square_avg" not in state:
        state.update(square_avg=torch.zeros_like(p), momentum_buffer=torch.zeros_like(p))
    state["square_avg"].mul_(alpha).add_((1 - alpha) * g * g)
    avg = state["square_avg"].sqrt() + _b(h["eps"], p)
    buf = state["momentum_buffer"]
    buf.mul_(_b(h["momentum"], p)).add_(g / avg)
    return p - _b(h["lr"], p) * buf


def _adagrad(p, g, state, h):
    g = _decay(p, g, h)
    if "sum" not in state:
        state["sum"] = torch.zeros_like(p)
    state["sum"].add_(g * g)
    return p - _b(h["lr"], p) * g / (state["sum"].sqrt() + _b(h["eps"], p))


def _descend(params, step, lr, inplace):
    """params - lr * step: in place when every member is active (p + (-1) * step * lr rounds as p - lr * step),
    else the new values, which MemberOptimizer.step keeps for the active members only."""
    if inplace:
        torch._foreach_addcmul_(params, step, lr, value=-1)
        return None
    return torch._foreach_sub(params, torch._foreach_mul(step, lr))


def sgd_foreach(params, grads, states, h, nesterov=False, inplace=False) -> list[torch.Tensor] | None:
    """_sgd over every parameter at once (torch._foreach_*, broadcasting the (K,) values): the same arithmetic in
    a few calls, where a small net's hundred parameters would cost hundreds of Python-level ops a step."""
    mom = _bs(h["momentum"], params)
    if h["any_decay"]:
        grads = torch._foreach_add(grads, torch._foreach_mul(params, _bs(h["weight_decay"], params)))
    for s, p in zip(states, params):
        if "momentum_buffer" not in s:  # not setdefault: its argument, a zeroed buffer, would be made every step
            s["momentum_buffer"] = torch.zeros_like(p)
    bufs = [s["momentum_buffer"] for s in states]
    torch._foreach_mul_(bufs, mom)
    torch._foreach_add_(bufs, grads)
    step = torch._foreach_add(grads, torch._foreach_mul(bufs, mom)) if nesterov else bufs
    return _descend(params, step, _bs(h["lr"], params), inplace)


def adam_foreach(params, grads, states, h, decoupled=False, inplace=False) -> list[torch.Tensor] | None:
    """_adam over every parameter at once: measured, a fused group of 1-hidden-layer nets spent 1.3 ms a step in
    the per-parameter loop."""
    if decoupled:
        shrink = _bs(1 - h["lr"] * h["weight_decay"], params)
        if inplace:
            torch._foreach_mul_(params, shrink)
        else:
            params = torch._foreach_mul(params, shrink)
    elif h["any_decay"]:
        grads = torch._foreach_add(grads, torch._foreach_mul(params, _bs(h["weight_decay"], params)))
    for s, p in zip(states, params):
        if "step" not in s:
            s.update(step=torch.zeros(p.shape[0], device=p.device), exp_avg=torch.zeros_like(p),
                     exp_avg_sq=torch.zeros_like(p))
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, [h["active"].to(steps[0].dtype)] * len(steps))  # a frozen member's count stays
    t = steps[0].clamp(min=1)
    m, v = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
    torch._foreach_mul_(m, _bs(h["beta1"], params))
    torch._foreach_add_(m, torch._foreach_mul(grads, _bs(1 - h["beta1"], params)))
    torch._foreach_mul_(v, _bs(h["beta2"], params))
    torch._foreach_add_(v, torch._foreach_mul(torch._foreach_mul(grads, _bs(1 - h["beta2"], params)),
                                              grads))
    bias1, bias2_sqrt = 1 - h["beta1"] ** t, (1 - h["beta2"] ** t).sqrt()
    denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(v), _bs(bias2_sqrt, params)),
                               _bs(h["eps"], params))
    step = torch._foreach_div(torch._foreach_mul(m, _bs(h["lr"] / bias1, params)), denom)
    if inplace:
        torch._foreach_sub_(params, step)
        return None
    return torch._foreach_sub(params, step)


FOREACH = {"sgd": lambda ps, gs, ss, h, **kw: sgd_foreach(ps, gs, ss, {**h, "momentum": h["zero"]}, **kw),
           "momentum": sgd_foreach, "nesterov": lambda ps, gs, ss, h, **kw: sgd_foreach(ps, gs, ss, h, True, **kw),
           "adam": adam_foreach,
           "adamw": lambda ps, gs, ss, h, **kw: adam_foreach(ps, gs, ss, h, decoupled=True, **kw)}
FOREACH["adamw_decoupled"] = FOREACH["adamw"]  # with torch's weight_decay (MemberOptimizer converts it)


FUSED_OPTIMIZERS.register("sgd")((("weight_decay",), lambda p, g, s, h: _sgd(p, g, s, {**h, "momentum": h["zero"]})))
FUSED_OPTIMIZERS.register("momentum")((("momentum", "weight_decay"), _sgd))
FUSED_OPTIMIZERS.register("nesterov")((("momentum", "weight_decay"), lambda p, g, s, h: _sgd(p, g, s, h, True)))
FUSED_OPTIMIZERS.register("adam")((("beta1", "beta2", "eps", "weight_decay"), _adam))
FUSED_OPTIMIZERS.register("adamw")((("beta1", "beta2", "eps", "weight_decay"),
                                    lambda p, g, s, h: _adam(p, g, s, h, decoupled=True)))
FUSED_OPTIMIZERS.register("adamw_decoupled")(FUSED_OPTIMIZERS.get("adamw", "optim.name"))
FUSED_OPTIMIZERS.register("rmsprop")((("momentum", "eps", "weight_decay"), _rmsprop))
FUSED_OPTIMIZERS.register("adagrad")((("eps", "weight_decay"), _adagrad))


class MemberOptimizer(torch.optim.Optimizer):
    """One optimizer over stacked parameters with per-member hyperparameters (`hparams`: name -> (K,) values, as
    OptimConfig states them) and per-member peak learning rates `lr`, set each step with `set_lr`. `active`: (K,)
    bool, False freezes a member."""

    def __init__(self, params, name: str, hparams: dict[str, list[float]], lr: list[float]):
        keys, self.rule = FUSED_OPTIMIZERS.get(name, "optim.name")
        self.foreach = FOREACH.get(name)
        k = len(lr)
        hparams = {**hparams, "weight_decay": [torch_decay(name, wd, peak) for wd, peak in
                                               zip(hparams.get("weight_decay", [0.0] * k), lr)]}
        defaults = {key: torch.tensor(hparams[key], dtype=torch.float32) for key in keys}
        defaults.update(lr=torch.tensor(lr, dtype=torch.float32), active=torch.ones(k, dtype=torch.bool),
                        zero=torch.zeros(k))
        super().__init__(params, defaults)
        self.any_decay = any(wd != 0 for wd in hparams["weight_decay"])  # fixed: no host sync a step to learn it

    def set_lr(self, lr: list[float] | torch.Tensor) -> None:
        for group in self.param_groups:
            group["lr"] = torch.as_tensor(lr, dtype=torch.float32)

    def _all_active(self, active: torch.Tensor) -> bool:
        """Whether no member is frozen, read from the device once per `active` tensor (freeze and a checkpoint's
        load make new ones): a read every step would wait for the GPU to finish the step's work."""
        if getattr(self, "_active_seen", (None, None))[0] is not active:
            self._active_seen = (active, bool(active.all()))
        return self._active_seen[1]

    def freeze(self, member: int) -> None:
        for group in self.param_groups:
            group["active"] = group["active"].clone()
            group["active"][member] = False

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            device = params[0].device
            h = {k: v.to(device) for k, v in group.items() if isinstance(v, torch.Tensor)}
            h["any_decay"] = self.any_decay
            every = self._all_active(group["active"])
            if self.foreach is not None:
                new = self.foreach(params, [p.grad for p in params], [self.state[p] for p in params], h,
                                   inplace=every)
                if new is None:
                    continue
            else:
                new = [self.rule(p, p.grad, self.state[p], h) for p in params]
            if every:
                torch._foreach_copy_(params, new)
            else:
                for p, n in zip(params, new):
                    p.copy_(torch.where(_b(h["active"], p), n, p))
        return None

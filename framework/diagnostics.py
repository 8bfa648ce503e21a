"""Training diagnostics every N steps: per-layer weight-gradient and weight norms, and per hidden layer the
back-propagated gradient norm ||dL/da|| (Glorot & Bengio 2010, Fig. 7; He et al. 2015, Eq. 14), the activation
variance Var(a) (Glorot & Bengio, Fig. 6; He et al., Eq. 10), the saturated fraction of units, and how far a
layer's units are from being copies of one another (unit_spread: the largest difference between a unit's incoming
weights and the first unit's; 0 while a symmetric initialisation is unbroken).

Scalars go to the loggers that take many keys (W&B); the layer x step matrix is kept for figures and saved
to the run store. Norms are measured after backward and before the optimizer step (and before clipping).
"""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from framework.models import activation_modules, linear_layers


class Diagnostics(pl.Callback):
    def __init__(self, every_n_steps: int = 10, saturation_threshold: float = 0.05):
        self.every = every_n_steps
        self.threshold = saturation_threshold
        self.measured: list[tuple] = []  # (step, member, layers, activation layers, the values: see _rows)
        self._capture = False
        self._outputs: dict[int, tuple] = {}
        self._act_grad: dict[int, torch.Tensor] = {}
        self._hooks = []

    def on_fit_start(self, trainer, pl_module):
        # a fused group (framework/fused.py) stacks its K members' weights on dim 0 and their rows on the batch
        # dimension; each member's norms and saturation are measured on its own slice and go to its own loggers
        self.k = getattr(pl_module, "k", 1)
        self._member_loggers = [m.loggers for m in pl_module.members] if self.k > 1 else [trainer.loggers]
        self._layers = linear_layers(pl_module.net)
        # a Python hook with a host sync would break a compiled graph: no saturation under torch.compile
        self._activations = [] if pl_module.cfg.trainer.compile else activation_modules(pl_module.net)

    def _saturation_hook(self, index, act):
        def hook(module, inputs, output):
            if self._capture:  # kept for on_after_backward, which measures every layer at once
                self._outputs[index] = (act, inputs[0].detach(), output.detach())
                if output.requires_grad:  # dL/da arrives in backward
                    output.register_hook(lambda grad: self._act_grad.__setitem__(index, grad.detach()))
        return hook

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._capture = trainer.global_step % self.every == 0
        self._outputs, self._act_grad = {}, {}
        if self._capture:  # hooks only on the measured steps: 50 Python hooks cost a deep net 0.2 ms a step
            self._hooks = [module.register_forward_hook(self._saturation_hook(i, act))
                           for i, (module, act) in enumerate(self._activations)]

    def on_after_backward(self, trainer, pl_module):
        if not self._capture:
            return
        self._remove_hooks()
        step = trainer.global_step
        # layers of one shape are measured together, stacked (a 16 x 50-layer fused net: ~20 ops a measured
        # step instead of ~600, 40 ms -> a few), and every value of the step comes off the device in one read
        k = self.k
        nan = torch.full((k,), float("nan"), device=pl_module.device)  # the norm of a layer without a gradient
        with_grad = {i: layer.weight.grad for i, layer in enumerate(self._layers) if layer.weight.grad is not None}
        grads = _by_shape(with_grad, lambda g: _members(g, k).norm(dim=2))
        weight = {i: layer.weight.detach() for i, layer in enumerate(self._layers)}
        weights = _by_shape(weight, lambda w: _members(w, k).norm(dim=2))
        spreads = {}  # rows keep their order here: a plain stack
        for idx in _shape_groups(weight):
            spreads.update(zip(idx, unit_spread(torch.stack([weight[i] for i in idx]), k)))
        acts = sorted(self._outputs)
        sat, act_var = {}, {}
        for act in {id(a): a for a, _, _ in self._outputs.values()}.values():
            mine = [i for i in acts if self._outputs[i][0] is act]
            for idx in _shape_groups({i: self._outputs[i][2] for i in mine}):  # an input has its output's shape
                y = _stack([self._outputs[i][2] for i in idx])
                x = _stack([self._outputs[i][1] for i in idx]) if act.reads_input else y
                low = act.slope(x, y).lt_(self.threshold * act.max_slope)  # 1.0 where saturated, in place
                sat.update(zip(idx, _members(low, k).mean(dim=2)))
                act_var.update(zip(idx, _variance_(_members(y, k))))  # last: it centres y in place
        act_grad = _by_shape(self._act_grad, lambda g: _members(g, k).norm(dim=2))
        n_layers = range(len(self._layers))
        values = torch.stack([*(grads.get(i, nan) for i in n_layers), *(weights[i] for i in n_layers),
                              *(sat[i] for i in acts), *(act_var[i] for i in acts),
                              *(act_grad.get(i, nan) for i in acts), *(spreads[i] for i in n_layers)]).T.tolist()
        self._outputs, self._act_grad = {}, {}
        n = len(self._layers)
        for member in (range(k) if k == 1 else pl_module.active):
            # kept as measured; rows are made once, at the end (800 dicts a measured step cost a fused net 6 ms)
            self.measured.append((step, member, n, tuple(acts), values[member]))
            wandb = [lg for lg in self._member_loggers[member] if isinstance(lg, WandbLogger)]
            if wandb:
                scalars = _scalars(_rows(step, n, acts, values[member]))
                for logger in wandb:
                    hide_per_layer(logger)
                    logger.log_metrics(scalars, step=step)
        self._capture = False

    def member_rows(self, member: int) -> list[dict]:
        """The rows of one member of the fit (member 0 of a single run): step, layer, grad_norm, weight_norm,
        saturation, act_var, act_grad_norm, unit_spread."""
        return [row for step, m, n, acts, v in self.measured if m == member for row in _rows(step, n, acts, v)]

    # the measurements travel in checkpoints, so a resumed run keeps the matrix measured before it stopped
    def state_dict(self):
        return {"measured": self.measured}

    def load_state_dict(self, state):
        self.measured = [tuple(m) for m in state.get("measured", [])]

    def _remove_hooks(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def on_fit_end(self, trainer, pl_module):
        self._remove_hooks()


PER_LAYER = ("grad_norm/*", "weight_norm/*", "saturation/*")


def hide_per_layer(logger) -> None:
    """The per-layer keys (~100 for a 50-layer net) stay in the run's history but out of W&B's default panels:
    defined hidden once per logger (a logger is one W&B run; an id() of a collected run could be reused);
    the diag/ summaries stay visible."""
    if getattr(logger, "repro_per_layer_hidden", False):
        return
    for pattern in PER_LAYER:
        logger.experiment.define_metric(pattern, hidden=True)
    logger.repro_per_layer_hidden = True


def _rows(step: int, n: int, acts: tuple, v: list) -> list[dict]:
    """A measured step's rows, a layer each, from its values: n gradient norms, n weight norms, then per
    activation layer its saturation, variance and gradient norm, then n unit spreads."""
    a, nan = len(acts), float("nan")
    saturation = dict(zip(acts, v[2 * n:2 * n + a]))
    act_var = dict(zip(acts, v[2 * n + a:2 * n + 2 * a]))
    act_grad = dict(zip(acts, v[2 * n + 2 * a:2 * n + 3 * a]))
    return [{"step": step, "layer": i, "grad_norm": v[i], "weight_norm": v[n + i],
             "saturation": saturation.get(i, nan), "act_var": act_var.get(i, nan),
             "act_grad_norm": act_grad.get(i, nan), "unit_spread": v[2 * n + 3 * a + i]} for i in range(n)]


def _scalars(rows: list[dict]) -> dict[str, float]:
    """A measured step's scalars for W&B."""
    scalars = {}
    for r in rows:
        scalars[f"grad_norm/layer_{r['layer']:02d}"] = r["grad_norm"]
        scalars[f"weight_norm/layer_{r['layer']:02d}"] = r["weight_norm"]
    saturation = [r["saturation"] for r in rows if not math.isnan(r["saturation"])]
    for r in rows:
        if not math.isnan(r["saturation"]):
            scalars[f"saturation/layer_{r['layer']:02d}"] = r["saturation"]
    if saturation:
        scalars["diag/saturation_mean"] = sum(saturation) / len(saturation)
    scalars["diag/grad_norm_first"] = rows[0]["grad_norm"]
    scalars["diag/grad_norm_last"] = rows[-1]["grad_norm"]
    return scalars


def _shape_groups(tensors: dict[int, torch.Tensor]) -> list[list[int]]:
    """The keys of `tensors` grouped by shape (and dtype), each group in key order."""
    groups: dict[tuple, list[int]] = {}
    for i in sorted(tensors):
        groups.setdefault((tuple(tensors[i].shape), tensors[i].dtype), []).append(i)
    return list(groups.values())


def _by_shape(tensors: dict[int, torch.Tensor], fn) -> dict[int, torch.Tensor]:
    """fn of each tensor, computed once per shape on the stack (L, ...) of that shape's tensors: by hand, as no
    library batches a reduction over a list of tensors by member (torch._foreach_norm takes whole tensors)."""
    out: dict[int, torch.Tensor] = {}
    for idx in _shape_groups(tensors):
        out.update(zip(idx, fn(_stack([tensors[i] for i in idx]))))
    return out


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors (of one shape) stacked on a new dim 0, each in its memory order: every statistic here reduces
    over all of a member's values, so their order is free, and a fused linear layer's (K, B, F) output is a view
    of (K, F, B), which stacks 5x faster as the latter."""
    t = tensors[0]
    order = [0, *sorted(range(1, t.dim()), key=lambda d: -t.stride(d))] if t.dim() > 1 else [0]
    return torch.stack([t.permute(order) for t in tensors])


def _variance_(v: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the last dim in two passes, centring `v` in place (a copy of ours): torch's var
    (Welford) is 7x slower on the CPU, and each fresh 4 MB temporary costs a thousand page faults."""
    d = v.sub_(v.mean(dim=-1, keepdim=True))
    return torch.linalg.vecdot(d, d) / (v.shape[-1] - 1)


def _members(t: torch.Tensor, k: int) -> torch.Tensor:
    """(L, K, n): each stacked layer's values per member. A fused layer's tensors stack the K members on their
    first dim; an unfused one is one member."""
    return t.reshape(t.shape[0], k, -1)


def unit_spread(weight: torch.Tensor, k: int) -> torch.Tensor:
    """max |w_u - w_0| over a layer's units u (rows of a linear layer, output channels of a conv), per member,
    of a stack of L layers' weights: (L, K, out, ...) fused, (L, out, ...) unfused; returns (L, K)."""
    units = weight.shape[2] if k > 1 else weight.shape[1]
    rows = weight.reshape(weight.shape[0], k, units, -1)
    return (rows - rows[:, :, :1]).abs().amax(dim=(2, 3))

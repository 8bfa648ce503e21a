"""Training diagnostics every N steps: per-layer weight-gradient and weight norms, and per hidden layer the
back-propagated gradient norm ||dL/da|| (Glorot & Bengio 2010, Fig. 7; He et al. 2015, Eq. 14), the activation
variance Var(a) (Glorot & Bengio, Fig. 6; He et al., Eq. 10), the saturated fraction of units, and how far a
layer's units are from being copies of one another (unit_spread: the largest difference between a unit's incoming
weights and the first unit's; 0 while a symmetric initialisation is unbroken).

Scalars go to the loggers that take many keys (W&B); the layer x step matrix is kept for figures and saved
to the run store. Norms are measured after backward and before the optimizer step (and before clipping).
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from framework.models import activation_modules, linear_layers


class Diagnostics(pl.Callback):
    def __init__(self, every_n_steps: int = 10, saturation_threshold: float = 0.05):
        self.every = every_n_steps
        self.threshold = saturation_threshold
        self.rows: list[dict] = []  # long format: step, layer, grad_norm, weight_norm, saturation, act_*
        self._capture = False
        self._saturation: dict[int, float] = {}
        self._act_var: dict[int, torch.Tensor] = {}
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
            if self._capture:
                slope = act.slope(inputs[0].detach(), output.detach())
                low = (slope < self.threshold * act.max_slope).float()
                self._saturation[index] = _per_member(low, self.k).mean(1)  # read later
                self._act_var[index] = _per_member(output.detach(), self.k).var(dim=1)
                if output.requires_grad:  # dL/da arrives in backward: each member's own slice of the rows
                    def grad_hook(grad):
                        self._act_grad[index] = _per_member(grad.detach(), self.k).norm(dim=1)
                    output.register_hook(grad_hook)
        return hook

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._capture = trainer.global_step % self.every == 0
        self._saturation, self._act_var, self._act_grad = {}, {}, {}
        if self._capture:  # hooks only on the measured steps: 50 Python hooks cost a deep net 0.2 ms a step
            self._hooks = [module.register_forward_hook(self._saturation_hook(i, act))
                           for i, (module, act) in enumerate(self._activations)]

    def on_after_backward(self, trainer, pl_module):
        if not self._capture:
            return
        self._remove_hooks()
        step = trainer.global_step
        # every norm and saturation of the step in one read from the device: per-value reads cost a 50-layer
        # net about a millisecond per measured step
        k = self.k
        nan = torch.full((k,), float("nan"), device=pl_module.device)  # the norm of a layer without a gradient
        per_member = lambda t: t.reshape(k, -1).norm(dim=1)  # noqa: E731 - one norm per member
        grads = [nan if layer.weight.grad is None else per_member(layer.weight.grad) for layer in self._layers]
        weights = [per_member(layer.weight.detach()) for layer in self._layers]
        spreads = [unit_spread(layer.weight.detach(), k) for layer in self._layers]
        acts = sorted(self._saturation)
        act_grads = [self._act_grad.get(i, nan) for i in acts]
        values = torch.stack([*grads, *weights, *(self._saturation[i] for i in acts),
                              *(self._act_var[i] for i in acts), *act_grads, *spreads]).T.tolist()
        n, a = len(self._layers), len(acts)
        active = [i for i in range(k)] if k == 1 else pl_module.active
        for member in active:
            v = values[member]
            grad_norm, weight_norm = v[:n], v[n:2 * n]
            saturation = dict(zip(acts, v[2 * n:2 * n + a]))
            act_var = dict(zip(acts, v[2 * n + a:2 * n + 2 * a]))
            act_grad = dict(zip(acts, v[2 * n + 2 * a:2 * n + 3 * a]))
            spread = v[2 * n + 3 * a:]
            scalars = {}
            for i in range(n):
                row = {"step": step, "layer": i, "grad_norm": grad_norm[i], "weight_norm": weight_norm[i],
                       "saturation": saturation.get(i, float("nan")), "act_var": act_var.get(i, float("nan")),
                       "act_grad_norm": act_grad.get(i, float("nan")), "unit_spread": spread[i]}
                self.rows.append({**row, "member": member})
                scalars[f"grad_norm/layer_{i:02d}"] = row["grad_norm"]
                scalars[f"weight_norm/layer_{i:02d}"] = row["weight_norm"]
                if i in saturation:
                    scalars[f"saturation/layer_{i:02d}"] = row["saturation"]
            if saturation:
                scalars["diag/saturation_mean"] = sum(saturation.values()) / len(saturation)
            scalars["diag/grad_norm_first"] = grad_norm[0]
            scalars["diag/grad_norm_last"] = grad_norm[-1]
            for logger in self._member_loggers[member]:
                if isinstance(logger, WandbLogger):
                    logger.log_metrics(scalars, step=step)
        self._capture = False

    def member_rows(self, member: int) -> list[dict]:
        """The rows of one member of the fit (member 0 of a single run), without the member column."""
        return [{k: v for k, v in r.items() if k != "member"} for r in self.rows if r.get("member", 0) == member]

    # rows travel in checkpoints, so a resumed run keeps the matrix measured before it stopped
    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state):
        self.rows = list(state.get("rows", []))

    def _remove_hooks(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def on_fit_end(self, trainer, pl_module):
        self._remove_hooks()


def _per_member(t: torch.Tensor, k: int) -> torch.Tensor:
    """(K, n): each member's values of a layer's output. A fused linear layer's output is (K, B, F), a view of
    (K, F, B): flattened in that order, not copied to rows (the same values; the copies cost a 16 x 50-layer
    fused net 8 ms a measured step)."""
    if k > 1 and t.dim() == 3 and t.shape[0] == k:
        t = t.transpose(1, 2)
    return t.reshape(k, -1)


def unit_spread(weight: torch.Tensor, k: int) -> torch.Tensor:
    """max |w_u - w_0| over a layer's units u (rows of a linear layer, output channels of a conv), per member.
    A fused layer's weight stacks its members on dim 0: (K, out, ...); an unfused one is (out, ...)."""
    rows = weight.reshape(k, weight.shape[1] if k > 1 else weight.shape[0], -1)
    return (rows - rows[:, :1]).abs().amax(dim=(1, 2))

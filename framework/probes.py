"""Probes every diagnostics.probe_every steps, measured before that step's update on a fixed probe set (the
first diagnostics.probe_samples training samples) with the net in eval mode (batch norm's running statistics,
no dropout): the probe-set loss, and when asked the gradient noise scale B_simple (framework/gradstats.py) and
the top Hessian eigenvalue (framework/curvature.py), the minibatch gradient's variance E|g_B - G|^2 at the
batch sizes diagnostics.variance_batches, and with diagnostics.probe_test the whole validation and test splits'
loss and error.

Each probe is a scalar per member, logged to the member's loggers (metrics.csv and W&B) as probe/loss,
probe/noise_scale, probe/grad_sq, probe/trace_cov, probe/sharpness, probe/minibatch_var@B and probe/{val,test}_{loss,error}. A fused group (framework/fused.py) is
probed member by member: each member's weights are copied into its own net, which is probed as an unfused run's
would be. Probes draw from their own generator, never from the training's random streams, so turning them on
changes no trained number.
"""
from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch

from framework.curvature import top_eigenvalue
from framework.gradstats import gradient_moments, minibatch_variance

VARIANCE_DRAWS = 32  # minibatches drawn per batch size for E|g_B - G|^2


class Probes(pl.Callback):
    def __init__(self, cfg, members: list):
        """cfg: DiagnosticsConfig; members: (the member's ReproModule, its splits, its loggers) in fit order."""
        self.cfg, self.members = cfg, members
        self._vectors: dict[int, list] = {}
        # one generator per member, each seeded as a lone run's: a member draws what its unfused run draws
        self._generators = [torch.Generator().manual_seed(0) for _ in members]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if step % self.cfg.probe_every:
            return
        fused = len(self.members) > 1
        active = pl_module.active if fused else [0]
        for i in active:
            module, splits, loggers = self.members[i]
            if fused:
                module = pl_module.load_member(i)
            metrics = self.measure(i, module, splits, pl_module.device)
            for logger in loggers:
                logger.log_metrics(metrics, step=step)

    # the warm-start vectors and the generator travel in checkpoints: a resumed run probes as an uninterrupted one
    def state_dict(self):
        return {"vectors": {str(k): [t.cpu() for t in v] for k, v in self._vectors.items()},
                "generators": [g.get_state() for g in self._generators]}

    def load_state_dict(self, state):
        self._vectors = {int(k): v for k, v in state.get("vectors", {}).items()}
        for g, saved in zip(self._generators, state.get("generators", [])):
            g.set_state(saved)

    def measure(self, i: int, module, splits, device) -> dict[str, float]:
        n = self.cfg.probe_samples or len(splits.x_train)
        x, y = splits.x_train[:n].to(device), splits.y_train[:n].to(device)
        net, loss_fn = module.net.to(device), module.loss_fn
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                out = {"probe/loss": float(loss_fn(net(x), y))}
            if self.cfg.noise_scale:
                m = gradient_moments(net, loss_fn, x, y)
                out.update({"probe/noise_scale": m["noise_scale"], "probe/grad_sq": m["grad_sq_unbiased"],
                            "probe/trace_cov": m["trace_cov"]})
            for b in self.cfg.variance_batches:
                if b < len(x):
                    out[f"probe/minibatch_var@{b}"] = minibatch_variance(net, loss_fn, x, y, b, VARIANCE_DRAWS,
                                                                        self._generators[i])
            if self.cfg.sharpness:
                start = self._vectors.get(i)
                start = None if start is None else [t.to(device) for t in start]
                value, self._vectors[i] = top_eigenvalue(net, loss_fn, x, y, self.cfg.power_iters, start,
                                                         self._generators[i])
                out["probe/sharpness"] = value
            # held-out curves at the probe's step (early stopping, Prechelt 1998); last, because evaluate puts the
            # module back in the mode it found it in (training), which the probes above must not run in
            if self.cfg.probe_test:
                for split in ("val", "test"):
                    xs, ys = getattr(splits, f"x_{split}"), getattr(splits, f"y_{split}")
                    if len(xs):
                        r = module.to(device).evaluate(xs, ys)
                        out[f"probe/{split}_loss"] = r["loss"]
                        if "error" in r:
                            out[f"probe/{split}_error"] = r["error"]
        finally:
            net.train(was_training)
            net.zero_grad(set_to_none=True)
        return out


def final_probes(module, splits, cfg, device) -> dict[str, float]:
    """The trained net, measured once at the end on the probe set: its parameters' L2 norm (final_weight_norm);
    with cfg.final_sharpness its top Hessian eigenvalue (final_sharpness); with cfg.reparam_scale = a the same net
    with its first weight layer (weights and bias) times a and the next layer's weights over a: for a ReLU net the
    same function (Dinh et al. 2017, Sec. 4), measured as final_sharpness_reparam and test_error_reparam."""
    from framework.models import linear_layers
    net = module.net.to(device)
    out = {"final_weight_norm": float(torch.sqrt(sum(p.detach().pow(2).sum() for p in net.parameters())))}
    if not (cfg.final_sharpness or cfg.reparam_scale > 0):
        return out
    n = cfg.probe_samples or len(splits.x_train)
    x, y = splits.x_train[:n].to(device), splits.y_train[:n].to(device)
    nets = {"": net}
    if cfg.reparam_scale > 0:
        twin = copy.deepcopy(net)
        first, second = linear_layers(twin)[:2]
        with torch.no_grad():
            first.weight.mul_(cfg.reparam_scale)
            if first.bias is not None:
                first.bias.mul_(cfg.reparam_scale)
            second.weight.div_(cfg.reparam_scale)
        nets["_reparam"] = twin
        module.net = twin  # evaluated exactly as the trained net is (module.evaluate), then put back
        try:
            held_out = module.evaluate(splits.x_test, splits.y_test) if len(splits.x_test) else {}
        finally:
            module.net = net
        out["test_error_reparam"] = held_out.get("error", float("nan"))
        out["test_loss_reparam"] = held_out.get("loss", float("nan"))
    for suffix, n_ in nets.items():
        was_training = n_.training
        n_.eval()
        try:
            value, _ = top_eigenvalue(n_, module.loss_fn, x, y, cfg.power_iters, None,
                                      torch.Generator().manual_seed(0))
            out[f"final_sharpness{suffix}"] = value
        finally:
            n_.train(was_training)
            n_.zero_grad(set_to_none=True)
    return out

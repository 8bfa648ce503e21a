"""The SGD lessons' measuring instruments: per-example gradients, the noise scale, Hessian eigenvalues, the
quadratic with a prescribed spectrum, steps-to-target, and the probes inside real (fused and unfused) runs."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from framework.config import DataConfig, ModelConfig, RunConfig
from framework.curvature import full_hessian, top_eigenvalue
from framework.data import Splits, TensorDataModule, build_splits
from framework.diagnostics import Diagnostics
from framework.gradstats import gradient_moments, minibatch_variance, per_example_grads
from framework.losses import LOSSES
from framework.models import activation_modules, linear_layers
from framework.module import build_module
from framework.nets import build_model
from framework.overrides import apply
from framework.results.measures import epochs_to_target, steps_to_target
from framework.runner import train, train_group
from framework.store import RunStore


def tiny_net(seed=0, activation="tanh"):
    torch.manual_seed(seed)
    return build_model(ModelConfig(depth=2, width=5, activation=activation), (4,), 3)


def test_per_example_gradients_equal_one_backward_per_sample():
    net, loss_fn = tiny_net(), LOSSES.get("cross_entropy")(3)
    x, y = torch.randn(7, 4), torch.randint(0, 3, (7,))
    grads = per_example_grads(net, loss_fn, x, y)
    for i in range(7):
        net.zero_grad()
        loss_fn(net(x[i:i + 1]), y[i:i + 1]).backward()
        for name, p in net.named_parameters():
            torch.testing.assert_close(grads[name][i], p.grad, rtol=1e-5, atol=1e-7)


def test_noise_scale_is_trace_of_covariance_over_squared_mean_gradient():
    net, loss_fn = tiny_net(1), LOSSES.get("cross_entropy")(3)
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    m = gradient_moments(net, loss_fn, x, y, chunk=16)  # chunks smaller than n: the sums must add up
    g = torch.cat([v.reshape(50, -1) for v in per_example_grads(net, loss_fn, x, y).values()], 1).double()
    trace = float(g.var(0, unbiased=True).sum())
    g2 = float(g.mean(0).pow(2).sum()) - trace / 50
    assert m["trace_cov"] == pytest.approx(trace, rel=1e-6)
    assert m["noise_scale"] == pytest.approx(trace / g2, rel=1e-6)


def test_minibatch_gradient_variance_falls_like_one_over_batch():
    net, loss_fn = tiny_net(2), LOSSES.get("cross_entropy")(3)
    x, y = torch.randn(2000, 4), torch.randint(0, 3, (2000,))
    gen = torch.Generator().manual_seed(0)
    v = {b: minibatch_variance(net, loss_fn, x, y, b, 200, gen) for b in (4, 64)}
    trace = gradient_moments(net, loss_fn, x, y)["trace_cov"]
    for b in (4, 64):  # E|g_B - G|^2 = tr(Sigma) / B (1 - (B - 1) / (n - 1)), sampling without replacement
        assert v[b] == pytest.approx(trace / b * (1 - (b - 1) / 1999), rel=0.25)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_power_iteration_finds_the_largest_eigenvalue_of_the_full_hessian(activation):
    net, loss_fn = tiny_net(3, activation), LOSSES.get("cross_entropy")(3)
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    eigs = torch.linalg.eigvalsh(full_hessian(net, loss_fn, x, y).double())
    top = eigs[eigs.abs().argmax()]
    value, _ = top_eigenvalue(net, loss_fn, x, y, iters=500, tol=1e-7, generator=torch.Generator().manual_seed(0))
    assert value == pytest.approx(float(top), rel=1e-3)


def test_quadratic_has_the_prescribed_hessian_spectrum():
    cfg = DataConfig(name="quadratic", n_samples=200, n_features=10, condition=1000.0, val_fraction=0.0, noise=0.0)
    s = build_splits(cfg)
    assert len(s.x_train) == 200
    net = build_model(ModelConfig(name="linear"), (10,), 1)
    eigs = torch.linalg.eigvalsh(full_hessian(net, LOSSES.get("squared")(0), s.x_train, s.y_train).double())
    np.testing.assert_allclose(eigs.numpy(), np.logspace(-3, 0, 10), rtol=1e-4)


def test_feature_scaling_spreads_the_features_and_standardising_undoes_it():
    plain = build_splits(DataConfig(name="digits", standardise=False))
    scaled = build_splits(DataConfig(name="digits", standardise=False, feature_scale=1000.0))
    ratio = scaled.x_train / plain.x_train.where(plain.x_train != 0, torch.tensor(1.0))
    assert float(ratio[:, -1].max()) == pytest.approx(1000.0, rel=1e-4)
    torch.testing.assert_close(build_splits(DataConfig(name="digits", feature_scale=1000.0)).x_train,
                               build_splits(DataConfig(name="digits")).x_train, rtol=1e-4, atol=1e-4)


def test_steps_to_target_takes_the_first_step_at_or_below_the_target():
    probe = pd.DataFrame({"step": [0, 10, 20, 30], "probe/loss": [1.0, 0.5, 0.2, 0.1]})
    assert steps_to_target(probe, 0.2) == 20
    assert steps_to_target(probe, 0.05) is None
    mini = pd.DataFrame({"step": np.arange(4, 100, 5), "train/loss": np.r_[np.ones(10), np.zeros(10)]})
    assert steps_to_target(mini, 0.5) == 64  # the last five logged losses (1, 1, 0, 0, 0) average 0.4 at step 64


def test_epochs_to_target_interpolates_between_epoch_means():
    """An epoch's mean loss stands at its midpoint: 0.4 (epoch 0, t = 0.5) then 0.1 (epoch 1, t = 1.5) reach 0.2
    half-way in log loss, at t = 1.0; a first epoch already at target is 0.5; never reached or off is None."""
    epochs = pd.DataFrame({"step": [9, 19, 29], "epoch": [0, 1, 2], "train/loss_epoch": [0.4, 0.1, 0.05]})
    assert epochs_to_target(epochs, 0.2) == pytest.approx(1.0)
    assert epochs_to_target(epochs, 0.5) == 0.5
    assert epochs_to_target(epochs, 0.01) is None and epochs_to_target(epochs, 0.0) is None
    # epochs are read from the epoch column: an epoch with no finite mean (a NaN row) shifts nothing after it
    gap = pd.DataFrame({"step": [9, 19, 29], "epoch": [0, 1, 2], "train/loss_epoch": [0.4, float("nan"), 0.1]})
    assert epochs_to_target(gap, 0.2) == 2.5


def probed(lr, seed=0, **extra):
    return apply(RunConfig(), {"experiment": "probes", "seed": seed, "data.name": "digits", "data.n_train": 256,
                               "data.batch_size": 32, "model.width": 16, "optim.name": "sgd", "optim.lr": lr,
                               "trainer.max_epochs": 3, "trainer.accelerator": "cpu", "trainer.log_every_n_steps": 4,
                               "diagnostics.probe_every": 8, "diagnostics.probe_samples": 128,
                               "diagnostics.noise_scale": True, "diagnostics.sharpness": True,
                               "diagnostics.target_loss": 2.28, "tracking.mode": "disabled", **extra})


def test_probes_in_a_run_and_in_a_fused_group_agree_and_change_no_trained_number(tmp_path):
    store = RunStore(tmp_path)
    alone = [train(probed(lr, seed), store) for lr, seed in ((0.05, 0), (0.1, 1))]
    unprobed = train(probed(0.05, 0, **{"diagnostics.probe_every": 0, "diagnostics.noise_scale": False,
                                        "diagnostics.sharpness": False}), store)
    assert unprobed["train_loss"] == alone[0]["train_loss"]  # the probes consume no training randomness
    fused_store = RunStore(tmp_path / "fused")
    fused = train_group([probed(0.05, 0), probed(0.1, 1)], fused_store)
    for a, f in zip(alone, fused):
        assert a["run_id"] == f["run_id"]
        assert a["steps_to_target"] is not None and a["steps_to_target"] == f["steps_to_target"]
        ma, mf = (s.read_frame("probes", a["run_id"], "metrics.csv") for s in (store, fused_store))
        cols = ["probe/loss", "probe/noise_scale", "probe/sharpness"]
        pa, pf = ma.dropna(subset=cols)[["step", *cols]], mf.dropna(subset=cols)[["step", *cols]]
        assert list(pa["step"]) == list(range(0, 24, 8))
        np.testing.assert_allclose(pa.to_numpy(), pf.to_numpy(), rtol=2e-3)
        assert (pa["probe/noise_scale"] > 0).all() and (pa["probe/sharpness"] > 0).all()


class _Reference(pl.Callback):
    """Step 0's diagnostics computed the plain way, a layer at a time, by hooks of its own."""

    def __init__(self):
        self.outputs, self.grads = {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            self.hooks = [m.register_forward_hook(self._hook(i, act))
                          for i, (m, act) in enumerate(activation_modules(pl_module.net))]

    def _hook(self, i, act):
        def hook(module, inputs, output):
            self.outputs[i] = (act, inputs[0].detach().clone(), output.detach().clone())
            output.register_hook(lambda g: self.grads.__setitem__(i, g.detach().clone()))
        return hook

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step != 0:
            return
        for h in self.hooks:
            h.remove()
        self.rows = []
        for i, layer in enumerate(linear_layers(pl_module.net)):
            w = layer.weight.detach()
            row = {"grad_norm": float(layer.weight.grad.norm()), "weight_norm": float(w.norm()),
                   "unit_spread": float((w.reshape(w.shape[0], -1) - w.reshape(w.shape[0], -1)[:1]).abs().max())}
            if i in self.outputs:
                act, x, y = self.outputs[i]
                row.update(saturation=float((act.slope(x, y) < 0.05 * act.max_slope).float().mean()),
                           act_var=float(y.var()), act_grad_norm=float(self.grads[i].norm()))
            self.rows.append(row)


@pytest.mark.parametrize("model", [{"model.activation": "tanh"}, {"model.activation": "relu"},
                                   {"model.activation": "sigmoid", "model.batch_norm": True}])
def test_diagnostics_equal_a_layer_by_layer_computation(model):
    """The diagnostics measure layers of one shape together (stacked): the same numbers as one layer at a time."""
    cfg = apply(RunConfig(), {"model.depth": 4, "model.width": 6, "data.batch_size": 32, "trainer.max_steps": 1,
                              "trainer.accelerator": "cpu", **model})
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, generator=g) * 3, torch.randint(0, 3, (64,), generator=g)
    splits = Splits(x, y, x[:0], y[:0], x[:0], y[:0], 3)
    diagnostics, reference = Diagnostics(every_n_steps=1), _Reference()
    trainer = pl.Trainer(max_steps=1, callbacks=[reference, diagnostics], logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(build_module(cfg, splits), datamodule=TensorDataModule(splits, cfg.data, cfg.seed))
    rows = [r for r in diagnostics.member_rows(0) if r["step"] == 0]
    assert len(rows) == len(reference.rows) == 5
    for got, want in zip(rows, reference.rows):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-8), key
        if len(want) == 3:  # the head has no activation
            assert math.isnan(got["saturation"]) and math.isnan(got["act_var"])
    if not cfg.model.batch_norm:  # inputs x 3 saturate some units (batch norm rescales them): a real check
        assert any(r["saturation"] > 0 for r in rows[:-1])

"""The SGD lessons' recipes (step_size, gradient_noise, sgd_temperature): every claim's verdict follows edited
data both ways. Their claims read runs' curves and probes (metrics.csv) besides the runs frame, so an edit may
rewrite a copy of the smoke store's files as well as the frame; the recipe's own claim code then judges it.
The smoke suites themselves (and their fused-vs-alone equality) run in tests/test_recipes.py."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from framework.results.runs import row_config
from tests.helpers.claims import claim_follows_the_data, edit, rows, write_metrics
from tests.helpers.claims import then as _then

# ---- step_size (smoke: bracket lrs 1.7563-2.2776 at kappa 10; gd and heavy ball at kappa 4, 16; MLP lrs 1e-4,
# 1, 100; scaled inputs raw at 0.001, standardised at 1) -------------------------------------------------------

def _bracket(frame, stable_up_to):
    for lr in sorted(rows(frame, part="bracket")["optim.lr"].unique()):
        final = 1e-9 if lr <= stable_up_to else 1e9
        frame = edit(frame, {"part": "bracket", "optim.lr": float(lr)}, status="done", initial_train_loss=1.0,
                     train_loss=final)
    return frame


def _decay(part, exponent):
    """Full-batch losses falling geometrically with a time constant kappa ** exponent (steps to a tolerance grow
    like kappa ** exponent)."""
    def make(row):
        tau = float(row["data.condition"]) ** exponent
        steps = np.arange(0, 400)
        return pd.DataFrame({"step": steps, "train/loss": np.exp(-steps / tau)})

    def apply(frame, store):
        write_metrics(store, "step_size", frame, {"part": part}, make)
        return edit(frame, {"part": part}, status="done", initial_train_loss=1.0), store
    return apply


def _mlp(frame, which, **values):
    lrs = sorted(rows(frame, part="mlp")["optim.lr"].unique())
    lr = lrs[0] if which == "smallest" else lrs[-1]
    return edit(frame, {"part": "mlp", "optim.lr": float(lr)}, **values)


def _scaling(frame, raw, standardised):
    frame = edit(frame, {"part": "scaling", "data.standardise": False}, status="done", steps_to_target=raw)
    return edit(frame, {"part": "scaling", "data.standardise": True}, status="done", steps_to_target=standardised)


STEP_SIZE = {
    0: (lambda f, s: (_bracket(f, 1.9152), s), lambda f, s: (_bracket(f, 2.0885), s)),
    1: (_decay("gd", 1.0), _decay("gd", 0.5)),
    2: (_decay("heavy_ball", 0.5), _decay("heavy_ball", 1.0)),
    3: (lambda f, s: (_mlp(f, "smallest", status="done", initial_train_loss=2.3, train_loss=2.29), s),
        lambda f, s: (_mlp(f, "smallest", status="done", initial_train_loss=2.3, train_loss=0.5), s)),
    4: (lambda f, s: (_mlp(f, "largest", status="diverged", initial_train_loss=2.3, train_loss=float("nan")), s),
        lambda f, s: (_mlp(f, "largest", status="done", initial_train_loss=2.3, train_loss=0.5), s)),
    5: (lambda f, s: (_scaling(f, 500.0, 20.0), s), lambda f, s: (_scaling(f, 30.0, 20.0), s)),
}

# ---- gradient_noise (smoke: noise run at batch 16 with variance batches 4, 16, 64 and target 0.5; sweep
# batches 8, 32, 128 over three learning rates each) -------------------------------------------------------------


def _noise_run(variance_exponent=-1.0, b_simple=(50.0, 500.0)):
    """The noise run's probes: loss from 2 down through the target (0.5) at step 20; E|g_B - G|^2 ~ B^exponent
    (before the finite-population correction is undone); B_simple from b_simple[0] at init to b_simple[1] at
    the target."""
    def make(row):
        n = int(row["n_train"])
        steps = np.array([0, 10, 20, 30])
        out = pd.DataFrame({"step": steps, "probe/loss": [2.0, 1.0, 0.4, 0.2],
                            "probe/noise_scale": np.geomspace(*b_simple, 3).tolist() + [b_simple[1] * 2]})
        for b in (4, 16, 64):  # the smoke noise run's variance_batches (the frame's cfg columns hold no lists)
            out[f"probe/minibatch_var@{b}"] = b ** variance_exponent * (n - b) / (n - 1)
        return out
    return make


def _best(frame, best_lr: dict, steps: dict):
    """Steps to target: `steps[B]` at the chosen lr of each batch, twice that at the others."""
    for b in sorted(rows(frame, part="sweep")["data.batch_size"].unique()):
        for lr in rows(frame, part="sweep", **{"data.batch_size": int(b)})["optim.lr"].unique():
            s = steps[int(b)] * (1 if math.isclose(lr, best_lr[int(b)]) else 2)
            frame = edit(frame, {"part": "sweep", "data.batch_size": int(b), "optim.lr": float(lr)},
                         status="done", steps_to_target=float(s))
    return frame


LAW = {b: 10 * (1 + 100 / b) for b in (8, 32, 128)}     # S = S_min (1 + B_crit / B): S_min 10, B_crit 100
# below B_crit (8 and 32) the best rate x4, slope 1: Eq. 2.7's slope there is log4(13.5 / 4.125) = 0.86, ratio 1.17
LINEAR_LR = {8: 0.1, 32: 0.4, 128: 0.8}


def _gn(variance_exponent=-1.0, b_simple=(50.0, 500.0), best_lr=LINEAR_LR, steps=LAW):
    def apply(frame, store):
        write_metrics(store, "gradient_noise", frame, {"part": "noise"}, _noise_run(variance_exponent, b_simple))
        return _best(frame, best_lr, steps), store
    return apply


GRADIENT_NOISE = {
    0: (_gn(), _gn(variance_exponent=-0.5)),
    1: (_gn(), _gn(b_simple=(500.0, 50.0))),
    2: (_gn(), _gn(steps={8: 20.0, 32: 100.0, 128: 10.0})),
    3: (_gn(b_simple=(10.0, 100.0)), _gn(b_simple=(10.0, 5000.0))),
    4: (_gn(), _gn(best_lr={8: 0.4, 32: 0.4, 128: 0.8})),
}

# ---- sgd_temperature (smoke: constant steps 0.05, 0.2 at batches 1, 4, 16; inverse time and momentum at batch 4;
# constant and cosine schedules on an MLP) ---------------------------------------------------------------------


def _spread(where: dict, factor: float):
    """Probe losses whose excess over 1/2 s^2 is half the predicted variance times `factor`, at every probe."""
    from experiments.sgd_temperature import predicted_path, predicted_variance, target_spread

    def make(row):
        cfg = row_config(row)
        s2, _ = target_spread(cfg)
        steps = np.arange(0, int(row["steps"]) + 1, 10)
        var = predicted_path(cfg, int(row["steps"]))[steps] if cfg.schedule.name != "constant" else \
            np.full(len(steps), predicted_variance(cfg))
        return pd.DataFrame({"step": steps, "probe/loss": 0.5 * s2 + 0.5 * var * factor})
    def apply(frame, store):
        write_metrics(store, "sgd_temperature", frame, where, make)
        return frame, store
    return apply


def _epoch_losses(constant, cosine):
    def make_for(value):
        return lambda row: pd.DataFrame({"step": [9, 19, 29], "train/loss_epoch": [value] * 3})

    def apply(frame, store):
        write_metrics(store, "sgd_temperature", frame, {"part": "schedules", "schedule": "constant"}, make_for(constant))
        write_metrics(store, "sgd_temperature", frame, {"part": "schedules", "schedule": "cosine"}, make_for(cosine))
        return edit(frame, {"part": "schedules"}, status="done"), store
    return apply


SGD_TEMPERATURE = {
    0: (_spread({"part": "constant"}, 1.0), _spread({"part": "constant"}, 2.0)),
    1: (_spread({"part": "inverse_time"}, 1.0), _spread({"part": "inverse_time"}, 3.0)),
    2: (_then(_spread({"part": "constant"}, 1.0), _spread({"part": "momentum"}, 0.95)),
        _then(_spread({"part": "constant"}, 1.0), _spread({"part": "momentum"}, 3.0))),
    3: (_spread({"part": "constant"}, 1.0),
        _then(_spread({"part": "constant"}, 1.0), _spread({"part": "constant", "data.batch_size": 16}, 3.0))),
    4: (_epoch_losses(0.1, 0.001), _epoch_losses(0.001, 0.1)),
}

CASES = [(name, i, hold, fail) for name, table in [("step_size", STEP_SIZE), ("gradient_noise", GRADIENT_NOISE),
                                                   ("sgd_temperature", SGD_TEMPERATURE)]
         for i, (hold, fail) in table.items()]


@pytest.mark.parametrize("name, index, hold, fail", CASES, ids=[f"{c[0]}-claim{c[1] + 1}" for c in CASES])
def test_claim_follows_the_data(name, index, hold, fail, tmp_path_factory, tmp_path):
    claim_follows_the_data(name, index, hold, fail, tmp_path_factory, tmp_path)

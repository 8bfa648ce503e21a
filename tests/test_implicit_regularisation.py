"""implicit_regularisation: every claim's verdict follows edited data both ways (the smoke suite trained for real,
then its runs view and a copy of its store's curves edited), and the framework's final probes it reads.

Smoke: the batch part (step sizes 0.05, 0.2 x batches 16, 64, 256, 20 epochs on 512 digits) and the catapult part
(full-batch GD at 0.05, 0.1, 0.2 for 60 steps)."""
import math

import numpy as np
import pandas as pd
import pytest

from framework.config import RunConfig
from framework.overrides import apply
from framework.runner import train
from framework.store import RunStore
from tests.helpers.claims import claim_follows_the_data, edit, write_metrics

NAME = "implicit_regularisation"
RATIO_SHARPNESS = {(0.2, 16): 0.25, (0.05, 16): 1.0, (0.2, 64): 1.0, (0.05, 64): 4.0, (0.2, 256): 4.0,
                   (0.05, 256): 16.0}  # falls with eta / B; equal ratios equal


def _batch(sharpness=None, **pair):
    """Sets the batch part: every run fits (train error 0), sharpness by (lr, B), and the Keskar pair's
    columns: pair = {column: (value at batch 16, value at batch 256)}."""
    def run(frame, store):
        frame = edit(frame, {"part": "batch"}, status="done", train_error=0.0, test_error=0.02, test_loss=0.1,
                     test_loss_reparam=0.1, final_weight_norm=10.0)
        for (lr, b), s in (sharpness or RATIO_SHARPNESS).items():
            frame = edit(frame, {"part": "batch", "optim.lr": lr, "data.batch_size": b}, final_sharpness=s,
                         final_sharpness_reparam=100 * s)
        for col, (small, large) in pair.items():
            frame = edit(frame, {"part": "batch", "optim.lr": 0.2, "data.batch_size": 16}, **{col: small})
            frame = edit(frame, {"part": "batch", "optim.lr": 0.2, "data.batch_size": 256}, **{col: large})
        return frame, store
    return run


def _catapult(spike=30.0, ends=10.0, small=28.0, beyond_diverges=True):
    """The catapult part with lambda_0 = 27.6 at every seed (eta lambda_0 / 2: 0.69, 1.38, 2.76): the run at 0.1
    spikes to `spike` (x the initial loss 1) at step 10 and ends at sharpness `ends`; the small step ends at
    `small`; the run at 0.2 diverged (or not)."""
    def make(row):
        lr = float(row["optim.lr"])
        steps = np.arange(0, 61)
        loss = np.exp(-steps / 20)
        if lr == 0.1:
            loss = np.where(steps == 10, spike, loss)
        probes = steps % 5 == 0
        sharp = np.where(probes, 27.6, np.nan)
        return pd.DataFrame({"step": steps, "train/loss_epoch": loss, "probe/sharpness": sharp})

    def run(frame, store):
        write_metrics(store, NAME, frame, {"part": "catapult"}, make)
        frame = edit(frame, {"part": "catapult"}, status="done", initial_train_loss=1.0)
        frame = edit(frame, {"part": "catapult", "optim.lr": 0.05}, final_sharpness=small)
        frame = edit(frame, {"part": "catapult", "optim.lr": 0.1}, final_sharpness=ends)
        frame = edit(frame, {"part": "catapult", "optim.lr": 0.2}, status="diverged" if beyond_diverges else "done",
                     final_sharpness=math.nan if beyond_diverges else 9.0)
        return frame, store
    return run


def _both(batch, catapult):
    def run(frame, store):
        return catapult(*batch(frame, store))
    return run


OK = _both(_batch(), _catapult())
CASES = {
    0: (_both(_batch(final_sharpness=(0.1, 2.0)), _catapult()), _both(_batch(final_sharpness=(2.0, 0.1)), _catapult())),
    1: (_both(_batch(test_error=(0.02, 0.05)), _catapult()), _both(_batch(test_error=(0.05, 0.02)), _catapult())),
    2: (_both(_batch(final_weight_norm=(10.0, 12.0)), _catapult()),
        _both(_batch(final_weight_norm=(12.0, 10.0)), _catapult())),
    3: (OK, _both(_batch({**RATIO_SHARPNESS, (0.2, 64): 8.0}), _catapult())),
    4: (OK, _both(_batch({k: 1 / v for k, v in RATIO_SHARPNESS.items()}), _catapult())),
    5: (OK, _both(_batch(), _catapult(spike=0.5))),
    6: (OK, _both(_batch(), _catapult(ends=25.0))),
    7: (OK, _both(_batch(), _catapult(ends=14.0, small=7.0))),
    8: (OK, _both(_batch(), _catapult(beyond_diverges=False))),
    9: (OK, _both(_batch(test_loss_reparam=(0.2, 0.1)), _catapult())),
    10: (OK, _both(_batch(final_sharpness_reparam=(0.5, 4.0)), _catapult())),
}


@pytest.mark.parametrize("index", sorted(CASES), ids=[f"claim{i + 1}" for i in sorted(CASES)])
def test_claim_follows_the_data(index, tmp_path_factory, tmp_path):
    hold, fail = CASES[index]
    claim_follows_the_data(NAME, index, hold, fail, tmp_path_factory, tmp_path)


def test_keskar_pair_that_does_not_fit_is_censored(tmp_path_factory):
    from tests.helpers.claims import judged, smoke
    recipe, store, frame, _, _ = smoke(NAME, tmp_path_factory)
    frame, _ = _batch(final_sharpness=(0.1, 2.0), train_error=(0.0, 0.2))(frame.copy(), store)
    for c in judged(recipe, frame, store)[:2]:
        assert c["verdict"] == "inconclusive" and "does not fit" in c["censored"]["0"], c


def test_final_probes_on_a_rescaled_relu_net(tmp_path):
    """The summary's final probes: the weight norm of the trained net, its top Hessian eigenvalue, and Dinh's
    rescaled twin, which computes the same function (test loss and error equal) at a sharpness larger by at
    least the second layer's a^2 / a few; a rescaling of a net it does not keep is refused, exit-2 style."""
    from framework.registry import UserError
    base = {"experiment": "pieces", "tracking.mode": "disabled", "trainer.accelerator": "cpu", "data.name": "digits",
            "data.n_train": 256, "model.depth": 2, "model.width": 32, "model.activation": "relu",
            "trainer.max_epochs": 3, "diagnostics.final_sharpness": True, "diagnostics.power_iters": 50,
            "diagnostics.probe_samples": 0}
    s = train(apply(RunConfig(), {**base, "diagnostics.reparam_scale": 10.0}), RunStore(tmp_path))
    assert s["final_weight_norm"] > 0 and s["final_sharpness"] > 0
    assert s["test_error_reparam"] == s["test_error"]
    assert s["test_loss_reparam"] == pytest.approx(s["test_loss"], rel=1e-5)
    assert s["final_sharpness_reparam"] / s["final_sharpness"] > 10
    plain = train(apply(RunConfig(), base), RunStore(tmp_path / "plain"))
    assert plain["final_sharpness"] == pytest.approx(s["final_sharpness"], rel=1e-6)  # the probe changes no number
    assert "final_sharpness_reparam" not in plain
    with pytest.raises(UserError, match="diagnostics.reparam_scale"):
        apply(RunConfig(), {**base, "model.activation": "tanh", "diagnostics.reparam_scale": 10.0})

"""How a fused run is compared with the same run trained alone: the fields that must be equal, those equal within
a tolerance, and the files."""
import pandas as pd

from framework.store import RunStore

RTOL = 1e-4
EXACT = ("status", "steps", "epochs", "diverged_step", "fit_step", "n_train")
NUMBERS = ("initial_train_loss", "train_loss", "train_acc", "val_loss", "test_loss", "test_acc", "grad_norm_first",
           "grad_norm_last", "saturation_mean")


def close(a, b, rtol=RTOL) -> bool:
    if a is None or b is None or pd.isna(a) or pd.isna(b):
        return (a is None or pd.isna(a)) and (b is None or pd.isna(b))
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-3)


def assert_same_run(alone: RunStore, fused: RunStore, exp: str, run_id: str, rtol=RTOL):
    a, b = alone.summary(exp, run_id), fused.summary(exp, run_id)
    for key in EXACT:
        assert a.get(key) == b.get(key), (run_id, key, a.get(key), b.get(key))
    for key in NUMBERS:
        if key in a or key in b:
            assert close(a.get(key), b.get(key), rtol), (run_id, key, a.get(key), b.get(key))
    for name in ("metrics.csv", "diagnostics.csv"):
        fa, fb = alone.read_frame(exp, run_id, name), fused.read_frame(exp, run_id, name)
        assert list(fa.columns) == list(fb.columns) and fa.shape == fb.shape, (run_id, name, fa.shape, fb.shape)
        pd.testing.assert_frame_equal(fa, fb, check_exact=False, rtol=rtol, atol=1e-6)

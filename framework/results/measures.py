"""Every statistic of a run or a grid, each written once: pure functions of logged numbers (pandas frames of a
run's metrics or diagnostics, summary rows, plain lists), with no import from the rest of the framework.

The runner writes a run's summary with the per-run measures (steps to target, fit step, ...); recipes measure
their claims with these and with the grid measures (slopes, best rate, fewest steps, critical batch, ...).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

FINISHED = ("done", "diverged")  # a run that trained to its end (a diverged run stopped, and is a result)
SMOOTHING = 5  # logged minibatch losses averaged for steps_to_target when no probe loss is logged


# --- one run's curves ----------------------------------------------------------------------------------------

def last_epoch_loss(metrics: pd.DataFrame) -> float:
    """The mean training loss of the last epoch, in training mode (batch norm on batch statistics, dropout on): the
    objective SGD minimised. train_loss is the net evaluated afterwards in eval mode, which for batch norm uses
    running statistics that a deep narrow net's batch statistics can stray far from. nan when none was logged."""
    if "train/loss_epoch" not in metrics:
        return math.nan
    logged = metrics.dropna(subset=["train/loss_epoch"])
    return float(logged.sort_values("step")["train/loss_epoch"].iloc[-1]) if len(logged) else math.nan


def fit_step(metrics: pd.DataFrame, threshold: float) -> int | None:
    """The first step at whose epoch end the training accuracy had reached `threshold` (None: never, or off)."""
    if threshold <= 0 or metrics.empty or "train/acc" not in metrics:
        return None
    hits = metrics.loc[metrics["train/acc"] >= threshold, "step"]
    return int(hits.iloc[0]) + 1 if len(hits) else None


def steps_to_target(metrics: pd.DataFrame, target: float) -> int | None:
    """The first step whose loss is at or below `target` (Shallue et al. 2019's and McCandlish et al. 2018's
    steps-to-result): the probe-set loss (probe/loss, measured before that step's update) when the run logs it,
    else the mean of the last SMOOTHING logged minibatch losses. None: never reached, or off (target 0)."""
    if target <= 0 or metrics.empty:
        return None
    if "probe/loss" in metrics:
        series = metrics.dropna(subset=["probe/loss"]).set_index("step")["probe/loss"]
    elif "train/loss" in metrics:
        series = metrics.dropna(subset=["train/loss"]).set_index("step")["train/loss"].rolling(SMOOTHING).mean()
    else:
        return None
    hits = series[series <= target]
    return int(hits.index[0]) if len(hits) else None


def log_crossing(before: float, after: float, target: float) -> float | None:
    """How far (0-1) from a point at loss `before` to the next at loss `after` a loss falling log-linearly between
    them crosses `target`; None unless before > target >= after > 0."""
    if not (before > target >= after > 0):
        return None
    return math.log(before / target) / math.log(before / after)


def epochs_to_target(metrics: pd.DataFrame, target: float) -> float | None:
    """Epochs until the training loss reaches `target`, read from the epoch-mean training losses every run logs:
    an epoch's mean stands at the epoch's midpoint, and the crossing is interpolated in log loss between two
    midpoints (sub-epoch resolution with no extra logging; x steps per epoch = steps to target at every batch
    size alike). None: never reached, or off (target 0)."""
    if target <= 0 or "train/loss_epoch" not in metrics:
        return None
    logged = metrics.dropna(subset=["train/loss_epoch"]).sort_values("epoch")
    before = None  # (epoch, loss) of the epoch logged before
    for epoch, loss in zip(logged["epoch"].astype(int), logged["train/loss_epoch"]):
        if loss <= target:  # between the midpoints of the epoch before (if logged) and this one
            w = log_crossing(before[1], loss, target) if before is not None and before[0] == epoch - 1 else None
            return epoch + 0.5 if w is None else epoch - 0.5 + w
        before = (epoch, loss)
    return None


def diagnostics_summary(diag: pd.DataFrame) -> dict[str, float]:
    """Median over logged steps of the first and last weight layer's gradient norm, and of saturation; at
    initialisation (the first measured step), the first/last hidden layer's back-propagated gradient norm ratio
    and the last/first activation-variance ratio."""
    if diag.empty:
        return {}
    by_layer = diag.groupby("layer")
    grad = by_layer["grad_norm"].median()
    first, last = float(grad.iloc[0]), float(grad.iloc[-1])
    out = {"grad_norm_first": first, "grad_norm_last": last,
           "grad_ratio_first_last": first / last if last > 0 else float("nan"),
           "saturation_mean": float(diag["saturation"].mean(skipna=True)) if diag["saturation"].notna().any()
           else float("nan")}
    hidden = diag.dropna(subset=["act_grad_norm", "act_var"]) if "act_grad_norm" in diag else diag.iloc[:0]
    if len(hidden):
        init = hidden[hidden["step"] == hidden["step"].min()].sort_values("layer")
        g, v = init["act_grad_norm"].to_numpy(), init["act_var"].to_numpy()
        out["backprop_ratio_at_init"] = float(g[0] / g[-1]) if g[-1] > 0 else float("nan")
        out["act_var_ratio_at_init"] = float(v[-1] / v[0]) if v[0] > 0 else float("nan")
        med = hidden.groupby("layer")["act_grad_norm"].median()
        out["backprop_ratio_first_last"] = float(med.iloc[0] / med.iloc[-1]) if med.iloc[-1] > 0 else float("nan")
    return out


# --- one run's summary -------------------------------------------------------------------------------------

def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in an epoch (the last batch may be short)."""
    return max(1, math.ceil(int(n_train) / int(batch_size)))


def loss_reduction(row: pd.Series | None, final: float | None = None) -> float:
    """1 - final / initial training loss: 0 when the loss stalled, 1 when it reached zero, nan if unknown. `final`:
    another end loss than the summary's train_loss (eval mode)."""
    if row is None or row.get("status") not in FINISHED:
        return float("nan")
    initial, final = row.get("initial_train_loss"), row.get("train_loss") if final is None else final
    if not (pd.notna(initial) and pd.notna(final)) or initial <= 0:
        return float("nan")
    return float(1 - final / initial)


def never_trained(runs: pd.DataFrame) -> pd.Series:
    """Runs that never took a finite step: diverged at step 0, or a non-finite initial loss."""
    status = runs["status"] if "status" in runs else pd.Series("", index=runs.index)
    at_zero = runs["diverged_step"].eq(0) if "diverged_step" in runs else pd.Series(False, index=runs.index)
    initial = pd.to_numeric(runs["initial_train_loss"], errors="coerce") if "initial_train_loss" in runs else \
        pd.Series(0.0, index=runs.index)
    return (status.eq("diverged") & at_zero) | (status.isin(list(FINISHED)) & ~np.isfinite(initial))


# --- a grid of runs ----------------------------------------------------------------------------------------

def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log y against log x (nan under two points)."""
    if len(xs) < 2:
        return math.nan
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


def best_rate(rates, costs) -> float:
    """The learning rate that minimises `costs` (steps to target, a final loss) over a grid, refined between grid
    points: the vertex of the parabola through the grid's best point and its two neighbours, in log rate and log
    cost. A grid's argmin moves in whole grid steps (a factor sqrt(2) or 2), and on a flat optimum which point wins
    is a coin toss between seeds; the vertex moves continuously and stays within half a grid step of the best point.
    At the grid's edge, or next to a rate that diverged or missed the target, it is the grid point itself; nan when
    no rate has a finite cost. (Written by hand: numpy and scipy have no argmin refinement of a sampled curve.)"""
    pairs = sorted((float(r), float(c)) for r, c in zip(rates, costs))
    usable = [math.isfinite(c) and c > 0 for _, c in pairs]
    if not any(usable):
        return math.nan
    last = len(pairs) - 1
    # lowest usable cost; on a tie, an interior point (the optimum lies between the tied rates)
    i = min(range(len(pairs)), key=lambda k: (pairs[k][1] if usable[k] else math.inf, k in (0, last)))
    if i in (0, last) or not (usable[i - 1] and usable[i + 1]):
        return pairs[i][0]
    (x0, y0), (x1, y1), (x2, y2) = [(math.log(r), math.log(c)) for r, c in pairs[i - 1:i + 2]]
    curvature = (y2 - y1) / (x2 - x1) - (y1 - y0) / (x1 - x0)
    if curvature <= 0:   # all three equal: no refinement
        return pairs[i][0]
    # vertex of the parabola through the three points (Lagrange form, unequal spacing allowed)
    num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    return math.exp(x1 - 0.5 * num / den)


def on_edge(rates, costs) -> bool:
    """Whether the grid's lowest finite cost sits at its smallest or largest rate: the optimum may lie beyond the
    grid, and a statistic taking it is censored there (False when no cost is finite)."""
    pairs = sorted((float(r), float(c)) for r, c in zip(rates, costs))
    usable = [k for k, (_, c) in enumerate(pairs) if math.isfinite(c)]
    if not usable:
        return False
    best = min(pairs[k][1] for k in usable)
    return any(pairs[k][1] == best and k in (0, len(pairs) - 1) for k in usable)


def fewest_steps(rows: pd.DataFrame) -> tuple[float, float]:
    """Over a learning-rate grid: the fewest steps to target (the runs' steps_to_target) and that learning rate;
    (inf, nan) when no finished run reached the target."""
    reached = rows[rows["status"].eq("done") & rows["steps_to_target"].notna()] if "steps_to_target" in rows else \
        rows.iloc[:0]
    if not len(reached):
        return math.inf, math.nan
    best = reached.loc[reached["steps_to_target"].astype(float).idxmin()]
    return float(best["steps_to_target"]), float(best["optim.lr"])


def critical_batch(steps: dict[int, float]) -> dict[str, float]:
    """McCandlish et al. 2018, Eq. 2.11: the least-squares fit of S = S_min + E_min / B over the batches whose
    steps to target are finite; B_crit = E_min / S_min and the fit's R^2. B_crit is inf where the fit finds no floor
    (S_min <= 0: steps still halving over these batches), everything nan under 3 batches."""
    ok = {b: s for b, s in steps.items() if math.isfinite(s)}
    if len(ok) < 3:
        return {"s_min": math.nan, "e_min": math.nan, "b_crit": math.nan, "r2": math.nan}
    x, y = 1.0 / np.array(list(ok), dtype=float), np.array(list(ok.values()), dtype=float)
    e_min, s_min = np.polyfit(x, y, 1)
    pred = s_min + e_min * x
    r2 = 1 - float(((y - pred) ** 2).sum()) / float(((y - y.mean()) ** 2).sum())
    return {"s_min": float(s_min), "e_min": float(e_min), "b_crit": float(e_min / s_min) if s_min > 0 else math.inf,
            "r2": r2}

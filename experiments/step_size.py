"""Step size and curvature (LeCun et al. 1998, "Efficient BackProp", Sec. 4.3 and 5; Polyak 1964; the lecture
notes' "too high oscillates, too low stalls").

Claims, each measured on every seed (each seed draws its own quadratic: rotation and optimum):
1. Gradient descent on a quadratic converges iff eta < 2 / lambda_max: on a 2^(1/8) grid of step sizes, the
   last one that converges and the first that does not bracket 2 / lambda_max, lambda_max measured by power
   iteration (a sharpness probe) at step 0. "Converges": the loss fell below CONVERGED of its start.
2. Steps to a tolerance grow like the condition number kappa for gradient descent at its best constant step
   2 / (L + mu): the log-log slope of steps against kappa is within SLOPE_GD.
3. ... and like sqrt(kappa) for heavy-ball momentum at Polyak's tuning: slope within SLOPE_HB.
   (Steps: from the step the full-batch loss reaches WINDOW[0] of its start to the step it reaches WINDOW[1].)
4. On an MLP the smallest learning rate of a sweep over decades stalls (loss falls by less than a tenth).
5. ... and the largest diverges (its final training loss is above its start, or not finite).
6. Badly scaled inputs (pixels multiplied by x1 ... x100) need at least SLOWER times the steps that the same
   inputs standardised need, each at its best step size (steps to a training loss of target_loss).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import RECIPES
from framework.claims import Definition, Definitions
from framework.plots import save, sns_setup
from framework.recipe import Recipe
from framework.results.measures import fewest_steps, loglog_slope, loss_reduction
from framework.results.runs import Runs
from framework.verdict import Claim, above, below, within

CONVERGED = 1e-3      # a quadratic run converged: its final loss is below this fraction of its start
WINDOW = (1e-2, 1e-8)  # steps to tolerance: from the loss at 1e-2 of its start to 1e-8 of it (the rate regime; a
                       # count from the start adds the transient, and heavy ball's t * rho^t law a log t: over kappa
                       # 4-64 at 1e-6 from the start, its exact slope is 0.59, from 1e-2 to 1e-8 it is 0.52)
SLOPE_GD = (0.9, 1.1)     # log steps vs log kappa: O(kappa) iterations (Polyak 1964; LeCun et al. Sec. 5.1)
SLOPE_HB = (0.4, 0.6)     # O(sqrt(kappa)) for heavy ball at Polyak's tuning (Polyak 1964, Theorem 9)
STALLED = 0.10        # loss fell by less than this fraction of its start
SLOWER = 5.0          # "slows": at least this factor in steps (the notes' protocol)
LECUN = "LeCun et al. 1998"

DEFINITIONS = Definitions(
    Definition("stability_bound", "Gradient descent on a quadratic converges iff the step size is below 2 / "
               "lambda_max", quote="if eta > 2 eta_opt ... the weights diverge; eta_opt = 1 / lambda_max",
               paraphrase=True, where=f"{LECUN}, Sec. 5.1 (eta_max = 2 / lambda_max)",
               statistic="position of log(2 / lambda_max) between the last converging and first failing step size "
                         "(lambda_max measured at step 0)", criterion=within(0.0, 1.0),
               source="closed form: 2 / lambda_max lies in the bracket"),
    Definition("gd_steps_kappa", "Gradient descent needs steps proportional to the condition number",
               quote="the number of iterations ... is proportional to the condition number lambda_max / lambda_min",
               paraphrase=True, where=f"{LECUN}, Sec. 5.1; Polyak 1964",
               statistic=f"log-log slope of steps from {WINDOW[0]:g} to {WINDOW[1]:g} of the start loss vs kappa, "
                         f"GD at 2 / (L + mu)", criterion=within(*SLOPE_GD),
               source="closed form: slope 1 (O(kappa) iterations), within 0.1"),
    Definition("heavy_ball_steps_sqrt_kappa", "Heavy-ball momentum at Polyak's tuning needs steps proportional to "
               "sqrt(kappa)", quote="the heavy ball method converges at the rate (sqrt(kappa) - 1) / (sqrt(kappa) + "
               "1)", paraphrase=True, where="Polyak 1964, Theorem 9",
               statistic=f"log-log slope of steps from {WINDOW[0]:g} to {WINDOW[1]:g} of the start loss vs kappa, "
                         f"heavy ball", criterion=within(*SLOPE_HB),
               source="closed form: slope 1/2 (O(sqrt(kappa)) iterations), within 0.1"),
    Definition("small_lr_stalls", "On an MLP the smallest learning rate stalls",
               quote="if the learning rate is too small, learning is very slow", paraphrase=True,
               where=f"{LECUN}, Sec. 5; the lecture notes",
               statistic="training loss reduction at the sweep's smallest lr", criterion=below(STALLED),
               source="convention: a loss that falls by less than a tenth has not trained"),
    Definition("large_lr_diverges", "On an MLP the largest learning rate diverges",
               quote="if the learning rate is too large, the weights oscillate or diverge", paraphrase=True,
               where=f"{LECUN}, Sec. 5; the lecture notes",
               statistic="log10 final / initial training loss at the largest lr (inf: not finite)",
               criterion=above(0.0), source="closed form: a loss above its start"),
    Definition("scaling_slows", "Badly scaled inputs slow SGD; standardising them restores the speed",
               quote="convergence is usually faster if the average of each input variable over the training set "
                     "is close to zero ... scale input variables so that their covariances are about the same",
               paraphrase=True, where=f"{LECUN}, Sec. 4.3",
               statistic="steps to target, inputs scaled x1..x100 / standardised (each at its best step size; a "
                         "best step size on its grid's edge is censored)", criterion=above(SLOWER),
               source="convention: the notes' factor 5"),
)


def _curve(runs: Runs, row) -> pd.Series:
    m = runs.curve(row)
    if m.empty or "train/loss" not in m:
        return pd.Series(dtype=float)
    return m.dropna(subset=["train/loss"]).set_index("step")["train/loss"]


def window_steps(runs: Runs, row) -> float:
    """Steps from the loss at WINDOW[0] of its start to WINDOW[1] of it (inf: not within the budget; nan: the run
    did not finish)."""
    if row["status"] != "done":
        return math.nan
    start = float(row["initial_train_loss"])
    curve = _curve(runs, row)
    # the loss logged at step t is measured before update t + 1, after t updates: the step is the update count
    curve = pd.concat([pd.Series({0: start}), curve[curve.index > 0]])
    return steps_to_tolerance(curve, WINDOW[1] * start) - steps_to_tolerance(curve, WINDOW[0] * start)


def steps_to_tolerance(curve: pd.Series, target: float) -> float:
    """The step at which the loss curve (by update count) reaches `target` (inf: never), log-linearly interpolated
    between the two logged steps around the crossing (the loss of GD on a quadratic decays geometrically, so the
    interpolation is exact where one rate dominates)."""
    below = np.nonzero(curve.to_numpy() <= target)[0]
    if not len(below):
        return math.inf
    i = below[0]
    if i == 0:
        return 0.0
    (s0, l0), (s1, l1) = (curve.index[i - 1], curve.iloc[i - 1]), (curve.index[i], curve.iloc[i])
    if l1 <= 0:
        return float(s1)
    return float(s0 + (s1 - s0) * (math.log(l0) - math.log(target)) / (math.log(l0) - math.log(l1)))


def converged(row) -> bool:
    final, start = row.get("train_loss"), row.get("initial_train_loss")
    return row["status"] == "done" and pd.notna(final) and final <= CONVERGED * start


def sharpness_at_start(runs: Runs, rows: pd.DataFrame) -> float:
    values = []
    for _, row in rows.iterrows():
        m = runs.curve(row)
        if "probe/sharpness" in m:
            first = m.dropna(subset=["probe/sharpness"]).sort_values("step")
            if len(first):
                values.append(float(first["probe/sharpness"].iloc[0]))
    return float(np.median(values)) if values else math.nan


def bracket(runs: Runs) -> dict:
    part = runs.matching(part="bracket").sort_values("optim.lr")
    lam = sharpness_at_start(runs, part)
    ok = {float(r["optim.lr"]): converged(r) for _, r in part.iterrows()}
    stable = [lr for lr, c in ok.items() if c]
    unstable = [lr for lr, c in ok.items() if not c]
    last, first = (max(stable) if stable else math.nan), (min(unstable) if unstable else math.nan)
    bound = 2 / lam if lam > 0 else math.nan
    position = (math.log(bound) - math.log(last)) / (math.log(first) - math.log(last)) \
        if all(map(math.isfinite, (bound, last, first))) and first > last else math.nan
    return {"lambda_max": lam, "bound_2_over_lambda": bound, "last_converging_lr": last,
            "first_failing_lr": first, "position": position, "converged": {str(k): v for k, v in ok.items()}}


def condition_slope(runs: Runs, name: str) -> tuple[float, dict]:
    part = runs.matching(part=name)
    steps = {float(r["data.condition"]): window_steps(runs, r) for _, r in part.iterrows()}
    kappas = sorted(steps)
    ys = [steps[k] for k in kappas]
    if len(kappas) < 2 or not all(math.isfinite(y) and y > 0 for y in ys):
        return math.nan, {"steps": {str(k): v for k, v in steps.items()}}
    slope = loglog_slope(kappas, ys)
    return slope, {"steps": {str(int(k)): round(v, 1) for k, v in steps.items()}}


@RECIPES.register("step_size")
class StepSize(Recipe):
    name = "step_size"
    title = "Step size and curvature: the 2 / lambda_max bound, condition numbers, learning-rate extremes, input scaling"
    papers = ["LeCun et al. 1998, Efficient BackProp, Sec. 4.3 and 5", "Polyak 1964"]
    definitions = DEFINITIONS

    def measure(self, runs: Runs) -> list[Claim]:
        b = bracket(runs)
        gd, gd_steps = condition_slope(runs, "gd")
        hb, hb_steps = condition_slope(runs, "heavy_ball")
        mlp = runs.matching(part="mlp").sort_values("optim.lr")
        small, large = (mlp.iloc[0], mlp.iloc[-1]) if len(mlp) else (None, None)

        def growth(row) -> float:
            if row is None:
                return math.nan
            final, start = row.get("train_loss"), row.get("initial_train_loss")
            if row["status"] == "diverged" or not (pd.notna(final) and math.isfinite(final)):
                return math.inf
            return math.log10(final / start)
        scaling = runs.matching(part="scaling")
        raw = scaling[~scaling["data.standardise"].astype(bool)] if len(scaling) else scaling
        std = scaling[scaling["data.standardise"].astype(bool)] if len(scaling) else scaling
        (raw_steps, raw_lr), (std_steps, std_lr) = fewest_steps(raw), fewest_steps(std)
        ratio = raw_steps / std_steps if math.isfinite(std_steps) and std_steps > 0 else math.nan
        edges = [f"{name} best lr {lr:g} on its grid's edge" for name, rows, lr in (("raw", raw, raw_lr),
                 ("standardised", std, std_lr)) if len(rows) and math.isfinite(lr)
                 and lr in (float(rows["optim.lr"].min()), float(rows["optim.lr"].max()))]
        lr_edges = {"raw_lr_grid": sorted(raw["optim.lr"].astype(float)) if len(raw) else [],
                    "standardised_lr_grid": sorted(std["optim.lr"].astype(float)) if len(std) else []}
        d = self.definitions
        return [
            d["stability_bound"](b["position"], b),
            d["gd_steps_kappa"](gd, gd_steps),
            d["heavy_ball_steps_sqrt_kappa"](hb, hb_steps),
            d["small_lr_stalls"](loss_reduction(small), {"lr": None if small is None else float(small["optim.lr"])}),
            d["large_lr_diverges"](growth(large), {"lr": None if large is None else float(large["optim.lr"]),
                                                   "status": None if large is None else large["status"]}),
            d["scaling_slows"](ratio, {"raw_steps": raw_steps, "raw_best_lr": raw_lr, "standardised_steps": std_steps,
                                       "standardised_best_lr": std_lr} | lr_edges, "; ".join(edges) or None),
        ]

    def figures(self, runs: Runs, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        fig, axes = plt.subplots(1, 4, figsize=(20, 4))
        quad = runs[runs["part"].isin(["gd", "heavy_ball"])]
        curves = quad.curves()
        if not curves.empty:
            curves = curves.dropna(subset=["train/loss"])
            start = quad.set_index("run_id")["initial_train_loss"]
            curves["relative loss"] = curves["train/loss"] / curves["run_id"].map(start)
            sns.lineplot(curves, x="step", y="relative loss", hue="kappa", style="part", errorbar=("pi", 100),
                         ax=axes[0])
            for level in WINDOW:
                axes[0].axhline(level, c="grey", ls=":")
            axes[0].set(yscale="log", xscale="symlog", xlim=(0, None), ylim=(1e-9, 2),
                        title="Quadratics: GD and heavy ball (seed band)")
        bracket_runs = runs.matching(part="bracket")
        if len(bracket_runs):
            final = bracket_runs.assign(ratio=bracket_runs["train_loss"] / bracket_runs["initial_train_loss"])
            final["ratio"] = final["ratio"].where(np.isfinite(final["ratio"]), 1e30).clip(upper=1e30)
            sns.lineplot(final, x="optim.lr", y="ratio", marker="o", errorbar=("pi", 100), ax=axes[1])
            lam = np.nanmedian([bracket(bracket_runs.matching(seed=s))["lambda_max"]
                                for s in bracket_runs["seed"].unique()])
            axes[1].axvline(2 / lam, c="red", ls="--", label="2 / lambda_max (measured)")
            axes[1].set(yscale="log", xlabel="step size", ylabel="final / initial loss",
                        title="Stability bound on a quadratic (kappa 10)")
            axes[1].legend(fontsize=7)
        scaling = runs.matching(part="scaling")
        probes = scaling.curves()
        if not probes.empty and "probe/loss" in probes:
            probes = probes.dropna(subset=["probe/loss"])
            best = {}
            for std, rows in scaling.groupby(scaling["data.standardise"].astype(bool)):
                by_lr = rows.groupby("optim.lr")["steps_to_target"].median()
                best[std] = by_lr.idxmin() if by_lr.notna().any() else rows["optim.lr"].iloc[0]
            keep = probes[probes.apply(lambda r: r["inputs"] is not None and
                                       float(scaling.set_index("run_id").loc[r["run_id"], "optim.lr"])
                                       == best[bool(scaling.set_index("run_id").loc[r["run_id"], "data.standardise"])],
                                       axis=1)]
            keep = keep.assign(inputs=keep["inputs"].str.split("_lr").str[0])
            sns.lineplot(keep, x="step", y="probe/loss", hue="inputs", errorbar=("pi", 100), ax=axes[2])
            axes[2].set(yscale="log", title="Digits MLP: scaled inputs, raw vs standardised (best lr each)",
                        ylabel="training loss (probe set)")
        mlp = runs.matching(part="mlp")
        if len(mlp):
            ratio = (mlp["train_loss"] / mlp["initial_train_loss"]).where(mlp["status"] == "done", np.inf)
            shown = mlp.assign(ratio=ratio.replace(np.inf, 1e3).clip(upper=1e3))
            sns.lineplot(shown, x="optim.lr", y="ratio", marker="o", errorbar=("pi", 100), ax=axes[3])
            axes[3].axhline(1 - STALLED, c="grey", ls=":", label="stalled (loss fell < 10%)")
            axes[3].axhline(1, c="red", ls=":", label="start")
            axes[3].set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final / initial loss (diverged: 1e3)",
                        title="Digits MLP, 5 epochs of SGD")
            axes[3].legend(fontsize=7)
        fig.tight_layout()
        return save(fig, outdir / "step_size")

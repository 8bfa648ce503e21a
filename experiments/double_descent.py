"""Model-wise double descent (Belkin et al. 2019, "Reconciling modern machine learning practice and the
bias-variance trade-off", Figs. 1-2; Nakkiran et al. 2019, "Deep double descent", Fig. 1 and Sec. 5).

The interpolation threshold is the smallest width whose training error (on the noisy training labels) falls
below INTERPOLATES; the peak is the worst test error among the widths within a factor of 2 of it; the first
descent's bottom is the best test error of the narrower widths, the second descent's end the widest width's.
Claims, each measured on every seed:
1. The peak stands above the first descent: test error rises again near the interpolation threshold after
   falling with width (a local maximum, Nakkiran et al. Fig. 1), not merely the largest error over widths.
2. The peak stands above the second descent: past the threshold test error falls again, and the widest model
   ends below the peak.
3. The widest model beats the best under-parameterised one (Belkin et al. Fig. 2; Nakkiran et al. Fig. 1).
Trained to convergence with a fixed step budget and no early stopping; every number is this suite's.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from experiments import RECIPES
from framework.plots import save, sns_setup
from framework.recipe import Recipe
from framework.results.runs import Runs
from framework.verdict import Claim, above

INTERPOLATES = 0.01   # training error at most this: the width interpolates its (noisy) training set
NEAR = 2.0            # the peak is looked for within this factor of the threshold width


def curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean train and test error per width over the given runs (one seed's: its own curve)."""
    done = runs.matching(status="done")
    return (done.groupby("model.width", as_index=False)[["train_error", "test_error"]].mean()
            .sort_values("model.width").reset_index(drop=True))


def threshold_width(c: pd.DataFrame):
    hit = c[c["train_error"] <= INTERPOLATES]
    return int(hit["model.width"].iloc[0]) if len(hit) else None


def landmarks(c: pd.DataFrame) -> dict:
    """Threshold, peak, first-descent bottom and widest model of one curve (nan where the curve lacks them)."""
    thr = threshold_width(c)
    nan = math.nan
    out = {"threshold_width": thr, "peak_width": None, "peak_test_error": nan, "first_descent_bottom": nan,
           "widest_test_error": float(c["test_error"].iloc[-1]) if len(c) else nan}
    if thr is None:
        return out
    window = c[(c["model.width"] >= thr / NEAR) & (c["model.width"] <= thr * NEAR)]
    peak = window.loc[window["test_error"].idxmax()]
    under = c[c["model.width"] < peak["model.width"]]
    under_threshold = c[c["model.width"] < thr]
    return out | {"peak_width": int(peak["model.width"]), "peak_test_error": float(peak["test_error"]),
                  "first_descent_bottom": float(under["test_error"].min()) if len(under) else nan,
                  "best_underparameterised": float(under_threshold["test_error"].min()) if len(under_threshold)
                  else nan}


@RECIPES.register("double_descent")
class DoubleDescent(Recipe):
    name = "double_descent"
    title = "Model-wise double descent: test error peaks at the interpolation threshold, then falls"
    papers = ["Belkin et al. 2019, PNAS, Figs. 1-2", "Nakkiran et al. 2019, ICLR 2020, Fig. 1"]

    def measure(self, runs: Runs) -> list[Claim]:
        c = curve(runs)
        m = landmarks(c)
        noise = float(runs["data.label_noise"].iloc[0])
        curve_numbers = {f"test_error@{w}": round(e, 4) for w, e in zip(c["model.width"], c["test_error"])} | \
            {f"train_error@{w}": round(e, 4) for w, e in zip(c["model.width"], c["train_error"])}
        shown = m | curve_numbers
        best_under = m.get("best_underparameterised", math.nan)
        return [
            Claim(f"Test error rises again to a peak near the interpolation threshold after a first descent "
                  f"(label noise {noise:g})", "Nakkiran et al. 2019, Fig. 1 and Sec. 5; Belkin et al. 2019, Fig. 1",
                  f"peak test error (widths within {NEAR:g}x of the threshold) - best narrower width's",
                  m["peak_test_error"] - m["first_descent_bottom"], above(0.0), shown),
            Claim("Past the peak test error falls again: the widest model ends below the peak",
                  "Belkin et al. 2019, Fig. 1 (second descent); Nakkiran et al. 2019, Fig. 1",
                  "peak test error - widest width's", m["peak_test_error"] - m["widest_test_error"], above(0.0),
                  shown),
            Claim("The widest model beats the best under-parameterised one",
                  "Belkin et al. 2019, Fig. 2; Nakkiran et al. 2019, Fig. 1",
                  "best test error below the threshold - widest width's", best_under - m["widest_test_error"],
                  above(0.0), shown),
        ]

    def figures(self, runs: Runs, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        done = runs.matching(status="done")
        long = done.melt(id_vars=["model.width"], value_vars=["train_error", "test_error"], var_name="split",
                         value_name="error")
        long["split"] = long["split"].str.replace("_error", "")
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        # seeds as a band: the mean over seeds and its 95% interval
        sns.lineplot(long, x="model.width", y="error", hue="split", marker="o", errorbar=("ci", 95), ax=ax)
        thr = threshold_width(curve(runs))
        if thr:
            ax.axvline(thr, ls="--", c="grey")
            ax.text(thr, ax.get_ylim()[1] * 0.95, " interpolation threshold", color="grey", fontsize=7, va="top")
        ax.set(xscale="log", xlabel="hidden width (units)", ylabel="error (0-1 loss)",
               title=f"Model-wise double descent, {done['data.label_noise'].iloc[0]:.0%} label noise"
               if len(done) else "Model-wise double descent")
        fig.tight_layout()
        return save(fig, outdir / "double_descent")

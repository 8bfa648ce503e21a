"""Model-wise double descent (Belkin et al. 2019, "Reconciling modern machine learning practice and the
bias-variance trade-off", Figs. 1-2; Nakkiran et al. 2019, "Deep double descent", Fig. 1 and Sec. 5).

The interpolation threshold is the smallest width whose training error (on the noisy training labels) falls
below INTERPOLATES; the peak is the width whose test error rises most above the best of the narrower widths (the
first descent's bottom), looked for over every width (a peak at the widest width is censored: the curve may rise
further; the largest error over widths was no peak: it is the narrowest, under-fitted net); the second descent's
end is the widest width's test error. Label noise is Nakkiran et al.'s: a noisy label is a wrong one.
Claims, each measured on every seed:
1. The peak stands above the first descent: test error rises again after falling with width, by more than one
   binomial standard error (a largest rise over widths is biased up by the noise).
2. The peak sits near the interpolation threshold (within a factor 2): tested, where it was once assumed by
   looking for the peak only there.
3. The peak stands above the second descent: past it test error falls again, the widest model below the peak.
4. The widest model beats the best under-parameterised one, picked on the validation split and scored on the
   test split (a minimum over widths on the test set itself is biased low by about the deficit judged).
Trained to convergence with a fixed step budget and no early stopping; every number is this suite's.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from experiments import RECIPES
from framework.claims import Definition, Definitions
from framework.plots import save, sns_setup
from framework.recipe import Recipe
from framework.results.runs import Runs
from framework.verdict import Claim, above, within

INTERPOLATES = 0.01   # training error at most this: the width interpolates its (noisy) training set
RISE = 0.0225         # a rise past the noise: one binomial standard error of the difference of two test errors at
                      # 15% on ~500 test digits, sqrt(2 x 0.15 x 0.85 / 503); a largest rise over widths is biased up
NEAR = 1.0            # the peak "near" the threshold: within log2 1 (a factor 2, one grid step or two) of it
NAKKIRAN, BELKIN = "Nakkiran et al. 2019", "Belkin et al. 2019"

DEFINITIONS = Definitions(
    Definition("peak_after_first_descent", "Test error rises again to a peak after a first descent (label noise "
               "0.2, a wrong label)",
               quote="as we increase model size, performance first gets worse and then gets better",
               where=f"{NAKKIRAN}, abstract, Fig. 1 and Sec. 5 (the first descent: their Fig. 1 at 15-20% noise)",
               statistic="largest rise over widths: a width's test error - the lowest of the narrower widths' (the "
                         "peak: the width where it is largest)", criterion=above(RISE),
               source="closed form: one binomial standard error of the difference of two test errors at 15% on "
                      "~500 test digits (0.0225)"),
    Definition("peak_near_threshold", "The peak sits near the interpolation threshold",
               quote="the peak in test error occurs around the interpolation threshold, when the models are just "
                     "barely able to fit the train set", where=f"{NAKKIRAN}, Sec. 5",
               statistic="log2 peak width / interpolation threshold width (the smallest width with training "
                         "error <= 0.01)", criterion=within(-NEAR, NEAR),
               source="convention: within a factor 2 (the grid's step is 1.3x-4x)"),
    Definition("second_descent", "Past the peak test error falls again: the widest model ends below the peak",
               quote="performance first gets worse and then gets better", where=f"{NAKKIRAN}, abstract and Fig. 1; "
               f"{BELKIN}, Fig. 1", statistic="peak test error - widest width's", criterion=above(0.0),
               source="convention: any fall, the interval over seeds judging it"),
    Definition("widest_beats_underparameterised", "The widest model beats the best under-parameterised one",
               quote="the risk of the over-parameterized models can be lower than the risk of the best "
                     "under-parameterized model", paraphrase=True, where=f"{BELKIN}, Fig. 2; {NAKKIRAN}, Fig. 1",
               statistic="test error of the under-parameterised width picked on validation error - widest "
                         "width's test error (no selection on the test set)", criterion=above(0.0),
               source="convention: any gain, the interval over seeds judging it"),
)


def curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean train, validation and test error per width over the given runs (one seed's: its own curve)."""
    done = runs.matching(status="done")
    cols = [c for c in ("train_error", "val_error", "test_error") if c in done.columns]
    return (done.groupby("model.width", as_index=False)[cols].mean()
            .sort_values("model.width").reset_index(drop=True))


def threshold_width(c: pd.DataFrame):
    hit = c[c["train_error"] <= INTERPOLATES]
    return int(hit["model.width"].iloc[0]) if len(hit) else None


def landmarks(c: pd.DataFrame) -> dict:
    """Threshold, peak (over every width: its position is tested, not assumed), first-descent bottom, the
    under-parameterised width picked on validation and the widest model of one curve (nan where it lacks them)."""
    thr = threshold_width(c)
    nan = math.nan
    out = {"threshold_width": thr, "peak_width": None, "peak_test_error": nan, "first_descent_bottom": nan,
           "widest_test_error": float(c["test_error"].iloc[-1]) if len(c) else nan, "peak_censored": None,
           "picked_underparameterised": None, "best_underparameterised": nan}
    if not len(c):
        return out
    # the peak: the width whose test error rises most above the lowest error of the narrower widths (the first
    # descent's bottom); the narrowest net, worst of all when it underfits, is never a peak after a descent
    test = c["test_error"].to_numpy()
    rises = [test[j] - test[:j].min() for j in range(1, len(test))]
    if not rises:
        return out
    j = 1 + max(range(len(rises)), key=lambda k: rises[k])
    peak = c.iloc[j]
    out |= {"peak_width": int(peak["model.width"]), "peak_test_error": float(peak["test_error"]),
            "first_descent_bottom": float(test[:j].min())}
    if j == len(test) - 1:
        out["peak_censored"] = f"the largest rise is at the widest width ({int(peak['model.width'])})"
    if thr is not None:
        below_thr = c[c["model.width"] < thr]
        if len(below_thr) and "val_error" in c and below_thr["val_error"].notna().all():
            pick = below_thr.loc[below_thr["val_error"].idxmin()]
            out |= {"picked_underparameterised": int(pick["model.width"]),
                    "best_underparameterised": float(pick["test_error"])}
    return out


@RECIPES.register("double_descent")
class DoubleDescent(Recipe):
    name = "double_descent"
    title = "Model-wise double descent: test error peaks at the interpolation threshold, then falls"
    papers = ["Belkin et al. 2019, PNAS, Figs. 1-2", "Nakkiran et al. 2019, ICLR 2020, Fig. 1"]
    definitions = DEFINITIONS

    def measure(self, runs: Runs) -> list[Claim]:
        c = curve(runs)
        m = landmarks(c)
        curve_numbers = {f"test_error@{w}": round(e, 4) for w, e in zip(c["model.width"], c["test_error"])} | \
            {f"train_error@{w}": round(e, 4) for w, e in zip(c["model.width"], c["train_error"])}
        shown = m | curve_numbers
        thr, peak_w = m["threshold_width"], m["peak_width"]
        position = math.log2(peak_w / thr) if thr and peak_w else math.nan
        narrowest = int(c["model.width"].min()) if len(c) else None
        picked = m["picked_underparameterised"]
        d = self.definitions
        return [
            d["peak_after_first_descent"](m["peak_test_error"] - m["first_descent_bottom"], shown,
                                          m["peak_censored"]),
            d["peak_near_threshold"](position, shown, m["peak_censored"]),
            d["second_descent"](m["peak_test_error"] - m["widest_test_error"], shown, m["peak_censored"]),
            d["widest_beats_underparameterised"](
                m["best_underparameterised"] - m["widest_test_error"], shown,
                f"the narrowest width ({narrowest}) picked on validation" if picked is not None and picked == narrowest
                else None),
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

"""Model-wise double descent (Belkin et al. 2019, "Reconciling modern machine learning practice and the
bias-variance trade-off", Fig. 1; Nakkiran et al. 2019, "Deep double descent", Fig. 1 and Sec. 5).

Claims:
1. Test error has an interior peak: the worst width is neither the narrowest nor the widest, and its test
   error is above both theirs.
2. The peak sits near the interpolation threshold: the smallest width whose training error (on the noisy
   training labels) reaches ~0.
3. Past the threshold test error falls again with width (the second descent), and the widest model ends
   below the peak.
Trained to convergence with a fixed step budget and no early stopping; every number is this suite's.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from experiments import RECIPES
from framework.plots import save, sns_setup
from framework.recipe import Claim, Recipe

INTERPOLATES = 0.01   # training error at most this: the width interpolates its (noisy) training set
MARGIN = 0.01         # the peak must stand above the ends by at least this much test error
NEAR = 1.0            # |log2(peak width / threshold width)| at most this: "near" = within a factor of 2
DESCENT = -0.7        # Spearman(width, test error) past the threshold at most this: test error falls


def curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean train and test error per width over seeds, from the finished runs."""
    done = runs[runs["status"] == "done"]
    return (done.groupby("model.width", as_index=False)[["train_error", "test_error"]].mean()
            .sort_values("model.width").reset_index(drop=True))


def threshold_width(c: pd.DataFrame):
    hit = c[c["train_error"] <= INTERPOLATES]
    return int(hit["model.width"].iloc[0]) if len(hit) else None


@RECIPES.register("double_descent")
class DoubleDescent(Recipe):
    name = "double_descent"
    title = "Model-wise double descent: test error peaks at the interpolation threshold, then falls"
    papers = ["Belkin et al. 2019, PNAS, Fig. 1", "Nakkiran et al. 2019, ICLR 2020, Fig. 1"]

    def claims(self, runs: pd.DataFrame, store) -> list[Claim]:
        c = curve(runs)
        widths, test = c["model.width"].tolist(), c["test_error"].tolist()
        errors = {f"test_error@{w}": round(e, 4) for w, e in zip(widths, test)}
        if len(c) < 3:
            return [Claim("Test error has an interior peak", "Nakkiran et al. 2019, Fig. 1", "needs >= 3 widths",
                          {"widths_done": len(c)}, False)]
        peak_i = int(c["test_error"].idxmax())
        peak_w, peak_e = widths[peak_i], test[peak_i]
        interior = 0 < peak_i < len(c) - 1
        above_ends = peak_e - test[0] >= MARGIN and peak_e - test[-1] >= MARGIN
        thr = threshold_width(c)
        distance = abs(math.log2(peak_w / thr)) if thr else float("inf")
        past = c[c["model.width"] >= (thr or math.inf)]
        rho = past["model.width"].corr(past["test_error"], method="spearman") if len(past) >= 3 else float("nan")
        noise = float(runs["cfg.data.label_noise"].iloc[0])
        return [
            Claim(f"Test error has an interior peak over width (label noise {noise:g})",
                  "Nakkiran et al. 2019, Fig. 1; Belkin et al. 2019, Fig. 1",
                  f"worst width is neither end, and its test error exceeds both ends' by >= {MARGIN}",
                  {"peak_width": peak_w, "peak_test_error": peak_e, "narrowest_test_error": test[0],
                   "widest_test_error": test[-1]} | errors, interior and above_ends),
            Claim("The peak sits near the interpolation threshold", "Nakkiran et al. 2019, Sec. 5 (EMC hypothesis)",
                  f"threshold = smallest width with training error <= {INTERPOLATES}; "
                  f"|log2(peak/threshold)| <= {NEAR:g}",
                  {"peak_width": peak_w, "threshold_width": thr, "log2_distance": distance}
                  | {f"train_error@{w}": round(e, 4) for w, e in zip(widths, c["train_error"])},
                  interior and thr is not None and distance <= NEAR),
            Claim("Past the threshold test error falls with width, and the widest model ends below the peak",
                  "Belkin et al. 2019, Fig. 1 (second descent); Nakkiran et al. 2019, Fig. 1",
                  f"Spearman(width, test error) over widths >= threshold <= {DESCENT}, over >= 3 widths, and "
                  f"widest test error <= peak - {MARGIN}",
                  {"spearman_past_threshold": rho, "widths_past_threshold": len(past),
                   "widest_test_error": test[-1], "peak_test_error": peak_e},
                  len(past) >= 3 and rho <= DESCENT and test[-1] <= peak_e - MARGIN),
        ]

    def figures(self, runs: pd.DataFrame, store, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        done = runs[runs["status"] == "done"]
        long = done.melt(id_vars=["model.width"], value_vars=["train_error", "test_error"], var_name="split",
                         value_name="error")
        long["split"] = long["split"].str.replace("_error", "")
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        sns.lineplot(long, x="model.width", y="error", hue="split", marker="o", errorbar=("pi", 100), ax=ax)
        thr = threshold_width(curve(runs))
        if thr:
            ax.axvline(thr, ls="--", c="grey")
            ax.text(thr, ax.get_ylim()[1] * 0.95, " interpolation threshold", color="grey", fontsize=7, va="top")
        ax.set(xscale="log", xlabel="hidden width (units)", ylabel="error (0-1 loss)",
               title=f"Model-wise double descent, {done['cfg.data.label_noise'].iloc[0]:.0%} label noise"
               if len(done) else "Model-wise double descent")
        fig.tight_layout()
        return save(fig, outdir / "double_descent")

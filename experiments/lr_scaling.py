"""Large-batch training and the linear learning-rate scaling rule (Goyal et al. 2017, "Accurate, large
minibatch SGD: training ImageNet in 1 hour", Sec. 2 and Fig. 2; the seed lecture's eta_B = B * eta_1), and
where it breaks (McCandlish et al. 2018, eps_opt(B) = eps_max / (1 + B_noise / B); Shallue et al. 2019).

Every batch size gets the same epoch budget, as in Goyal et al. The best learning rate of a batch is the sweep's
lowest final training loss there; "the small-batch result" is the held-out (test-split) error of that best run at
the smallest batch, and a run "matches" it when its held-out error is within TOL of it (Goyal et al. compare
validation error). The critical batch is the largest batch up to which every batch's best run (over the
learning-rate grid) still matches the smallest batch's best final training loss within LOSS_TOL.
Claims, each measured on every seed:
1. Up to the critical batch, the best learning rate grows linearly with batch size (log-log slope near 1).
2. Beyond it the gain stops: the best learning rate grows at most half as fast as linear past it.
3. The linear scaling rule with warm-up matches the small-batch held-out error at every batch up to the
   critical one.
4. The rule breaks at the largest batch: its held-out error no longer matches.
5. Warm-up extends the rule: it matches up to a larger batch with warm-up than without (Goyal et al. Fig. 2).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import RECIPES
from framework.plots import save, sns_setup
from framework.recipe import Recipe, history
from framework.verdict import Claim, above, below, within

LOSS_TOL = 0.01       # best final training loss within this (nats) of the smallest batch's: the batch still scales
TOL = 0.02            # held-out error within this of the small-batch result: "matches" (2 binomial SE of a 5%
                      # error on the ~450 test digits)
SLOPE = (0.7, 1.3)    # log-log slope of best LR vs batch size accepted as linear
TARGET_LOSS = 0.1     # for the steps-to-target figure


def _loss(row) -> float:
    return float(row["train_loss"]) if row["status"] == "done" and math.isfinite(row["train_loss"]) else math.inf


def _error(row) -> float:
    """Held-out error; a diverged run predicts nothing (error 1)."""
    if row["status"] == "diverged":
        return 1.0
    return float(row["test_error"]) if row["status"] == "done" and pd.notna(row.get("test_error")) else math.nan


def analyse(runs: pd.DataFrame) -> dict:
    """Best LR and loss per batch size from one seed's sweep, the critical batch, and the linear-rule outcomes."""
    sweep = runs[runs["rule"] == "sweep"].copy()
    sweep["loss"] = sweep.apply(_loss, axis=1)
    batches = sorted(sweep["data.batch_size"].unique())
    best = sweep.loc[sweep.groupby("data.batch_size")["loss"].idxmin()].set_index("data.batch_size")
    reference_loss = float(best.loc[batches[0], "loss"])
    reference = _error(best.loc[batches[0]])
    critical = None
    for b in batches:
        if best.loc[b, "loss"] - reference_loss <= LOSS_TOL:
            critical = b
        else:
            break
    rule = runs[runs["rule"] == "linear_warmup"].copy()
    base_lr = float(rule["cfg.optim.lr"].iloc[0]) if len(rule) else math.nan
    base_batch = int(rule["cfg.optim.base_batch_size"].iloc[0]) if len(rule) else batches[0]
    warm = {int(r["data.batch_size"]): _error(r) for _, r in rule.iterrows()}
    cold = {}
    for b in batches:  # the rule without warm-up: the sweep run at lr = base_lr * b / base_batch, if on the grid
        hit = sweep[(sweep["data.batch_size"] == b) & np.isclose(sweep["optim.lr"], base_lr * b / base_batch)]
        if len(hit):
            cold[int(b)] = _error(hit.iloc[0])

    def matches_up_to(results: dict):
        ok = None
        for b in sorted(results):
            if results[b] - reference <= TOL:
                ok = b
            else:
                break
        return ok
    return {"batches": [int(b) for b in batches], "best_lr": {int(b): float(best.loc[b, "optim.lr"]) for b in batches},
            "best_loss": {int(b): float(best.loc[b, "loss"]) for b in batches}, "reference": reference,
            "reference_loss": reference_loss, "critical": None if critical is None else int(critical), "warm": warm,
            "cold": cold, "warm_ok": matches_up_to(warm), "cold_ok": matches_up_to(cold), "base_lr": base_lr,
            "base_batch": base_batch}


def _slope(xs, ys) -> float:
    if len(xs) < 2:
        return math.nan
    return float(np.polyfit(np.log2(xs), np.log2(ys), 1)[0])


@RECIPES.register("lr_scaling")
class LrScaling(Recipe):
    name = "lr_scaling"
    title = "Large-batch linear learning-rate scaling with warm-up (Goyal et al. 2017), and where it breaks"
    papers = ["Goyal et al. 2017, Sec. 2 and Fig. 2", "McCandlish et al. 2018", "Shallue et al. 2019, JMLR"]

    def measure(self, runs: pd.DataFrame, store) -> list[Claim]:
        a = analyse(runs)
        crit, batches = a["critical"], a["batches"]
        linear = [b for b in batches if crit is not None and b <= crit]
        slope = _slope(linear, [a["best_lr"][b] for b in linear]) if len(linear) >= 3 else math.nan
        largest = batches[-1]
        beyond = crit is not None and crit < largest
        slope_beyond = _slope([crit, largest], [a["best_lr"][crit], a["best_lr"][largest]]) if beyond else math.nan
        best = {f"best_lr@{b}": a["best_lr"][b] for b in batches}
        losses = {f"best_loss@{b}": round(a["best_loss"][b], 5) for b in batches}
        warm_gap = {b: v - a["reference"] for b, v in a["warm"].items()}
        cold_gap = {f"no_warmup_gap@{b}": round(v - a["reference"], 4) for b, v in a["cold"].items()}
        shown_warm = {f"warmup_gap@{b}": round(v, 4) for b, v in warm_gap.items()}
        worst_linear = max((warm_gap.get(b, math.nan) for b in linear), default=math.nan) if linear else math.nan
        extends = math.log2(a["warm_ok"] / a["cold_ok"]) if a["warm_ok"] and a["cold_ok"] else \
            (math.inf if a["warm_ok"] and not a["cold_ok"] else math.nan)
        return [
            Claim("Up to the critical batch the best learning rate grows linearly with batch size",
                  "Goyal et al. 2017, Sec. 2.1; McCandlish et al. 2018, Sec. 2.2 (B << B_noise)",
                  "log-log slope of best LR vs batch, batches <= critical (>= 3 of them)", slope, within(*SLOPE),
                  {"critical_batch": crit, "batches_in_fit": len(linear)} | best),
            Claim("Beyond the critical batch the gain stops", "McCandlish et al. 2018, Fig. 3; Shallue et al. 2019",
                  "log-log slope of best LR from the critical to the largest batch", slope_beyond, below(0.5),
                  {"critical_batch": crit, "largest_batch": largest, "reference_loss": a["reference_loss"]}
                  | best | losses),
            Claim("The linear scaling rule with warm-up matches the small-batch held-out error up to the critical "
                  "batch", "Goyal et al. 2017, Sec. 2.2, Fig. 2 and Table 2",
                  "largest held-out error gap (rule with warm-up - small-batch result) over batches <= critical",
                  worst_linear, below(TOL), {"critical_batch": crit, "small_batch_error": a["reference"],
                                             "base_lr": a["base_lr"], "base_batch": a["base_batch"]} | shown_warm),
            Claim(f"The linear scaling rule breaks at the largest batch ({largest})", "Goyal et al. 2017, Sec. 5.1",
                  "held-out error gap of the rule with warm-up at the largest batch", warm_gap.get(largest, math.nan),
                  above(TOL), shown_warm),
            Claim("Warm-up extends linear scaling to larger batches", "Goyal et al. 2017, Sec. 2.2 and Fig. 2",
                  "log2 (largest batch matched with warm-up / without)", extends, above(0.0),
                  {"matched_up_to_with_warmup": a["warm_ok"], "matched_up_to_without_warmup": a["cold_ok"]}
                  | cold_gap),
        ]

    def figures(self, runs: pd.DataFrame, store, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        seeds = sorted(runs["seed"].unique()) if "seed" in runs else [None]
        per_seed = [analyse(runs[runs["seed"] == s] if s is not None else runs) for s in seeds]
        a = per_seed[0]
        paths = []
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        b = np.array(a["batches"], dtype=float)
        for i, (seed, one) in enumerate(zip(seeds, per_seed)):  # seeds as points, jittered to stay visible
            jitter = 2 ** (0.04 * (i - (len(seeds) - 1) / 2))
            axes[0].plot(b * jitter, [one["best_lr"][x] for x in one["batches"]], "o-", alpha=0.6, ms=4,
                         label=f"best LR, seed {seed}")
            if one["critical"]:
                axes[0].axvline(one["critical"], c="grey", ls=":", alpha=0.5)
        axes[0].plot(b, a["best_lr"][a["batches"][0]] * b / b[0], "k--", lw=0.8, label="slope 1 (linear rule)")
        axes[0].set(xscale="log", yscale="log", xlabel="batch size (samples)", ylabel="learning rate",
                    title="Best learning rate vs batch size")
        axes[0].legend(fontsize=7)

        sweep = runs[runs["rule"] == "sweep"]
        curves = history(sweep, store, self.name)
        if not curves.empty and "train/loss_epoch" in curves:
            ep = curves.dropna(subset=["train/loss_epoch"])
            hit = ep[ep["train/loss_epoch"] <= TARGET_LOSS].groupby("run_id")["step"].min() + 1
            steps = sweep.set_index("run_id")[["data.batch_size"]].join(hit.rename("steps_to_loss"), how="inner")
            fastest = steps.groupby("data.batch_size")["steps_to_loss"].min()
        else:
            fastest = pd.Series(dtype=float)
        if len(fastest):
            axes[1].plot(fastest.index, fastest.values, "o-", label="fastest LR")
            axes[1].plot(fastest.index, fastest.iloc[0] * fastest.index[0] / fastest.index, "k--", lw=0.8,
                         label="perfect scaling (1/B)")
            axes[1].legend(fontsize=7)
        else:
            axes[1].text(0.5, 0.5, f"no run reached training loss {TARGET_LOSS}", ha="center",
                         transform=axes[1].transAxes)
        axes[1].set(xscale="log", yscale="log", xlabel="batch size (samples)",
                    ylabel=f"steps to training loss {TARGET_LOSS}", title="Steps to target vs batch size")

        grid = sweep.assign(loss=sweep.apply(_loss, axis=1))
        heat = grid.pivot_table(index="optim.lr", columns="data.batch_size", values="loss", aggfunc="median")
        status = grid.pivot_table(index="optim.lr", columns="data.batch_size", values="status", aggfunc="first")
        shown = np.log10(heat.replace(math.inf, np.nan).clip(lower=1e-4))
        shown, status = shown.iloc[::-1], status.iloc[::-1]
        sns.heatmap(shown, ax=axes[2], cmap="viridis_r", cbar_kws={"label": "log10 final training loss"})
        for i, j in zip(*np.nonzero((status == "diverged").to_numpy())):  # NaN cells get no annotation
            axes[2].text(j + 0.5, i + 0.5, "div", ha="center", va="center", color="red", fontsize=8)
        axes[2].set(xlabel="batch size", ylabel="learning rate",
                    title="Final training loss, median over seeds (div = diverged)")
        fig.tight_layout()
        paths += save(fig, outdir / "lr_scaling")
        return paths

"""Large-batch training and the linear learning-rate scaling rule (Goyal et al. 2017, "Accurate, large
minibatch SGD: training ImageNet in 1 hour", Sec. 2 and Fig. 2; the seed lecture's eta_B = B * eta_1), and
where it breaks (Shallue et al. 2019; McCandlish et al. 2018).

Every batch size gets the same epoch budget. "The small-batch result" is the best final training loss at the
smallest batch; a batch "matches" it within TOL. The critical batch is the largest batch up to which every
batch's best run (over the learning-rate grid) matches.
Claims:
1. Up to the critical batch, the best learning rate grows linearly with batch size (log-log slope near 1).
2. Beyond it the gain stops: the critical batch lies inside the grid and the best learning rate grows
   markedly slower than linearly past it.
3. The linear scaling rule with warm-up matches the small-batch result at every batch up to the critical one.
4. The rule breaks at the largest batch: it no longer matches.
5. Warm-up extends the rule: it matches up to a larger batch with warm-up than without (Goyal et al. Fig. 2).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import RECIPES
from framework.plots import save, sns_setup
from framework.recipe import Claim, Recipe, history

TOL = 0.01            # final training loss (nats) within this of the small-batch result: "matches"
SLOPE = (0.7, 1.3)    # log-log slope of best LR vs batch size accepted as linear
TARGET_LOSS = 0.1     # for the steps-to-target figure


def _loss(row) -> float:
    return float(row["train_loss"]) if row["status"] == "done" and math.isfinite(row["train_loss"]) else math.inf


def analyse(runs: pd.DataFrame) -> dict:
    """Best LR and loss per batch size from the sweep, the critical batch, and the linear-rule outcomes."""
    sweep = runs[runs["rule"] == "sweep"].copy()
    sweep["loss"] = sweep.apply(_loss, axis=1)
    batches = sorted(sweep["data.batch_size"].unique())
    best = sweep.loc[sweep.groupby("data.batch_size")["loss"].idxmin()].set_index("data.batch_size")
    reference = float(best.loc[batches[0], "loss"])
    critical = None
    for b in batches:
        if best.loc[b, "loss"] - reference <= TOL:
            critical = b
        else:
            break
    rule = runs[runs["rule"] == "linear_warmup"].copy()
    base_lr = float(rule["cfg.optim.lr"].iloc[0]) if len(rule) else math.nan
    base_batch = int(rule["cfg.optim.base_batch_size"].iloc[0]) if len(rule) else batches[0]
    warm = {int(r["data.batch_size"]): _loss(r) for _, r in rule.iterrows()}
    cold = {}
    for b in batches:  # the rule without warm-up: the sweep run at lr = base_lr * b / base_batch, if on the grid
        hit = sweep[(sweep["data.batch_size"] == b) & np.isclose(sweep["optim.lr"], base_lr * b / base_batch)]
        if len(hit):
            cold[int(b)] = float(hit["loss"].iloc[0])

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
            "critical": None if critical is None else int(critical), "warm": warm, "cold": cold,
            "warm_ok": matches_up_to(warm), "cold_ok": matches_up_to(cold), "base_lr": base_lr,
            "base_batch": base_batch}


def _slope(xs, ys) -> float:
    if len(xs) < 2:
        return math.nan
    return float(np.polyfit(np.log2(xs), np.log2(ys), 1)[0])


@RECIPES.register("lr_scaling")
class LrScaling(Recipe):
    name = "lr_scaling"
    title = "Large-batch linear learning-rate scaling with warm-up (Goyal et al. 2017), and where it breaks"
    papers = ["Goyal et al. 2017, Sec. 2 and Fig. 2", "Shallue et al. 2019, JMLR"]

    def claims(self, runs: pd.DataFrame, store) -> list[Claim]:
        a = analyse(runs)
        crit, batches = a["critical"], a["batches"]
        linear = [b for b in batches if crit is not None and b <= crit]
        slope = _slope(linear, [a["best_lr"][b] for b in linear])
        beyond = crit is not None and crit < batches[-1]
        growth = a["best_lr"][batches[-1]] / a["best_lr"][crit] if beyond else math.nan
        linear_growth = batches[-1] / crit if beyond else math.nan
        best = {f"best_lr@{b}": a["best_lr"][b] for b in batches}
        losses = {f"best_loss@{b}": round(a["best_loss"][b], 5) for b in batches}
        warm_gap = {f"warmup_gap@{b}": round(v - a["reference"], 5) for b, v in a["warm"].items()}
        cold_gap = {f"no_warmup_gap@{b}": round(v - a["reference"], 5) for b, v in a["cold"].items()}
        warm_all = crit is not None and all(b in a["warm"] and a["warm"][b] - a["reference"] <= TOL for b in linear)
        largest = batches[-1]
        return [
            Claim("Up to the critical batch the best learning rate grows linearly with batch size",
                  "Goyal et al. 2017, Sec. 2.1; seed lecture (eta_B = B eta_1)",
                  f"log-log slope of best LR vs batch over batches <= critical in [{SLOPE[0]}, {SLOPE[1]}], "
                  f">= 3 batch sizes", {"slope": slope, "critical_batch": crit, "batches_in_fit": len(linear)} | best,
                  len(linear) >= 3 and SLOPE[0] <= slope <= SLOPE[1]),
            Claim("Beyond the critical batch the gain stops", "Goyal et al. 2017, Fig. 1; Shallue et al. 2019",
                  f"critical batch < largest batch, where best loss exceeds the small-batch result by > {TOL}, and "
                  "best LR grows at most half as fast as linear from the critical to the largest batch",
                  {"critical_batch": crit, "largest_batch": largest, "best_lr_growth": growth,
                   "linear_growth": linear_growth, "reference_loss": a["reference"]} | losses,
                  beyond and growth <= linear_growth / 2),
            Claim("The linear scaling rule with warm-up matches the small-batch result up to the critical batch",
                  "Goyal et al. 2017, Sec. 2.2 and Fig. 2",
                  f"final training loss within {TOL} of the small-batch result at every batch <= critical",
                  {"critical_batch": crit, "base_lr": a["base_lr"], "base_batch": a["base_batch"],
                   "sweep_best_lr_at_base": a["best_lr"].get(a["base_batch"])} | warm_gap, warm_all),
            Claim(f"The linear scaling rule breaks at the largest batch ({largest})", "Goyal et al. 2017, Sec. 5.1",
                  f"final training loss more than {TOL} above the small-batch result (or diverged)",
                  {f"warmup_gap@{largest}": warm_gap.get(f"warmup_gap@{largest}")},
                  largest in a["warm"] and a["warm"][largest] - a["reference"] > TOL),
            Claim("Warm-up extends linear scaling to larger batches", "Goyal et al. 2017, Sec. 2.2 and Fig. 2",
                  "largest batch matched with warm-up > largest batch matched without",
                  {"matched_up_to_with_warmup": a["warm_ok"], "matched_up_to_without_warmup": a["cold_ok"]}
                  | cold_gap, a["warm_ok"] is not None and (a["cold_ok"] is None or a["warm_ok"] > a["cold_ok"])),
        ]

    def figures(self, runs: pd.DataFrame, store, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        a = analyse(runs)
        paths = []
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        b = np.array(a["batches"], dtype=float)
        axes[0].plot(b, [a["best_lr"][x] for x in a["batches"]], "o-", label="best LR (sweep)")
        axes[0].plot(b, a["best_lr"][a["batches"][0]] * b / b[0], "k--", lw=0.8, label="slope 1 (linear rule)")
        if a["critical"]:
            axes[0].axvline(a["critical"], c="grey", ls=":", label="critical batch")
        axes[0].set(xscale="log", yscale="log", xlabel="batch size (samples)", ylabel="learning rate",
                    title="Best learning rate vs batch size")
        axes[0].legend(fontsize=7)

        sweep = runs[runs["rule"] == "sweep"]
        curves = history(sweep, store, self.name)
        if not curves.empty and "train/loss_epoch" in curves:
            ep = curves.dropna(subset=["train/loss_epoch"])
            hit = ep[ep["train/loss_epoch"] <= TARGET_LOSS].groupby("run_id")["step"].min() + 1
            steps = sweep.set_index("run_id").join(hit.rename("steps_to_target"), how="inner")
            fastest = steps.groupby("data.batch_size")["steps_to_target"].min()
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
        heat = grid.pivot_table(index="optim.lr", columns="data.batch_size", values="loss", aggfunc="first")
        status = grid.pivot_table(index="optim.lr", columns="data.batch_size", values="status", aggfunc="first")
        shown = np.log10(heat.replace(math.inf, np.nan).clip(lower=1e-4))
        shown, status = shown.iloc[::-1], status.iloc[::-1]
        sns.heatmap(shown, ax=axes[2], cmap="viridis_r", cbar_kws={"label": "log10 final training loss"})
        for i, j in zip(*np.nonzero((status == "diverged").to_numpy())):  # NaN cells get no annotation
            axes[2].text(j + 0.5, i + 0.5, "div", ha="center", va="center", color="red", fontsize=8)
        axes[2].set(xlabel="batch size", ylabel="learning rate", title="Final training loss (div = diverged)")
        fig.tight_layout()
        paths += save(fig, outdir / "lr_scaling")
        return paths

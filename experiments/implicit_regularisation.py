"""SGD's implicit regularisation: small batches and large steps end in flatter minima; and what flatness is worth.

The lecture notes teach that SGD's noise regularises, "avoiding narrow (but potentially deep) local minima that will
typically generalize poorly", and that SGD finds "broader minima with smaller L2 norms". Four papers state it in
numbers this recipe measures (configs/implicit_regularisation.yaml: a `batch` part, SGD over step sizes and batch
sizes for 100 epochs each, and a `catapult` part, full-batch gradient descent at step sizes around 2 / lambda_0).
Claims, each measured on every seed:
1. Keskar et al. 2017: large-batch training ends at a sharper minimum (a larger top Hessian eigenvalue, the
   sharpness): step size 0.2, batch 256 against batch 16, after the same 100 epochs. Both nets must fit their
   training set (training error <= FIT), so that the pair compares minima, not under-training: a pair that does not
   fit is censored (claims 1-2).
2. ... and generalises worse at the same budget in epochs: the test error of the same pair.
3. The notes' "smaller L2 norms": the small-batch net's weight norm against the large-batch net's.
4. Jastrzebski et al. 2018 (three factors): the ratio eta / B, not eta or B alone, sets the width of the minimum:
   equal ratios give similar sharpness (closer than a fourfold change of the ratio moves it) ...
5. ... and larger ratios flatter minima (a negative rank correlation of sharpness with eta / B).
6. Lewkowycz et al. 2020 (the catapult phase): gradient descent at a step size between 2 / lambda_0 and about
   4 / lambda_0 (lambda_0: the sharpness at initialisation) first sees its loss grow ...
7. ... then its curvature fall until the step is stable (below 2 / eta) ...
8. ... and ends in a flatter region than a step below 2 / lambda_0.
9. Beyond the upper bound it diverges. Each catapult run is placed by its own seed's lambda_0 (its first probe):
   eta lambda_0 / 2 in (1, 2) is the catapult range, above 2 beyond it.
10. Dinh et al. 2017, the control: the small-batch ReLU net with its first layer scaled by a = 10 and the next by
   1 / a computes the same function ...
11. ... at a very different sharpness (the second layer's block of the Hessian scales by a^2). So sharpness is not a
   property of the function a net computes: Keskar's comparison means something only between nets of one
   parametrisation trained alike, which is how claims 1-2 measure it, and a flatter minimum is not by itself a
   reason to generalise better.

Sharpness here is the top eigenvalue of the training loss's Hessian (power iteration on Hessian-vector products,
framework/curvature.py), Keskar's "epsilon-sharpness" being a bounded-box variant of it. With cross-entropy the
Hessian shrinks as the margins grow, so a run that took more steps (a small batch at equal epochs) is also further
along that path: part of what Keskar et al. measure, and said here rather than corrected.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

from experiments import RECIPES
from framework.claims import Definition, Definitions
from framework.plots import save, sns_setup
from framework.recipe import Recipe
from framework.results.measures import FINISHED
from framework.results.runs import Runs
from framework.verdict import Claim, above, below

FIT = 0.01           # training error at most this: a net that fits its training set (Keskar et al. train to ~100%)
EARLY = 50           # steps in which the catapult's loss spike is looked for (it peaks within ~20 at these steps)
SB, LB, KESKAR_LR = 16, 256, 0.2   # Keskar's pair: the batch part's smallest and largest batch, at the larger step
REPARAM = 10.0       # Dinh's scale a (configs: diagnostics.reparam_scale)
SAME_FUNCTION = 1e-4  # relative test-loss difference of the rescaled net: float32 rounding, the function is the same
KESKAR, JASTRZEBSKI = "Keskar et al. 2017", "Jastrzebski et al. 2018"
LEWKOWYCZ, DINH, NOTES = "Lewkowycz et al. 2020", "Dinh et al. 2017", "the lecture notes (SGD as regulariser)"

DEFINITIONS = Definitions(
    Definition("large_batch_sharper", "Large-batch training ends at a sharper minimum than small-batch training",
               quote="large-batch methods tend to converge to sharp minimizers of the training and testing functions",
               where=f"{KESKAR}, abstract and Sec. 2.2 (Table 2)",
               statistic=f"log2 final sharpness, batch {LB} / batch {SB} (step size {KESKAR_LR}, 100 epochs; censored "
                         f"unless both fit: training error <= {FIT:g})",
               criterion=above(0.0), source="convention: any increase, the interval over seeds judging it"),
    Definition("large_batch_generalises_worse", "... and generalises worse at the same budget in epochs",
               quote="when using a larger batch there is a degradation in the quality of the model, as measured by "
                     "its ability to generalize", where=f"{KESKAR}, abstract and Table 2",
               statistic=f"test error, batch {LB} - batch {SB}, in points (censored unless both fit)",
               criterion=above(0.0), source="convention: any degradation, the interval over seeds judging it"),
    Definition("small_batch_smaller_norm", "SGD's small batches find minima with smaller weight norms",
               quote="broader minima with smaller L2 norms", where=f"{NOTES}",
               statistic=f"log2 weight L2 norm, batch {LB} / batch {SB} (the Keskar pair)",
               criterion=above(0.0), source="convention: any difference in the stated direction"),
    Definition("ratio_sets_width", "Equal eta / B give similar sharpness: the ratio, not eta or B alone",
               quote="the ratio of learning rate to batch size is a key determinant of SGD dynamics and of the width "
                     "of the final minima", where=f"{JASTRZEBSKI}, abstract and Sec. 4",
               statistic="largest |log2 sharpness ratio| over the equal-ratio pairs (0.05, 16)-(0.2, 64) and (0.05, "
                         "64)-(0.2, 256), minus the smallest over the pairs whose ratio differs fourfold at one B",
               criterion=below(0.0),
               source="convention: similar means closer than a fourfold change of the ratio moves it"),
    Definition("larger_ratio_flatter", "Larger eta / B ends in flatter minima",
               quote="higher values of the ratio lead to wider minima and often better generalization",
               where=f"{JASTRZEBSKI}, abstract and Fig. 2",
               statistic="Spearman rank correlation of final sharpness with eta / B over the batch part's six runs",
               criterion=below(0.0), source="convention: any negative rank correlation"),
    Definition("catapult_loss_grows", "Between 2 / lambda_0 and 4 / lambda_0 the loss first grows",
               quote="the loss initially grows, then the curvature decreases and the dynamics converge", paraphrase=True,
               where=f"{LEWKOWYCZ}, Sec. 2 (the catapult phase) and Fig. 1",
               statistic=f"smallest over the catapult-range runs of log10 max loss in the first {EARLY} steps / "
                         f"initial loss", criterion=above(0.0),
               source="closed form: below 2 / lambda_0 the loss of a quadratic never grows; any growth"),
    Definition("catapult_curvature_drops", "... then the curvature drops until the step is stable",
               quote="the curvature decreases until it is below 2 / eta", paraphrase=True,
               where=f"{LEWKOWYCZ}, Sec. 2 and Fig. 1",
               statistic="largest over the catapult-range runs of eta x final sharpness / 2",
               criterion=below(1.0), source="closed form: stability, eta < 2 / sharpness"),
    Definition("catapult_ends_flatter", "... and ends flatter than a small step",
               quote="At large learning rates the model captures qualitatively distinct phenomena, including the "
                     "convergence of gradient descent dynamics to flatter minima", where=f"{LEWKOWYCZ}, abstract",
               statistic="smallest over the catapult-range runs of log2 final sharpness, small step / that run",
               criterion=above(0.0), source="convention: any flattening, the interval over seeds judging it"),
    Definition("beyond_catapult_diverges", "Beyond about 4 / lambda_0 gradient descent diverges",
               quote="for learning rates larger than eta_max the dynamics diverge", paraphrase=True,
               where=f"{LEWKOWYCZ}, Sec. 2 (eta_max = 4 / lambda_0 in their model; larger for deep ReLU nets)",
               statistic="share of the runs with eta lambda_0 / 2 > 2 that diverged",
               criterion=above(0.5), source="convention: most of them"),
    Definition("reparam_same_function", "A rescaled ReLU net computes the same function",
               quote="we can exploit the particular geometry of parameter space induced by the inherent symmetries "
                     "that these architectures exhibit to build equivalent models", where=f"{DINH}, abstract and Sec. 4",
               statistic=f"|test loss of the net rescaled by a = {REPARAM:g} - test loss| / test loss (batch {SB}, "
                         f"step {KESKAR_LR})", criterion=below(SAME_FUNCTION),
               source="closed form: the same function; float32 rounding"),
    Definition("reparam_changes_sharpness", "... at an arbitrarily different sharpness",
               quote="build equivalent models corresponding to arbitrarily sharper minima",
               where=f"{DINH}, abstract and Sec. 4",
               statistic=f"log10 final sharpness, rescaled (a = {REPARAM:g}) / as trained (batch {SB}, step "
                         f"{KESKAR_LR})",
               criterion=above(1.0), source="closed form: the second layer's Hessian block scales by a^2 = 100; at "
                                           "least a decade"),
)


def _value(row, key: str) -> float:
    """A finished run's number (nan for a run that did not finish, or a number it does not have)."""
    v = None if row is None or row.get("status") not in FINISHED else row.get(key)
    return float(v) if v is not None and pd.notna(v) else math.nan


def _log(a: float, b: float, base: float = 2.0) -> float:
    return math.log(a / b, base) if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def catapult_runs(runs: Runs) -> list[dict]:
    """The catapult part's runs, each with eta, lambda_0 (its first probe), eta lambda_0 / 2, its initial loss,
    the largest full-batch loss in its first EARLY steps, its final sharpness and whether it diverged."""
    out = []
    for _, r in runs.matching(part="catapult").sort_values("optim.lr").iterrows():
        m = runs.curve(r)
        if m.empty:
            continue
        probes = m.dropna(subset=["probe/sharpness"]) if "probe/sharpness" in m else m.iloc[:0]
        losses = m.dropna(subset=["train/loss_epoch"]).set_index("step")["train/loss_epoch"] \
            if "train/loss_epoch" in m else pd.Series(dtype=float)
        lr = float(r["optim.lr"])
        lam0 = float(probes["probe/sharpness"].iloc[0]) if len(probes) else math.nan
        early = losses[losses.index < EARLY]
        out.append({"lr": lr, "lambda_0": lam0, "phase": lr * lam0 / 2, "initial_loss": _value(r, "initial_train_loss"),
                    "early_max_loss": float(early.replace([math.inf], 1e30).max()) if len(early) else math.nan,
                    "final_sharpness": _value(r, "final_sharpness"), "diverged": r["status"] == "diverged"})
    return out


@RECIPES.register("implicit_regularisation")
class ImplicitRegularisation(Recipe):
    name = "implicit_regularisation"
    title = "SGD's implicit regularisation: small batches and large steps end in flatter minima"
    papers = [KESKAR, JASTRZEBSKI, LEWKOWYCZ, DINH]
    definitions = DEFINITIONS

    def measure(self, runs: Runs) -> list[Claim]:
        d = self.definitions
        batch = runs.matching(part="batch")
        small, large = batch.one(**{"optim.lr": KESKAR_LR, "data.batch_size": SB}), \
            batch.one(**{"optim.lr": KESKAR_LR, "data.batch_size": LB})
        fits = {b: _value(r, "train_error") for b, r in ((SB, small), (LB, large))}
        unfit = None if all(v <= FIT for v in fits.values()) else \
            f"a net of the pair does not fit its training set (training error {fits}, above {FIT:g})"
        pair = {"train_error": fits, "sharpness": {SB: _value(small, "final_sharpness"),
                                                   LB: _value(large, "final_sharpness")},
                "test_error": {SB: _value(small, "test_error"), LB: _value(large, "test_error")},
                "weight_norm": {SB: _value(small, "final_weight_norm"), LB: _value(large, "final_weight_norm")}}

        sharp = {(float(r["optim.lr"]), int(r["data.batch_size"])): _value(r, "final_sharpness")
                 for _, r in batch.iterrows()}
        equal = [abs(_log(sharp.get(a, math.nan), sharp.get(b, math.nan))) for a, b in
                 (((0.05, 16), (0.2, 64)), ((0.05, 64), (0.2, 256)))]
        fourfold = [abs(_log(sharp.get((0.05, b), math.nan), sharp.get((0.2, b), math.nan))) for b in (16, 64, 256)]
        ratio_gap = max(equal) - min(fourfold) if not any(map(math.isnan, equal + fourfold)) else math.nan
        points = [(lr / b, s) for (lr, b), s in sharp.items() if math.isfinite(s)]
        rho = float(spearmanr(*zip(*points)).statistic) if len(points) >= 3 else math.nan

        cat = catapult_runs(runs)
        in_range = [c for c in cat if 1 < c["phase"] < 2 and not c["diverged"]]
        stable = [c for c in cat if c["phase"] < 1 and not c["diverged"]]
        beyond = [c for c in cat if c["phase"] > 2]
        small_step = stable[-1]["final_sharpness"] if stable else math.nan
        no_range = None if in_range else "no run between 2 / lambda_0 and 4 / lambda_0 on this seed (its lambda_0)"
        grows = min((_log(c["early_max_loss"], c["initial_loss"], 10) for c in in_range), default=math.nan)
        drops = max((c["lr"] * c["final_sharpness"] / 2 for c in in_range), default=math.nan)
        flatter = min((_log(small_step, c["final_sharpness"]) for c in in_range), default=math.nan)
        diverged = sum(c["diverged"] for c in beyond) / len(beyond) if beyond else math.nan
        per_run = {f"{c['lr']:g}": {k: c[k] for k in ("phase", "early_max_loss", "final_sharpness", "diverged")}
                   for c in cat}

        test_loss, rescaled = _value(small, "test_loss"), _value(small, "test_loss_reparam")
        return [
            d["large_batch_sharper"](_log(pair["sharpness"][LB], pair["sharpness"][SB]), pair, censored=unfit),
            d["large_batch_generalises_worse"](100 * (pair["test_error"][LB] - pair["test_error"][SB]), pair,
                                               censored=unfit),
            d["small_batch_smaller_norm"](_log(pair["weight_norm"][LB], pair["weight_norm"][SB]), pair["weight_norm"]),
            d["ratio_sets_width"](ratio_gap, {"equal_ratio": equal, "fourfold": fourfold}),
            d["larger_ratio_flatter"](rho, {f"{lr:g}/{b}": s for (lr, b), s in sharp.items()}),
            d["catapult_loss_grows"](grows, per_run, censored=no_range),
            d["catapult_curvature_drops"](drops, per_run, censored=no_range),
            d["catapult_ends_flatter"](flatter, {"small_step": small_step, **per_run},
                                       censored=no_range or (None if stable else "no run below 2 / lambda_0")),
            d["beyond_catapult_diverges"](diverged, per_run,
                                          censored=None if beyond else "no run beyond 4 / lambda_0 on this seed"),
            d["reparam_same_function"](abs(rescaled - test_loss) / test_loss if test_loss > 0 else math.nan,
                                       {"test_loss": test_loss, "test_loss_reparam": rescaled,
                                        "test_error": _value(small, "test_error"),
                                        "test_error_reparam": _value(small, "test_error_reparam")}),
            d["reparam_changes_sharpness"](_log(_value(small, "final_sharpness_reparam"),
                                                _value(small, "final_sharpness"), 10),
                                           {"sharpness": _value(small, "final_sharpness"),
                                            "sharpness_reparam": _value(small, "final_sharpness_reparam")}),
        ]

    def figures(self, runs: Runs, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        fig, axes = plt.subplots(2, 3, figsize=(17, 9))
        batch = runs.matching(part="batch")
        batch = batch[batch["status"] == "done"].assign(ratio=lambda f: f["optim.lr"] / f["data.batch_size"])
        if len(batch):
            sns.lineplot(batch, x="data.batch_size", y="final_sharpness", hue="optim.lr", marker="o",
                         errorbar=("pi", 100), ax=axes[0, 0])
            axes[0, 0].set(xscale="log", yscale="log", xlabel="batch size B", ylabel="final sharpness",
                           title="Sharpness against batch size (Keskar et al.)")
            sns.scatterplot(batch, x="ratio", y="final_sharpness", hue="data.batch_size", style="optim.lr",
                            ax=axes[0, 1])
            axes[0, 1].set(xscale="log", yscale="log", xlabel="eta / B", ylabel="final sharpness",
                           title="Sharpness against eta / B (Jastrzebski et al.)")
            sns.scatterplot(batch, x="final_sharpness", y="test_error", hue="data.batch_size", style="optim.lr",
                            ax=axes[1, 1])
            axes[1, 1].set(xscale="log", xlabel="final sharpness", ylabel="test error",
                           title="Test error against sharpness")
        frames, probes = [], []
        for _, r in runs.matching(part="catapult").iterrows():
            m = runs.curve(r)
            eta = f"{float(r['optim.lr']):g}"
            if not m.empty and "train/loss_epoch" in m:
                f = m.dropna(subset=["train/loss_epoch"])[["step", "train/loss_epoch"]].copy()
                f["eta"], f["seed"] = eta, r["seed"]
                frames.append(f)
            if not m.empty and "probe/sharpness" in m:
                p = m.dropna(subset=["probe/sharpness"])[["step", "probe/sharpness"]].copy()
                p["eta x sharpness / 2"], p["eta"], p["seed"] = p["probe/sharpness"] * float(eta) / 2, eta, r["seed"]
                probes.append(p)
        if frames:
            table = pd.concat(frames, ignore_index=True)
            table = table[table["train/loss_epoch"].between(0, 1e6)]
            sns.lineplot(table, x="step", y="train/loss_epoch", hue="eta", errorbar=("pi", 100), ax=axes[1, 0])
            axes[1, 0].set(yscale="log", ylabel="full-batch loss", title="The catapult: loss over steps, by eta")
        if probes:
            table = pd.concat(probes, ignore_index=True)
            table = table[table["eta x sharpness / 2"].between(0, 1e3)]
            sns.lineplot(table, x="step", y="eta x sharpness / 2", hue="eta", errorbar=("pi", 100), ax=axes[0, 2])
            axes[0, 2].axhline(1.0, color="k", ls="--", lw=0.8)
            axes[0, 2].set(yscale="log", title="The catapult: sharpness over steps, in units of 2 / eta (dashed: "
                                               "stable below)")
        axes[1, 2].axis("off")
        fig.tight_layout()
        return save(fig, outdir / "implicit_regularisation")

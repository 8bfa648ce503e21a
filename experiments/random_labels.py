"""Random-label memorisation (Zhang et al. 2017, "Understanding deep learning requires rethinking
generalization", Fig. 1a-c and Sec. 2), trained as the paper did: SGD with momentum, schedule unchanged
across conditions.

Claims, each measured on every seed:
1. The net drives training error to ~0 on completely random labels.
2. It also fits shuffled pixels, random pixels and Gaussian inputs.
3. Test accuracy at full label corruption and on random pixels / Gaussian inputs is at chance.
4. The time to fit grows with the label corruption level (Spearman over every level, clean included).
5. ... and keeps growing across the corrupted levels alone (0.25..1): over seeds 0-4 the broad statistic passed on
   clean < corrupted while steps to fit were flat across 0.25-1, so the stricter reading is judged beside it.
6. Random labels take only a small constant factor longer to fit than true labels (Sec. 2: "training time
   increases only by a small constant factor"; Fig. 1b reads about 1.5 to 3.5).
7. Random pixels and Gaussian inputs converge faster than random labels (Sec. 2.2).
8. Test error rises with the label corruption level (Fig. 1c).
Every number is read from this suite's runs: train error on the whole training split after training, the
step at which an epoch first reached 100% training accuracy (a run that never did counts as slower than any
that did), and test error on the clean test split.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from experiments import RECIPES
from framework.claims import Definition, Definitions
from framework.datasets import class_count
from framework.plots import save, sns_setup
from framework.recipe import Recipe
from framework.results.runs import Runs
from framework.verdict import Claim, above, below, within

FITTED = 0.01         # training error below this: the training set is memorised
CHANCE_BAND = 0.05    # |test accuracy - 1/classes| below this: chance (~3.5 binomial SE on 450 test digits)
RANK_CORR = 0.0       # "grows with": a positive rank correlation at a seed; the interval over seeds says whether
                      # the mean is (a single seed's 0.8 once stood in for that confidence)
FACTOR = (1.0, 5.0)   # "a small constant factor": slower than true labels, at most 5x (Fig. 1b: ~1.5-3.5x)
PAPER = "Zhang et al. 2017"

DEFINITIONS = Definitions(
    Definition("fits_random_labels", "The net drives training error to ~0 on random labels",
               quote="when trained on a completely random labeling of the true data, neural networks achieve 0 "
                     "training error", where=f"{PAPER}, Sec. 1.1 and Fig. 1a",
               statistic="training error after training, random labels", criterion=below(FITTED),
               source="convention: 1% of 540 training digits, 'achieve 0 training error' up to a few samples"),
    Definition("fits_corrupted_inputs", "It also fits corrupted inputs: shuffled pixels, random pixels, Gaussian",
               quote="We further experiment with ... completely random pixels (e.g., Gaussian noise) ... networks "
                     "are still able to fit", paraphrase=True, where=f"{PAPER}, Sec. 2 and Fig. 1a",
               statistic="largest training error over the corrupted inputs", criterion=below(FITTED),
               source="convention: as for random labels"),
    Definition("test_at_chance", "Test accuracy at full label corruption and on random inputs is at chance",
               quote="The test error, of course, is no better than random chance as there is no correlation "
                     "between the training labels and the test labels", where=f"{PAPER}, Sec. 1.1 and Fig. 1c",
               statistic="largest |test accuracy - 1/classes| over random labels, random pixels, Gaussian",
               criterion=below(CHANCE_BAND),
               source="closed form: ~3.5 binomial standard errors of accuracy at chance on ~450 test digits"),
    Definition("fit_time_grows", "The time to fit grows with the label corruption level",
               quote="convergence slows down as the label corruption level increases (Fig. 1b: relative "
                     "convergence time against label corruption)", paraphrase=True, where=f"{PAPER}, Fig. 1b",
               statistic="Spearman(label noise, steps to fit) over all levels, clean included",
               criterion=above(RANK_CORR), source="convention: a positive rank correlation on the seeds' mean"),
    Definition("fit_time_grows_among_corrupted",
               "... and keeps growing across the corrupted levels (0.25 to 1), not only from clean to corrupted",
               quote="convergence slows down as the label corruption level increases (Fig. 1b: relative "
                     "convergence time against label corruption)", paraphrase=True, where=f"{PAPER}, Fig. 1b",
               statistic="Spearman(label noise, steps to fit) over the corrupted levels only (0.25, 0.5, 0.75, 1)",
               criterion=above(RANK_CORR), source="convention: a positive rank correlation on the seeds' mean"),
    Definition("small_constant_factor", "Random labels take only a small constant factor longer to fit than true "
               "labels", quote="training time increases only by a small constant factor", where=f"{PAPER}, Sec. 1.1 "
               "and Fig. 1b", statistic="steps to fit, random / true labels", criterion=within(*FACTOR),
               source="paper: Fig. 1b reads about 1.5-3.5; the band is (1, 5]"),
    Definition("random_inputs_faster", "Random pixels and Gaussian inputs converge faster than random labels",
               quote="random pixels and Gaussian inputs converge faster than random labels, the inputs being more "
                     "separated from each other than natural images", paraphrase=True,
               where=f"{PAPER}, Sec. 2.2 and Fig. 1a",
               statistic="steps to fit, slower of random pixels and Gaussian / random labels", criterion=below(1.0),
               source="paper: 'faster' is a ratio below 1"),
    Definition("test_error_grows", "Test error rises with the label corruption level",
               quote="the test error grows steadily with the label corruption level (Fig. 1c)", paraphrase=True,
               where=f"{PAPER}, Fig. 1c", statistic="Spearman(label noise, test error)", criterion=above(RANK_CORR),
               source="convention: a positive rank correlation on the seeds' mean"),
)


def _label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with clean inputs, one per label-noise level (true labels = 0)."""
    sel = runs.matching(**{"data.corruption": "none"}).copy()
    sel["label_noise"] = sel["data.label_noise"]
    return sel.sort_values("label_noise")


def _num(v):
    return None if v is None or pd.isna(v) else float(v)


def _steps(row) -> float:
    """Steps to fit; a run that never fitted took longer than its budget (inf), an unfinished one is unknown."""
    if row is None or row["status"] not in ("done", "diverged"):
        return math.nan
    return float(row["fit_step"]) if pd.notna(row.get("fit_step")) else math.inf


def _spearman(x, y) -> float:
    from scipy.stats import spearmanr
    pairs = [(a, b) for a, b in zip(x, y) if not (pd.isna(a) or pd.isna(b))]
    if len(pairs) < 3:
        return math.nan
    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
    return float(rho) if pd.notna(rho) else math.nan


def _one(runs, condition):
    hits = runs.matching(condition=condition)
    return hits.iloc[0] if len(hits) else None


@RECIPES.register("random_labels")
class RandomLabels(Recipe):
    name = "random_labels"
    title = "Nets memorise random labels and random inputs (Zhang et al. 2017)"
    papers = ["Zhang et al. 2017, ICLR, Fig. 1"]
    definitions = DEFINITIONS

    def measure(self, runs: Runs) -> list[Claim]:
        labels = _label_runs(runs)
        n_classes = class_count(runs["data.name"].iloc[0], runs["data.n_classes"].iloc[0])
        chance = 1 / n_classes
        full = labels[labels["label_noise"] == 1.0]
        true = labels[labels["label_noise"] == 0]
        full, true = (full.iloc[0] if len(full) else None), (true.iloc[0] if len(true) else None)
        inputs = runs[runs["data.corruption"] != "none"]
        random_inputs = [_one(runs, c) for c in ("random_pixels", "gaussian") if _one(runs, c) is not None]

        def error(row):
            return float(row["train_error"]) if row is not None and row["status"] == "done" else math.nan

        chance_rows = ([full] if full is not None else []) + random_inputs
        deviation = max((abs(float(r["test_acc"]) - chance) for r in chance_rows), default=math.nan)
        steps = [_steps(r) for _, r in labels.iterrows()]
        per_level = {f"steps@{p:g}": s for p, s in zip(labels["label_noise"], steps)}
        factor = _steps(full) / _steps(true) if full is not None and true is not None else math.nan
        faster = max((_steps(r) for r in random_inputs), default=math.nan) / _steps(full) \
            if full is not None else math.nan
        corrupted = labels["label_noise"] > 0
        d = self.definitions
        return [
            d["fits_random_labels"](error(full), {"train_error": error(full), "fit_step": _steps(full)}),
            d["fits_corrupted_inputs"](max((error(r) for _, r in inputs.iterrows()), default=math.nan),
                                       {f"{r['data.corruption']}_train_error": error(r) for _, r in inputs.iterrows()}),
            d["test_at_chance"](deviation, {f"{r['condition']}_test_acc": _num(r["test_acc"]) for r in chance_rows}),
            d["fit_time_grows"](_spearman(labels["label_noise"], steps), per_level),
            d["fit_time_grows_among_corrupted"](
                _spearman(labels["label_noise"][corrupted], [s for s, c in zip(steps, corrupted) if c]), per_level),
            d["small_constant_factor"](factor, per_level),
            d["random_inputs_faster"](faster, {f"steps@{r['condition']}": _steps(r) for r in random_inputs}
                                      | {"steps@random_labels": _steps(full)}),
            d["test_error_grows"](_spearman(labels["label_noise"], labels["test_error"]),
                                  {f"test_error@{p:g}": _num(e) for p, e in zip(labels["label_noise"],
                                                                                  labels["test_error"])}),
        ]

    def figures(self, runs: Runs, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        curves = runs.curves()
        if not curves.empty and "train/loss_epoch" in curves:
            curves = curves.dropna(subset=["train/loss_epoch"])
            sns.lineplot(curves, x="step", y="train/loss_epoch", hue="condition", ax=axes[0])
            axes[0].set(yscale="log", xlabel="training step", ylabel="training loss (cross-entropy, epoch mean)",
                        title="(a) learning curves")
            axes[0].legend(fontsize=6)
        labels = _label_runs(runs)
        sns.lineplot(labels, x="label_noise", y="fit_step", marker="o", ax=axes[1])
        axes[1].set(xlabel="label corruption", ylabel="steps to 100% training accuracy",
                    title="(b) convergence slowdown")
        sns.lineplot(labels, x="label_noise", y="test_error", marker="o", ax=axes[2], label="test")
        sns.lineplot(labels, x="label_noise", y="train_error", marker="o", ax=axes[2], label="train")
        axes[2].set(xlabel="label corruption", ylabel="error", ylim=(-0.02, 1), title="(c) generalisation error")
        fig.tight_layout()
        return save(fig, outdir / "random_labels")

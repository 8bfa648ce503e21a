"""Random-label memorisation (Zhang et al. 2017, "Understanding deep learning requires rethinking
generalization", Fig. 1a-c and Sec. 2).

Claims:
1. The net drives training error to ~0 on completely random labels.
2. It also fits shuffled pixels, random pixels and Gaussian inputs.
3. Test accuracy at full label corruption (and on random pixels / Gaussian inputs) is at chance.
4. The time to fit grows with the label corruption level; random labels take several times longer than true.
5. Test error rises with the label corruption level (Fig. 1c).
Every number is read from this suite's runs: train error on the whole training split after training, the
step at which an epoch first reached 100% training accuracy, and test error on the clean test split.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments import RECIPES
from framework.data import class_count
from framework.plots import save, sns_setup
from framework.recipe import Claim, Recipe, history

FITTED = 0.01         # training error at most this: the training set is memorised
CHANCE_BAND = 0.05    # |test accuracy - 1/classes| at most this: chance
RANK_CORR = 0.8       # Spearman correlation at least this: "grows with"
SLOWDOWN = 2.0        # random labels take at least this many times the steps of true labels


def _label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with clean inputs, one per label-noise level (true labels = 0)."""
    sel = runs[runs["cfg.data.corruption"] == "none"].copy()
    sel["label_noise"] = sel["cfg.data.label_noise"]
    return sel.sort_values("label_noise")


def _num(v):
    return None if v is None or pd.isna(v) else float(v)


@RECIPES.register("random_labels")
class RandomLabels(Recipe):
    name = "random_labels"
    title = "Nets memorise random labels and random inputs (Zhang et al. 2017)"
    papers = ["Zhang et al. 2017, ICLR, Fig. 1"]

    def claims(self, runs: pd.DataFrame, store) -> list[Claim]:
        labels = _label_runs(runs)
        n_classes = class_count(runs["cfg.data.name"].iloc[0], runs["cfg.data.n_classes"].iloc[0])
        chance = 1 / n_classes
        full = labels[labels["label_noise"] == labels["label_noise"].max()]
        true = labels[labels["label_noise"] == 0]
        full, true = (full.iloc[0] if len(full) else None), (true.iloc[0] if len(true) else None)
        inputs = runs[runs["cfg.data.corruption"] != "none"]
        random_inputs = inputs[inputs["cfg.data.corruption"].isin(["random_pixels", "gaussian"])]

        def fitted(row):
            return row is not None and row["status"] == "done" and row["train_error"] <= FITTED

        out = []
        p_full = _num(full["label_noise"]) if full is not None else None
        out.append(Claim(
            f"The net drives training error to ~0 on random labels (label corruption {p_full})",
            "Zhang et al. 2017, Fig. 1a", f"training error after training <= {FITTED}",
            {"label_noise": p_full, "train_error": _num(full["train_error"]) if full is not None else None,
             "fit_step": _num(full["fit_step"]) if full is not None else None},
            fitted(full) and p_full == 1.0))
        out.append(Claim(
            "It also fits corrupted inputs: " + ", ".join(inputs["cfg.data.corruption"]),
            "Zhang et al. 2017, Fig. 1a and Sec. 2", f"training error <= {FITTED} for each",
            {f"{r['cfg.data.corruption']}_train_error": _num(r["train_error"]) for _, r in inputs.iterrows()},
            len(inputs) > 0 and all(fitted(r) for _, r in inputs.iterrows())))
        chance_rows = ([full] if full is not None else []) + [r for _, r in random_inputs.iterrows()]
        out.append(Claim(
            "Test accuracy at full label corruption and on random inputs is at chance",
            "Zhang et al. 2017, Fig. 1c and Sec. 2", f"|test accuracy - {chance:.2f}| <= {CHANCE_BAND}",
            {f"{r['condition']}_test_acc": _num(r["test_acc"]) for r in chance_rows} | {"chance": chance},
            bool(chance_rows) and p_full == 1.0
            and all(abs(r["test_acc"] - chance) <= CHANCE_BAND for r in chance_rows)))
        steps = labels.dropna(subset=["fit_step"])
        rho = steps["label_noise"].corr(steps["fit_step"], method="spearman") if len(steps) >= 3 else float("nan")
        slowdown = (full["fit_step"] / true["fit_step"]) if full is not None and true is not None else float("nan")
        out.append(Claim(
            "The time to fit grows with the label corruption level; random labels take several times longer",
            "Zhang et al. 2017, Fig. 1b",
            f"Spearman(label noise, steps to fit) >= {RANK_CORR} over all levels fitted, every level fitted, "
            f"and random/true steps >= {SLOWDOWN}",
            {"spearman": _num(rho), "slowdown": _num(slowdown), "levels_fitted": len(steps),
             "levels": len(labels)} | {f"steps@{p:g}": _num(s) for p, s in zip(labels["label_noise"],
                                                                                labels["fit_step"])},
            len(steps) == len(labels) >= 3 and rho >= RANK_CORR and slowdown >= SLOWDOWN))
        rho_test = labels["label_noise"].corr(labels["test_error"], method="spearman") if len(labels) >= 3 \
            else float("nan")
        out.append(Claim(
            "Test error rises with the label corruption level", "Zhang et al. 2017, Fig. 1c",
            f"Spearman(label noise, test error) >= {RANK_CORR}",
            {"spearman": _num(rho_test)} | {f"test_error@{p:g}": _num(e) for p, e in
                                            zip(labels["label_noise"], labels["test_error"])},
            len(labels) >= 3 and rho_test >= RANK_CORR))
        return out

    def figures(self, runs: pd.DataFrame, store, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        curves = history(runs, store, self.name)
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

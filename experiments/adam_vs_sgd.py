"""Adaptive vs non-adaptive optimizers (Wilson et al. 2017, "The marginal value of adaptive gradient methods
in machine learning", Sec. 3.3 and Fig. 1; Loshchilov & Hutter 2019, "Decoupled weight decay regularization").

Claims on the Sec. 3.3 construction (linearly separable, more features than samples, squared loss, w0 = 0):
1. Gradient descent classifies new points correctly, as the minimum-norm solution does.
2. AdaGrad, RMSProp and Adam fit the training set but label every new point +1: their test error equals
   the fraction of negatives.
Reported on a real task, digits (CPU) or CIFAR-10 (paper), not forced:
3. The adaptive methods generalise worse than SGD (Wilson et al. 2017, Fig. 1).
4. AdamW's decoupled weight decay generalises better than Adam with an L2 penalty (Loshchilov & Hutter).
The min-norm reference is computed in this suite from the same training data (pseudo-inverse).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from experiments import RECIPES
from framework.data import build_splits
from framework.plots import save, sns_setup
from framework.recipe import Claim, Recipe, history, row_config

ADAPTIVE = ("adagrad", "rmsprop", "adam")
NON_ADAPTIVE = ("sgd", "momentum", "nesterov")
CORRECT = 0.05        # test error at most this: "classifies new points correctly"
MATCH = 0.02          # |test error - fraction of negatives| at most this: "labels every new point +1"
FITS = 0.01           # training error at most this


def min_norm_reference(row: pd.Series) -> dict:
    """Minimum-norm least-squares solution on the run's own training data, and its test error."""
    splits = build_splits(row_config(row).data)
    x, y = splits.x_train.double(), splits.y_train.double()
    w = torch.linalg.pinv(x) @ y
    test_pred = torch.sign(splits.x_test.double() @ w)
    return {"min_norm_test_error": float((test_pred != splits.y_test.double()).double().mean()),
            "test_negative_fraction": float((splits.y_test < 0).double().mean()),
            "n_train": len(x), "n_features": x.shape[1]}


def _two_se(error: float, n: int) -> float:
    """Two standard errors of a test error estimated on n samples: differences below this are noise."""
    return 2 * math.sqrt(max(error * (1 - error), 1e-12) / max(n, 1))


@RECIPES.register("adam_vs_sgd")
class AdamVsSgd(Recipe):
    name = "adam_vs_sgd"
    title = "Adaptive methods generalise worse than SGD (Wilson et al. 2017), and AdamW's decoupled decay"
    papers = ["Wilson et al. 2017, NeurIPS, Sec. 3.3 and Fig. 1", "Loshchilov & Hutter 2019, ICLR"]

    def claims(self, runs: pd.DataFrame, store) -> list[Claim]:
        done = runs[runs["status"] == "done"]
        wilson = done[done["problem"] == "wilson"].set_index("optimizer")
        # the real task: digits at CPU scale, CIFAR-10 at paper scale
        digits = done[done["problem"] != "wilson"].set_index("optimizer")
        task = str(digits["problem"].iloc[0]) if len(digits) else ""
        out = []
        if len(wilson):
            ref = min_norm_reference(wilson.iloc[0])
            gd = wilson.loc["sgd"] if "sgd" in wilson.index else None
            out.append(Claim(
                "On the construction, gradient descent from w = 0 classifies new points correctly, like the "
                "minimum-norm solution", "Wilson et al. 2017, Sec. 3.3",
                f"GD test error <= {CORRECT} and within {CORRECT} of the min-norm solution's",
                ref | ({"gd_test_error": float(gd["test_error"]), "gd_train_error": float(gd["train_error"])}
                       if gd is not None else {"gd": "missing"}),
                gd is not None and gd["test_error"] <= CORRECT
                and abs(gd["test_error"] - ref["min_norm_test_error"]) <= CORRECT))
            adaptive = [o for o in ADAPTIVE if o in wilson.index]
            out.append(Claim(
                "On the construction, " + ", ".join(adaptive) + " fit the training set but label every new point "
                "+1 (test error = fraction of negatives)", "Wilson et al. 2017, Sec. 3.3 (Lemma 3.1)",
                f"training error <= {FITS} and |test error - negative fraction| <= {MATCH} for each",
                {"test_negative_fraction": ref["test_negative_fraction"]}
                | {f"{o}_test_error": float(wilson.loc[o, "test_error"]) for o in adaptive}
                | {f"{o}_train_error": float(wilson.loc[o, "train_error"]) for o in adaptive},
                bool(adaptive) and all(wilson.loc[o, "train_error"] <= FITS and abs(
                    wilson.loc[o, "test_error"] - ref["test_negative_fraction"]) <= MATCH for o in adaptive)))
        if len(digits):
            n_test = int(digits["n_test"].iloc[0]) if "n_test" in digits and pd.notna(digits["n_test"].iloc[0]) \
                else int(round(1797 * float(digits["cfg.data.test_fraction"].iloc[0])))  # runs stored before n_test
            ada = digits[digits.index.isin(ADAPTIVE)]["test_error"]
            non = digits[digits.index.isin(NON_ADAPTIVE)]["test_error"]
            if len(ada) and len(non):
                gap = float(ada.min() - non.min())
                out.append(Claim(
                    f"On {task}, the adaptive methods generalise worse than SGD (reported, not forced)",
                    "Wilson et al. 2017, Fig. 1", "best adaptive test error - best SGD test error > 2 standard errors",
                    {"best_adaptive_test_error": float(ada.min()), "best_sgd_test_error": float(non.min()),
                     "gap": gap, "two_standard_errors": _two_se(float(non.min()), n_test)}
                    | {f"{o}_test_error": float(e) for o, e in digits["test_error"].items()},
                    gap > _two_se(float(non.min()), n_test)))
            if {"adamw", "adam_l2"} <= set(digits.index):
                w, l2 = float(digits.loc["adamw", "test_error"]), float(digits.loc["adam_l2", "test_error"])
                out.append(Claim(
                    f"On {task}, AdamW's decoupled weight decay generalises better than Adam with L2 (reported)",
                    "Loshchilov & Hutter 2019, Fig. 2", "Adam-L2 test error - AdamW test error > 2 standard errors",
                    {"adamw_test_error": w, "adam_l2_test_error": l2, "two_standard_errors": _two_se(w, n_test),
                     "adamw_weight_decay": float(digits.loc["adamw", "cfg.optim.weight_decay"]),
                     "adam_l2_weight_decay": float(digits.loc["adam_l2", "cfg.optim.weight_decay"])},
                    l2 - w > _two_se(w, n_test)))
        return out

    def figures(self, runs: pd.DataFrame, store, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        paths = []
        done = runs[runs["status"] == "done"]
        wilson = done[done["problem"] == "wilson"]
        if len(wilson):
            ref = min_norm_reference(wilson.iloc[0])
            fig, ax = plt.subplots(figsize=(5, 3.4))
            sns.barplot(wilson, x="optimizer", y="test_error", ax=ax, color="C0", label="test")
            ax.axhline(ref["test_negative_fraction"], ls="--", c="C3", label="fraction of negatives (all +1)")
            ax.axhline(ref["min_norm_test_error"], ls=":", c="k", label="minimum-norm solution")
            ax.set(ylabel="test error (0-1 loss)", title="Wilson et al. (2017) construction", ylim=(0, 1))
            ax.legend(fontsize=7)
            fig.tight_layout()
            paths += save(fig, outdir / "wilson_construction")
        digits = done[done["problem"] != "wilson"]
        task = str(digits["problem"].iloc[0]) if len(digits) else ""
        curves = history(digits, store, self.name) if len(digits) else pd.DataFrame()
        if not curves.empty:
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
            train = curves.dropna(subset=["train/loss_epoch"])
            sns.lineplot(train, x="epoch", y="train/loss_epoch", hue="optimizer", ax=axes[0])
            axes[0].set(yscale="log", ylabel="training loss (cross-entropy)", title=f"{task}: training")
            if "val/acc" in curves:
                val = curves.dropna(subset=["val/acc"]).assign(val_error=lambda d: 1 - d["val/acc"])
                sns.lineplot(val, x="epoch", y="val_error", hue="optimizer", ax=axes[1], legend=False)
            axes[1].set(ylabel="held-out error (validation split)", title=f"{task}: generalisation")
            fig.tight_layout()
            paths += save(fig, outdir / f"{task}_curves")
        return paths

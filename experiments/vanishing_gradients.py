"""Vanishing gradients in deep plain nets, and the fixes: residual connections, batch norm, initialisation.

Claims, each measured on every seed (Bengio, Simard & Frasconi 1994; Glorot & Bengio 2010, Figs. 6-7;
He et al. 2015, Sec. 2.2; He et al. 2016, Fig. 1; Ioffe & Szegedy 2015):
1. In a deep plain sigmoid net the back-propagated gradient dL/da at the first hidden layer is orders of
   magnitude below the last hidden layer's, at initialisation.
2. That net's training loss stalls near its starting value.
3. Control: a shallow plain sigmoid net trains.
4. A residual net of the same depth trains.
5. A batch-norm net of the same depth trains: judged on the last epoch's mean training loss, in training mode
   (the objective SGD minimised). Evaluated afterwards in eval mode, on running statistics that the 50-layer
   width-10 net's batch statistics stray from, the loss read 1.61 at seed 11 where its last epoch's mean was
   0.60, and the claim's interval reached below TRAINS at seeds 10-14.
6. In a 30-layer ReLU net He init keeps the back-propagated gradient's scale over depth: the first/last ratio
   stays within a decade of 1 (He et al. 2015, Eq. 14).
7. Xavier init loses the forward activations' variance over the same depth: halved per layer in theory
   (He et al. 2015, Eq. 10), orders of magnitude over 30 layers. (With the same draws He's weights are
   sqrt(2) times Xavier's, so the two ratios differ by exactly 2^29: the contrast is recorded, not judged.)
The batch-norm and He-init nets are chaotic (a rounding difference grows to a different run within steps), so
they train alone (`trainer.fuse: false` in the YAML): fused, claim 5 read 0.0720 against 0.0882 alone at smoke
seed 0 on an AVX512 CPU, and a verdict must not depend on how the runs were scheduled.
"Deep" is the sigmoid grid's largest depth, "shallow" its smallest; the ReLU nets are the grid's He/Xavier
pair. Gradients and variances are read at the first measured step (initialisation) from diagnostics; "trains"
is a training loss that falls by more than half of its start, "stalls" one that falls by less than a tenth.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from experiments import RECIPES
from framework.plots import save, sns_setup
from framework.recipe import Recipe
from framework.results.measures import last_epoch_loss, loss_reduction
from framework.results.runs import Runs
from framework.verdict import Claim, above, below, within

VANISHED = -2.0      # log10 first/last back-propagated gradient ratio below this: "orders of magnitude"
STALLED = 0.10       # training loss fell by less than this fraction of its start
TRAINS = 0.50        # training loss fell by more than this fraction of its start
DECADE = 1.0         # |log10 ratio| within this: the scale is kept over depth


FLOAT32_TINY = 1.4e-45  # the smallest positive float32: a ratio that underflowed to 0 is at most this


def _log10(row, key) -> float:
    """log10 of a ratio; one whose gradient underflowed float32 to 0 counts as the smallest float32 (a bound:
    the true ratio is at most that), so the mean over seeds stays a number."""
    v = row.get(key) if row is not None else None
    if v is None or pd.isna(v) or v < 0:
        return float("nan")
    return math.log10(max(v, FLOAT32_TINY))


def _numbers(row, *keys) -> dict:
    if row is None:
        return {"run": "missing"}
    return {k: (None if pd.isna(row.get(k)) else float(row.get(k))) for k in keys} | {"status": row["status"]}


KEYS = ("backprop_ratio_at_init", "act_var_ratio_at_init", "initial_train_loss", "train_loss", "train_acc")


def training_mode_reduction(runs: Runs, row) -> float:
    """1 - last epoch's mean training loss (training mode) / initial training loss: for the batch-norm net, whose
    train_loss (eval mode) runs on running statistics. Runs stored before the summary recorded it are read from
    their metrics.csv."""
    if row is None or row.get("status") not in ("done", "diverged"):
        return math.nan
    last = row.get("train_loss_last_epoch")
    if last is None or pd.isna(last):
        last = last_epoch_loss(runs.curve(row))
    return loss_reduction(row, final=last)


@RECIPES.register("vanishing_gradients")
class VanishingGradients(Recipe):
    name = "vanishing_gradients"
    title = "Vanishing gradients in deep plain nets, fixed by residual connections, batch norm and init"
    papers = ["Bengio et al. 1994", "Glorot & Bengio 2010", "He et al. 2015", "He et al. 2016",
              "Ioffe & Szegedy 2015"]

    def measure(self, runs: Runs) -> list[Claim]:
        sigmoid = runs.matching(**{"model.activation": "sigmoid"})
        depths = sorted(sigmoid["model.depth"].unique())
        deep, shallow = depths[-1], depths[0]
        relu = runs.matching(**{"model.activation": "relu"})
        relu_depth = int(relu["model.depth"].max()) if len(relu) else None

        def at(depth, act, arch):
            return runs.one(**{"model.depth": depth, "model.activation": act, "arch": arch})
        plain, small = at(deep, "sigmoid", "plain"), at(shallow, "sigmoid", "plain")
        res, bn = at(deep, "sigmoid", "residual"), at(deep, "sigmoid", "batch_norm")
        xavier, he = at(relu_depth, "relu", "xavier"), at(relu_depth, "relu", "he_init")

        def trains(row, what, reference):
            return Claim(what, reference, "training loss reduction", loss_reduction(row), above(TRAINS),
                         _numbers(row, *KEYS))
        pair = {"he": _numbers(he, *KEYS), "xavier": _numbers(xavier, *KEYS),
                "theory_decades": (relu_depth - 1) / 2 * math.log10(2) if relu_depth else None}
        return [
            Claim(f"In a plain {deep}-layer sigmoid net the first hidden layer's back-propagated gradient is orders "
                  f"of magnitude below the last one's at initialisation", "Glorot & Bengio 2010, Fig. 7 and Sec. 4.2",
                  "log10 ||dL/da_first|| / ||dL/da_last|| at init", _log10(plain, "backprop_ratio_at_init"),
                  below(VANISHED), _numbers(plain, *KEYS)),
            Claim(f"The plain {deep}-layer sigmoid net's training loss stalls near its start",
                  "Bengio et al. 1994; Glorot & Bengio 2010, Sec. 4.1", "training loss reduction",
                  loss_reduction(plain), below(STALLED), _numbers(plain, *KEYS)),
            trains(small, f"Control: a plain {shallow}-layer sigmoid net trains", "Glorot & Bengio 2010, Sec. 4"),
            trains(res, f"A residual {deep}-layer sigmoid net trains", "He et al. 2016, Fig. 1 and Sec. 3.1"),
            Claim(f"A batch-norm {deep}-layer sigmoid net trains", "Ioffe & Szegedy 2015, Sec. 3.3",
                  "training loss reduction (the last epoch's mean, in training mode)",
                  training_mode_reduction(runs, bn), above(TRAINS),
                  _numbers(bn, *KEYS, "train_loss_last_epoch")),
            Claim(f"In a {relu_depth}-layer ReLU net He init keeps the back-propagated gradient's scale over depth",
                  "He et al. 2015, Sec. 2.2 (Eq. 14)", "log10 ||dL/da_first|| / ||dL/da_last|| at init, He init",
                  _log10(he, "backprop_ratio_at_init"), within(-DECADE, DECADE), pair),
            Claim(f"In the same {relu_depth}-layer ReLU net Xavier init loses the activations' variance over depth",
                  "He et al. 2015, Sec. 2.2 (Eq. 10); Glorot & Bengio 2010, Sec. 4.2",
                  "log10 Var(a_last) / Var(a_first) at init, Xavier init", _log10(xavier, "act_var_ratio_at_init"),
                  below(VANISHED), pair),
        ]

    def figures(self, runs: Runs, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        paths = []
        curves = runs.curves()
        if not curves.empty and "train/loss" in curves:
            curves = curves.dropna(subset=["train/loss"])
            grid = sns.relplot(curves, x="step", y="train/loss", hue="arch", col="model.activation",
                               row="model.depth", kind="line", height=2.4, aspect=1.4,
                               facet_kws={"sharey": False})
            grid.set_axis_labels("training step", "training loss (cross-entropy)")
            grid.figure.suptitle("Training curves", y=1.02)
            paths += save(grid.figure, outdir / "training_curves")

        diag = runs.curves("diagnostics.csv")
        if not diag.empty:
            # float32 gradients below ~1e-38 underflow to 0; draw them at the floor so the line stays visible
            floor = 1e-30
            per_layer = (diag.groupby(["run_id", "layer", "arch", "model.activation", "model.depth"],
                                      as_index=False)["grad_norm"].median())
            per_layer["grad_norm"] = per_layer["grad_norm"].clip(lower=floor)
            grid = sns.relplot(per_layer, x="layer", y="grad_norm", hue="arch", style="model.depth",
                               col="model.activation", kind="line", marker="o", markersize=3, height=3.2, aspect=1.3)
            grid.set(yscale="log")
            grid.set_axis_labels("layer (0 = input side)", f"median gradient norm (floor {floor:g})")
            grid.figure.suptitle("Per-layer gradient norm over depth", y=1.02)
            paths += save(grid.figure, outdir / "grad_norm_by_layer")

            deep = diag["model.depth"].max()
            sel = diag[(diag["model.depth"] == deep) & (diag["model.activation"] == "sigmoid")]
            archs = list(dict.fromkeys(sel["arch"]))
            if archs:
                fig, axes = plt.subplots(1, len(archs), figsize=(3.6 * len(archs), 3.4), squeeze=False)
                for ax, arch in zip(axes[0], archs):
                    mat = sel[sel["arch"] == arch].pivot_table(index="layer", columns="step", values="grad_norm")
                    log = mat.clip(lower=floor).map(math.log10)
                    sns.heatmap(log, ax=ax, cmap="viridis", vmin=-30, vmax=1, cbar_kws={"label": "log10 grad norm"})
                    ax.set_title(f"{arch}, depth {deep}, sigmoid")
                    ax.set_xlabel("training step")
                    ax.set_ylabel("layer")
                    ax.set_xticks(ax.get_xticks()[::max(1, len(ax.get_xticks()) // 6)])
                fig.tight_layout()
                paths += save(fig, outdir / "grad_norm_heatmap")
        return paths

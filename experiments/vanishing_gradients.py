"""Vanishing gradients in deep plain nets, and the fixes: residual connections, batch norm, initialisation.

Claims (from the seed lectures; Bengio, Simard & Frasconi 1994; Glorot & Bengio 2010, Fig. 7; He et al. 2015;
He et al. 2016, "Deep residual learning", Fig. 1; Ioffe & Szegedy 2015):
1. In a deep plain sigmoid net the first layer's gradient norm is orders of magnitude below the last layer's.
2. That net's training loss stalls near its starting value.
3. Control: a shallow plain sigmoid net keeps its gradient and trains.
4. A residual net of the same depth keeps its gradient and trains.
5. Batch norm keeps the gradient flowing at the same depth, and the batch-norm net trains.
6. He initialisation keeps the gradient scale of a plain ReLU net where PyTorch's default init loses it.
"Deep" is the grid's largest depth, "shallow" its smallest, "medium" its middle one; every number is read
from the runs of this suite.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from experiments import RECIPES
from framework.plots import save, sns_setup
from framework.recipe import Claim, Recipe, history, loss_reduction, pick

VANISHED = 1e-2      # first/last gradient-norm ratio below this: the gradient vanished on its way down
STALLED = 0.10       # training loss fell by less than this fraction of its start
TRAINS = 0.50        # training loss fell by at least this fraction of its start


def _ratio(row) -> float:
    return float(row["grad_ratio_first_last"]) if row is not None and pd.notna(row.get("grad_ratio_first_last")) \
        else float("nan")


def _fmt(row, *keys) -> dict:
    if row is None:
        return {"run": "missing"}
    return {k: (None if pd.isna(row.get(k)) else float(row.get(k))) for k in keys} | {"status": row["status"]}


@RECIPES.register("vanishing_gradients")
class VanishingGradients(Recipe):
    name = "vanishing_gradients"
    title = "Vanishing gradients in deep plain nets, fixed by residual connections, batch norm and init"
    papers = ["Bengio et al. 1994", "Glorot & Bengio 2010", "He et al. 2015", "He et al. 2016",
              "Ioffe & Szegedy 2015"]

    def claims(self, runs: pd.DataFrame, store) -> list[Claim]:
        depths = sorted(runs["model.depth"].unique())
        deep, shallow, medium = depths[-1], depths[0], depths[len(depths) // 2]
        keys = ("grad_norm_first", "grad_norm_last", "grad_ratio_first_last", "initial_train_loss", "train_loss",
                "train_acc")
        plain = pick(runs, **{"model.depth": deep, "model.activation": "sigmoid", "arch": "plain"})
        small = pick(runs, **{"model.depth": shallow, "model.activation": "sigmoid", "arch": "plain"})
        res = pick(runs, **{"model.depth": deep, "model.activation": "sigmoid", "arch": "residual"})
        bn = pick(runs, **{"model.depth": deep, "model.activation": "sigmoid", "arch": "batch_norm"})
        relu = pick(runs, **{"model.depth": medium, "model.activation": "relu", "arch": "plain"})
        he = pick(runs, **{"model.depth": medium, "model.activation": "relu", "arch": "he_init"})

        def trains(row):
            return _ratio(row) >= VANISHED and loss_reduction(row) >= TRAINS

        out = [
            Claim(f"In a plain {deep}-layer sigmoid net the first layer's gradient norm is orders of magnitude "
                  f"below the last layer's", "Glorot & Bengio 2010, Fig. 7; seed lecture (vanishing gradients)",
                  f"median first/last gradient-norm ratio < {VANISHED:g}",
                  _fmt(plain, *keys), _ratio(plain) < VANISHED),
            Claim(f"The plain {deep}-layer sigmoid net's training loss stalls near its start",
                  "Bengio et al. 1994; seed lecture (vanishing gradients)",
                  f"training loss falls by < {STALLED:.0%} of its initial value",
                  _fmt(plain, *keys) | {"loss_reduction": loss_reduction(plain)},
                  loss_reduction(plain) < STALLED),
            Claim(f"Control: a plain {shallow}-layer sigmoid net keeps its gradient and trains",
                  "seed lecture (vanishing gradients)",
                  f"ratio >= {VANISHED:g} and training loss falls by >= {TRAINS:.0%}",
                  _fmt(small, *keys) | {"loss_reduction": loss_reduction(small)}, trains(small)),
            Claim(f"A residual {deep}-layer sigmoid net keeps its gradient and trains",
                  "He et al. 2016, Fig. 1 and Sec. 3.1; seed lecture",
                  f"ratio >= {VANISHED:g} and training loss falls by >= {TRAINS:.0%}",
                  _fmt(res, *keys) | {"loss_reduction": loss_reduction(res)}, trains(res)),
            Claim(f"Batch norm keeps the gradient flowing in a {deep}-layer sigmoid net, and the net trains",
                  "Ioffe & Szegedy 2015, Sec. 3.3; seed lecture",
                  f"ratio >= {VANISHED:g} and training loss falls by >= {TRAINS:.0%}",
                  _fmt(bn, *keys) | {"loss_reduction": loss_reduction(bn)}, trains(bn)),
            Claim(f"He init keeps a plain {medium}-layer ReLU net's gradient scale where the default init loses it",
                  "He et al. 2015, Sec. 2.2; Glorot & Bengio 2010",
                  f"default-init ratio < {VANISHED:g} and He-init ratio within [0.1, 10]",
                  {"default_init_ratio": _ratio(relu), "he_init_ratio": _ratio(he)},
                  _ratio(relu) < VANISHED and 0.1 <= _ratio(he) <= 10),
        ]
        return out

    def figures(self, runs: pd.DataFrame, store, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        paths = []
        curves = history(runs, store, self.name)
        if not curves.empty and "train/loss" in curves:
            curves = curves.dropna(subset=["train/loss"])
            grid = sns.relplot(curves, x="step", y="train/loss", hue="arch", col="model.activation",
                               row="model.depth", kind="line", height=2.4, aspect=1.4,
                               facet_kws={"sharey": False})
            grid.set_axis_labels("training step", "training loss (cross-entropy)")
            grid.figure.suptitle("Training curves", y=1.02)
            paths += save(grid.figure, outdir / "training_curves")

        diag = history(runs, store, self.name, "diagnostics.csv")
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

"""Regularisation: L2 in the loss against weight decay (Loshchilov & Hutter 2019, "Decoupled weight decay
regularization", Sec. 2-3 and Fig. 2), early stopping under label noise (Prechelt 1998, "Early stopping - but
when?"; Arpit et al. 2017) and dropout (Srivastava et al. 2014, Sec. 6-7; the lecture notes' L2 vs weight decay,
dropout and early stopping).

Claims, each measured on every seed:
1. For SGD, L2 in the loss and weight decay give the same trajectory: the largest relative difference of the two
   runs' training losses over 100 steps is below SAME (float32 rounding: L&H Prop. 1 is an identity).
2. For Adam they do not: the same difference between Adam with L2 in the loss and decoupled decay at the same
   per-step decay is above DIFFERENT (L&H Prop. 2: no decay coefficient makes them equal).
3. Over the lr x decay grid, the best decay of L&H's AdamW (decay eta_t lambda per step, the schedule multiplier
   only) moves by at most a decade across learning rates: the spread, log10 of the largest over the smallest best
   decay (best: lowest validation loss at the end), lies in [0, 1] (L&H Fig. 2; the notes' protocol).
4. ... and by less than Adam + L2's: Adam + L2's spread minus AdamW's is above 0 (L&H Sec. 3, Fig. 2).
5. With 20% label noise the validation loss has an interior minimum: the final validation loss is above the
   curve's minimum by more than RISE (log10 of the ratio) (Prechelt 1998; Arpit et al. 2017, Sec. 5).
6. Early stopping pays: the test error at the validation loss's minimum is below the final test error
   (final - early-stopped, above 0) (Prechelt 1998).
7. Dropout 0.5 raises the training loss: log10 of the dropout net's over the plain net's final training loss
   (evaluated without dropout) is above 0 (Srivastava et al. 2014, Sec. 7.2).
8. ... and narrows the train-test gap: the plain net's gap (test error - training error) minus the dropout net's
   is above 0 (Srivastava et al. 2014, Fig. 4 and Sec. 6).
9. ... and lowers the test error: the plain net's test error minus the dropout net's is above 0 (Srivastava et
   al.'s gain; claim 8's gap can narrow only because dropout cannot fit the noisy labels).
Claims 3-4 take an argmin over the decay grid: a best decay on the grid's edge (1e-5 or 1e-1) is censored and the
claim inconclusive (with the old three decays, 1e-4..1e-2, both rules' picks sat on the edges at every seed, and
claim 4's 0 held by construction).
Claims 5-9 share one setup, the notes' 20% label noise: the training error is against the noisy labels.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from experiments import RECIPES
from framework.claims import Definition, Definitions
from framework.plots import save, sns_setup
from framework.recipe import Recipe
from framework.results.runs import Runs
from framework.verdict import Claim, above, below, within

SAME = 1e-5        # relative loss difference that float32 rounding leaves over 100 steps (measured: ~1e-7)
DIFFERENT = 1e-3   # a hundred times SAME: a difference no rounding explains
RISE = math.log10(1.05)  # the final validation loss 5% above the minimum: past the noise of a 270-sample split
LH, SRIVASTAVA = "Loshchilov & Hutter 2019", "Srivastava et al. 2014"

DEFINITIONS = Definitions(
    Definition("sgd_l2_equals_decay", "For SGD, L2 in the loss and weight decay give the same trajectory",
               quote="L2 regularization and weight decay regularization are equivalent for standard stochastic "
                     "gradient descent (when rescaled by the learning rate)", where=f"{LH}, abstract and Prop. 1",
               statistic="max over 100 steps of |L_l2 - L_decay| / L_decay (SGD, lr 0.1, lambda 0.1)",
               criterion=below(SAME), source="measured noise: float32 rounding leaves ~1e-7 over 100 steps"),
    Definition("adam_l2_differs", "For Adam, L2 in the loss and decoupled weight decay do not",
               quote="as we demonstrate this is not the case for adaptive gradient algorithms, such as Adam",
               where=f"{LH}, abstract and Prop. 2",
               statistic="max over 100 steps of |L_l2 - L_decoupled| / L_decoupled (Adam, lr 0.001, per-step "
                         "decay 1e-4)", criterion=above(DIFFERENT),
               source="convention: a hundred times the SGD pair's bound, a difference no rounding explains"),
    Definition("adamw_decay_stable", "AdamW's best weight decay moves by at most a decade across learning rates",
               quote="decoupled weight decay ... decouples the optimal choice of weight decay factor from the "
                     "setting of the learning rate", paraphrase=True,
               where=f"{LH}, abstract and Fig. 2 (decay eta_t lambda, as Algorithm 2 defines it)",
               statistic="log10 largest / smallest best decay (lowest validation loss) across the grid's learning "
                         "rates", criterion=within(0.0, 1.0),
               source="paper: Fig. 2's basin of good decays for AdamW spans a learning-rate-independent band "
                      "about a decade wide"),
    Definition("adamw_more_stable_than_l2", "... and by less than Adam + L2's",
               quote="decoupled weight decay ... decouples the optimal choice of weight decay factor from the "
                     "setting of the learning rate", paraphrase=True, where=f"{LH}, Sec. 3 and Fig. 2",
               statistic="spread of Adam + L2's best decay minus AdamW's (decades)", criterion=above(0.0),
               source="convention: any difference, the interval over seeds judging it"),
    Definition("interior_val_minimum", "With label noise the validation loss has an interior minimum",
               quote="the validation set error ... will usually decrease first and then increase again as the "
                     "network starts to overfit", paraphrase=True, where="Prechelt 1998, Sec. 1; Arpit et al. 2017",
               statistic="log10 final validation loss / its minimum over training (20% noisy labels)",
               criterion=above(RISE), source="measured noise: 5% is past the noise of a 270-sample validation split"),
    Definition("early_stopping_pays", "Early stopping at that minimum beats the final test error",
               quote="stop training at the minimum of the validation error to get the best generalization",
               paraphrase=True, where="Prechelt 1998, Sec. 1-2",
               statistic="final test error - test error at the validation loss's minimum", criterion=above(0.0),
               source="convention: any gain, the interval over seeds judging it"),
    Definition("dropout_raises_train_loss", "Dropout raises the training loss",
               quote="dropout ... prevents units from co-adapting too much", paraphrase=True,
               where=f"{SRIVASTAVA}, Sec. 7.2",
               statistic="log10 final training loss, dropout 0.5 / none (evaluated without dropout)",
               criterion=above(0.0), source="convention: any rise, the interval over seeds judging it"),
    Definition("dropout_narrows_gap", "... and narrows the train-test gap",
               quote="dropout ... significantly reduces overfitting", paraphrase=True,
               where=f"{SRIVASTAVA}, abstract, Sec. 6 and Fig. 4",
               statistic="(test error - training error) without dropout minus with dropout 0.5 (training error "
                         "against the noisy labels)", criterion=above(0.0),
               source="convention: any narrowing, the interval over seeds judging it"),
    Definition("dropout_lowers_test_error", "Dropout lowers the test error",
               quote="dropout improves the performance of neural networks on supervised learning tasks",
               paraphrase=True, where=f"{SRIVASTAVA}, abstract and Sec. 6 (their test-error gains)",
               statistic="test error without dropout minus with dropout 0.5 (20% noisy training labels, ~450 "
                         "clean test digits: resolution 0.0022 a seed)", criterion=above(0.0),
               source="convention: any gain, the interval over seeds judging it"),
)


def loss_path(runs: Runs, row) -> pd.Series:
    if row is None or row["status"] != "done":
        return pd.Series(dtype=float)
    m = runs.curve(row)
    return m.dropna(subset=["train/loss"]).set_index("step")["train/loss"] if "train/loss" in m else pd.Series(
        dtype=float)


def max_relative_gap(a: pd.Series, b: pd.Series) -> float:
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
    return float(((both["a"] - both["b"]).abs() / both["b"].abs()).max()) if len(both) else math.nan


def decay_of(row) -> float:
    """A grid run's decay coefficient: its L2 lambda (Adam + L2) or its decoupled lambda (AdamW)."""
    return float(row["loss.l2"] if row["rule"] == "adam_l2" else row["optim.weight_decay"])


def best_decays(rows: pd.DataFrame) -> tuple[dict[str, float], list[str]]:
    """Per learning rate, the decay with the lowest final validation loss (nan where a run is missing), and the
    learning rates whose best decay is the grid's smallest or largest (censored: the optimum may lie beyond)."""
    out, edges = {}, []
    decays = [decay_of(r) for _, r in rows.iterrows()]
    lo, hi = (min(decays), max(decays)) if decays else (math.nan, math.nan)
    for lr, at_lr in rows.groupby("optim.lr"):
        done = at_lr[at_lr["status"] == "done"]
        best = decay_of(done.loc[done["val_loss"].astype(float).idxmin()]) if len(done) == len(at_lr) \
            and len(done) else math.nan
        out[f"{lr:g}"] = best
        if best in (lo, hi):
            edges.append(f"lr {lr:g}: best decay {best:g} on the grid's edge")
    return out, edges


def spread(best: dict[str, float]) -> float:
    values = list(best.values())
    return math.log10(max(values) / min(values)) if values and not any(map(math.isnan, values)) else math.nan


def early_stopping(runs: Runs, row) -> dict:
    """From the probes' held-out curves: the validation loss's minimum and the test error there, against the end."""
    nan = {"val_rise": math.nan, "early_test_error": math.nan, "final_test_error": math.nan, "best_step": None}
    if row is None or row["status"] != "done":
        return nan
    m = runs.curve(row)
    if "probe/val_loss" not in m:
        return nan
    p = m.dropna(subset=["probe/val_loss"]).reset_index(drop=True)
    best = p["probe/val_loss"].idxmin()
    return {"val_rise": math.log10(float(row["val_loss"]) / float(p["probe/val_loss"].min())),
            "early_test_error": float(p.loc[best, "probe/test_error"]), "final_test_error": float(row["test_error"]),
            "best_step": int(p.loc[best, "step"]), "min_val_loss": float(p["probe/val_loss"].min()),
            "final_val_loss": float(row["val_loss"])}


@RECIPES.register("regularisation")
class Regularisation(Recipe):
    name = "regularisation"
    title = "Regularisation: L2 against weight decay, the lr x decay grid, early stopping and dropout"
    papers = ["Loshchilov & Hutter 2019", "Prechelt 1998", "Srivastava et al. 2014", "Arpit et al. 2017"]
    definitions = DEFINITIONS

    def measure(self, runs: Runs) -> list[Claim]:
        traj = runs.matching(part="trajectory")
        paths = {r["rule"]: loss_path(runs, r) for _, r in traj.iterrows()}
        empty = pd.Series(dtype=float)
        sgd_gap = max_relative_gap(paths.get("sgd_l2", empty), paths.get("sgd_decay", empty))
        adam_gap = max_relative_gap(paths.get("adam_l2", empty), paths.get("adam_decoupled", empty))

        grid = runs.matching(part="grid")
        picked = {rule: best_decays(grid[grid["rule"] == rule]) for rule in ("adam_l2", "adamw")}
        best = {rule: b for rule, (b, _) in picked.items()}
        edges = {rule: e for rule, (_, e) in picked.items()}
        spreads = {rule: spread(b) for rule, b in best.items()}
        adamw_edge = "; ".join(edges["adamw"]) or None
        both_edge = "; ".join(f"{rule} {e}" for rule in edges for e in edges[rule]) or None

        noisy = runs.matching(part="noisy")
        plain, dropped = noisy.one(**{"model.dropout": 0.0}), noisy.one(**{"model.dropout": 0.5})
        stop = early_stopping(runs, plain)
        finished = plain is not None and dropped is not None and plain["status"] == dropped["status"] == "done"
        raised = math.log10(float(dropped["train_loss"]) / float(plain["train_loss"])) if finished else math.nan
        gaps = {name: float(r["test_error"]) - float(r["train_error"]) if finished else math.nan
                for name, r in (("plain", plain), ("dropout", dropped))}
        test_gain = float(plain["test_error"]) - float(dropped["test_error"]) if finished else math.nan
        d = self.definitions
        return [
            d["sgd_l2_equals_decay"](sgd_gap),
            d["adam_l2_differs"](adam_gap, {"sgd_pair": sgd_gap}),
            d["adamw_decay_stable"](spreads["adamw"], {"best_decay_by_lr": best}, adamw_edge),
            d["adamw_more_stable_than_l2"](spreads["adam_l2"] - spreads["adamw"],
                                           {"spread_decades": spreads, "best_decay_by_lr": best}, both_edge),
            d["interior_val_minimum"](stop["val_rise"], stop),
            d["early_stopping_pays"](stop["final_test_error"] - stop["early_test_error"], stop),
            d["dropout_raises_train_loss"](raised, {"train_loss": {
                "plain": plain["train_loss"] if finished else None,
                "dropout": dropped["train_loss"] if finished else None}}),
            d["dropout_narrows_gap"](gaps["plain"] - gaps["dropout"], gaps),
            d["dropout_lowers_test_error"](test_gain, {"test_error": {
                "plain": float(plain["test_error"]) if finished else None,
                "dropout": float(dropped["test_error"]) if finished else None}}),
        ]

    def figures(self, runs: Runs, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        fig, axes = plt.subplots(1, 4, figsize=(20, 4))
        grid = runs[(runs["part"] == "grid") & (runs["status"] == "done")].copy()
        if len(grid):
            grid["decay"] = [decay_of(r) for _, r in grid.iterrows()]
            for ax, rule in zip(axes[:2], ("adam_l2", "adamw")):
                cells = grid[grid["rule"] == rule].groupby(["optim.lr", "decay"])["val_loss"].mean().unstack()
                if not cells.empty:
                    sns.heatmap(cells, annot=True, fmt=".2f", cmap="viridis_r", ax=ax, cbar=False)
                    ax.set(title=f"{'Adam + L2' if rule == 'adam_l2' else 'AdamW (eta_t lambda)'}: validation loss "
                                 f"(seed mean)", xlabel="decay lambda", ylabel="learning rate")
        noisy = runs.matching(part="noisy")
        curves = noisy.curves()
        if not curves.empty and "probe/val_loss" in curves:
            p = curves.dropna(subset=["probe/val_loss"]).copy()
            p["dropout"] = p["model.dropout"].astype(str)
            sns.lineplot(p, x="step", y="probe/val_loss", hue="dropout", errorbar=("pi", 100), ax=axes[2])
            axes[2].set(yscale="log", title="20% label noise: validation loss (seed band)")
            sns.lineplot(p, x="step", y="probe/test_error", hue="dropout", errorbar=("pi", 100), ax=axes[3])
            axes[3].set(title="Test error over training")
        fig.tight_layout()
        return save(fig, outdir / "regularisation")

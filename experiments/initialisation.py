"""Initialisation: how the initial weights' scale carries signal forward and gradients back through depth, where
saturation and symmetry come from, and what that does to training (Glorot & Bengio 2010, Figs. 5-7; He et al. 2015,
Sec. 2.2; the lecture notes' "random init breaks symmetry" and "keep pre-activations in [-2, 2]").

"At initialisation" is the diagnostics' first measured step (step 0, the first training batch, before any update):
per hidden layer the activation variance Var(a_l) and the back-propagated gradient's norm |dL/da_l| (a variance
ratio is the squared norm ratio: every hidden layer has the same width). "Propagated over the net" is Var(a_L) /
Var(a_1) forward and |dL/da_1|^2 / |dL/da_L|^2 backward: both are (g / 2)^(L-1) for ReLU under N(0, g / n) in the
wide limit (He et al. 2015, Eqs. 10 and 14), and for tanh follow the mean-field recursion q' = g E[tanh(sqrt(q) z)^2]
(Poole et al. 2016), which tanh(x) ~ x - x^3/3 makes fall like 1 / l under Xavier's g = 1: polynomially, not
exponentially. At finite width the log of a variance ratio fluctuates with sd ~ sqrt(5 L / n) nats (Hanin &
Rolnick 2018): about 0.4 decades at L = 50, n = 256, hence a decade as the band a scale is "kept" within.

Claims, each measured on every seed:
1. He + ReLU keeps both variances over 50 layers: the larger |log10| of the forward and backward ratios is below
   a decade (He et al. 2015, Sec. 2.2).
2. Xavier + tanh keeps both within the same band (Glorot & Bengio 2010, Figs. 6-7, on 5 layers; the issue asks it
   of 50).
3. The ReLU scalings follow the theory: for g = 1, 2, 4 both ratios match (g / 2)^(L-1), and Xavier + tanh its
   mean-field value, within 2x per 10 layers (the largest deviation, in doublings per 10 layers, below 1): 1/n
   collapses and 4/n explodes by ~15 decades, as predicted.
4. With Xavier few tanh pre-activations lie outside [-2, 2] (the hidden layers' mean share below 10%) ...
5. ... and with N(0, 1) most do (above 50%) (Glorot & Bengio 2010, Fig. 2 and Sec. 4.2.1).
6. Constant initialisation keeps hidden units identical through training: the largest difference between two units'
   incoming weights, over every measured step of 10 epochs, stays below 1e-6 (the lecture notes' symmetry argument).
7. A 30-layer ReLU net trains under He's init (training loss down by more than half) ...
8. ... and stalls under 1/n (down by less than a tenth) (He et al. 2015, Fig. 3).
9. A saturated sigmoid output (|logit| ~ 20) trains with cross-entropy (loss down by more than half) ...
10. ... and stalls with squared error (down by less than a tenth) (Glorot & Bengio 2010, Sec. 4.2; the gradient of
   squared error carries sigma'(z) ~ 0).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from experiments import RECIPES
from framework.claims import Definition, Definitions
from framework.plots import save, sns_setup
from framework.recipe import Recipe
from framework.results.measures import loss_reduction
from framework.results.runs import Runs
from framework.verdict import Claim, above, below

BAND = 1.0           # decades: a variance "kept" over depth (finite-width sd ~0.4 decades at 50 x 256)
PER_10_LAYERS = 1.0  # doublings per 10 layers: the tolerance on the theory's prediction
FEW, MOST = 0.10, 0.50
IDENTICAL = 1e-6
TRAINS, STALLED = 0.50, 0.10
RELU_GAINS = {"he_relu": 2.0, "lecun_relu": 1.0, "double_relu": 4.0}
HE, GB = "He et al. 2015", "Glorot & Bengio 2010"
LOSS_DROP = "1 - final / initial training loss"
KEPT = "max |log10| of Var(a_L) / Var(a_1) and |dL/da_1|^2 / |dL/da_L|^2 at initialisation (decades)"

DEFINITIONS = Definitions(
    Definition("he_keeps_variances", "He init keeps a ReLU net's activation and back-propagated gradient variances "
               "over 50 layers", quote="a proper initialization method should avoid reducing or magnifying the "
               "magnitudes of input signals exponentially", where=f"{HE}, Sec. 2.2, Eqs. 10 and 14",
               statistic=KEPT, criterion=below(BAND),
               source="measured noise: finite-width spread ~0.4 decades at 50 x 256; judged at one decade"),
    Definition("xavier_keeps_tanh_variances", "Xavier init keeps a tanh net's activation and back-propagated "
               "gradient variances over 50 layers", quote="we would like ... the variance of the back-propagated "
               "gradients to be the same across layers", paraphrase=True,
               where=f"{GB}, Sec. 4.2.1 and Figs. 6-7 (5 layers there; 50 here)", statistic=KEPT,
               criterion=below(BAND),
               source="measured noise: finite-width spread ~0.4 decades at 50 x 256; judged at one decade"),
    Definition("variance_theory_holds", "Under N(0, g/n) both ratios follow (g/2)^(L-1) for ReLU (1/n collapses, "
               "4/n explodes) and the mean-field recursion for Xavier + tanh",
               quote="the product of (1/2) n_l Var[w_l] over layers ... a factor that can be exponentially large "
                     "or small", paraphrase=True, where=f"{HE}, Eqs. 10 and 14; Poole et al. 2016",
               statistic="largest |log2 measured / predicted| per 10 layers over g = 1, 2, 4 (ReLU) and Xavier tanh",
               criterion=below(PER_10_LAYERS), source="closed form: the prediction, within one doubling per 10 "
               "layers"),
    Definition("xavier_few_saturate", "With Xavier init few tanh pre-activations saturate",
               quote="with the normalized initialization ... the saturation ... does not occur", paraphrase=True,
               where=f"{GB}, Sec. 4.2.1 and Fig. 6",
               statistic="mean share of hidden pre-activations outside [-2, 2] at initialisation",
               criterion=below(FEW), source="convention: under a tenth is 'few'"),
    Definition("normal_most_saturate", "With N(0, 1) init most tanh pre-activations saturate",
               quote="with large initial weights the tanh units saturate", paraphrase=True,
               where=f"{GB}, Sec. 4.2.1",
               statistic="mean share of hidden pre-activations outside [-2, 2] at initialisation",
               criterion=above(MOST), source="convention: over half is 'most'"),
    Definition("constant_init_symmetric", "Constant initialisation keeps hidden units identical through training",
               quote="if all weights start equal, every hidden unit computes the same function and receives the "
                     "same gradient: random initialisation breaks the symmetry", paraphrase=True,
               where="the lecture notes",
               statistic="largest difference between two hidden units' incoming weights over 10 epochs",
               criterion=below(IDENTICAL), source="closed form: exactly 0 in exact arithmetic; 1e-6 for float32"),
    Definition("deep_relu_trains_he", "A 30-layer ReLU net trains under He init",
               quote="our initialization method ... allows the 30-layer model to converge", paraphrase=True,
               where=f"{HE}, Fig. 3", statistic=LOSS_DROP, criterion=above(TRAINS),
               source="convention: a loss that falls by more than half has trained"),
    Definition("deep_relu_stalls_lecun", "A 30-layer ReLU net stalls under 1/n init",
               quote="the Xavier initialization ... completely stalls ... for the 30-layer model", paraphrase=True,
               where=f"{HE}, Fig. 3", statistic=LOSS_DROP, criterion=below(STALLED),
               source="convention: a loss that falls by less than a tenth has not trained"),
    Definition("sigmoid_output_trains_ce", "A saturated sigmoid output trains with cross-entropy",
               quote="the cross-entropy ... is much less prone to plateaus than the quadratic cost with saturated "
                     "sigmoid outputs", paraphrase=True, where=f"{GB}, Sec. 4.2",
               statistic=LOSS_DROP, criterion=above(TRAINS),
               source="convention: a loss that falls by more than half has trained"),
    Definition("sigmoid_output_stalls_mse", "A saturated sigmoid output stalls with squared error",
               quote="the quadratic cost ... plateaus when sigmoid outputs saturate", paraphrase=True,
               where=f"{GB}, Sec. 4.2", statistic=LOSS_DROP, criterion=below(STALLED),
               source="convention: a loss that falls by less than a tenth has not trained"),
)
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(101)  # Gauss-Hermite rule for E over z ~ N(0, 1)


def _gauss(f) -> float:
    return float((_WEIGHTS * f(_NODES)).sum() / _WEIGHTS.sum())


def tanh_theory(first_var: float, layers: int, gain: float = 1.0) -> tuple[float, float]:
    """Mean-field (wide-limit) forward and backward ratios of a tanh net under N(0, gain / n), from the first hidden
    layer's measured activation variance: q is solved from E tanh(sqrt(q) z)^2 = Var(a_1), then
    q' = gain E tanh(sqrt(q) z)^2 layer by layer, and each layer back multiplies dL/da's variance by
    gain E tanh'(sqrt(q) z)^2 (Poole et al. 2016; Glorot & Bengio 2010's linear regime is gain = 1 at q -> 0)."""
    if not 0 < first_var < 1:
        return math.nan, math.nan
    lo, hi = 0.0, 1e4
    for _ in range(100):  # bisection: E tanh^2 grows with q
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _gauss(lambda z: np.tanh(math.sqrt(mid) * z) ** 2) < first_var else (lo, mid)
    q, back = lo, 1.0
    for _ in range(layers - 1):
        q = gain * _gauss(lambda z: np.tanh(math.sqrt(q) * z) ** 2)
        back *= gain * _gauss(lambda z: (1 - np.tanh(math.sqrt(q) * z) ** 2) ** 2)
    return _gauss(lambda z: np.tanh(math.sqrt(q) * z) ** 2) / first_var, back


def at_init(runs: Runs, row) -> dict:
    """Forward and backward ratios over the hidden layers and the mean saturated share, at step 0 (4/n's update
    then overflows: its run is recorded diverged, its initialisation is measured all the same)."""
    if row is None or row["status"] not in ("done", "diverged"):  # measured before the first update
        return {"forward": math.nan, "backward": math.nan, "saturation": math.nan, "layers": 0, "first_var": math.nan}
    d = runs.curve(row, "diagnostics.csv")
    hidden = d[(d["step"] == d["step"].min())].dropna(subset=["act_var"]).sort_values("layer")
    v, g = hidden["act_var"].to_numpy(), hidden["act_grad_norm"].to_numpy()
    ratio = lambda a, b: float(a / b) if b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan  # noqa: E731
    return {"forward": ratio(v[-1], v[0]), "backward": ratio(g[0] ** 2, g[-1] ** 2),
            "saturation": float(hidden["saturation"].mean()), "layers": len(hidden), "first_var": float(v[0])}


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 and math.isfinite(x) else math.nan


def theory(scheme: str, measured: dict) -> tuple[float, float]:
    """The scheme's predicted forward and backward ratios over its measured hidden layers."""
    layers = measured["layers"]
    if scheme in RELU_GAINS:
        r = (RELU_GAINS[scheme] / 2) ** (layers - 1)
        return r, r
    return tanh_theory(measured["first_var"], layers)


def max_unit_spread(runs: Runs, row) -> float:
    """The largest unit_spread of a hidden layer (every weight layer but the head) over the measured steps."""
    if row is None or row["status"] != "done":
        return math.nan
    d = runs.curve(row, "diagnostics.csv")
    return float(d[d["layer"] < d["layer"].max()]["unit_spread"].max())


@RECIPES.register("initialisation")
class Initialisation(Recipe):
    name = "initialisation"
    title = "Initialisation: variance through depth, saturation, symmetry, and what they do to training"
    papers = ["Glorot & Bengio 2010", "He et al. 2015", "Poole et al. 2016", "Hanin & Rolnick 2018"]
    definitions = DEFINITIONS

    def measure(self, runs: Runs) -> list[Claim]:
        var = runs.matching(part="variance")
        measured = {r["scheme"]: at_init(runs, r) for _, r in var.iterrows()}
        blank = at_init(runs, None)
        he, xavier = measured.get("he_relu", blank), measured.get("xavier_tanh", blank)

        def kept(m: dict) -> float:
            logs = [abs(_log10(m["forward"])), abs(_log10(m["backward"]))]
            return max(logs) if not any(map(math.isnan, logs)) else math.nan

        deviations, predicted = {}, {}
        for scheme in (*RELU_GAINS, "xavier_tanh"):
            m = measured.get(scheme, blank)
            fwd, bwd = theory(scheme, m) if m["layers"] else (math.nan, math.nan)
            predicted[scheme] = {"forward": fwd, "backward": bwd, "measured_forward": m["forward"],
                                 "measured_backward": m["backward"]}
            per10 = 10 / max(1, m["layers"] - 1)
            for way, p in (("forward", fwd), ("backward", bwd)):
                deviations[f"{scheme} {way}"] = abs(math.log2(m[way] / p)) * per10 \
                    if m[way] > 0 and p > 0 and math.isfinite(m[way]) else math.nan
        worst = max(deviations.values()) if not any(map(math.isnan, deviations.values())) else math.nan

        sym = runs.matching(part="symmetry")
        spread = {r["scheme"]: max_unit_spread(runs, r) for _, r in sym.iterrows()}
        deep = runs.matching(part="deep_relu")
        deep_drop = {r["scheme"]: loss_reduction(r) for _, r in deep.iterrows()}
        out = runs.matching(part="output")
        out_drop = {r["scheme"]: loss_reduction(r) for _, r in out.iterrows()}

        def ratios(m: dict) -> dict:
            return {"forward_var_ratio": m["forward"], "backward_var_ratio": m["backward"], "hidden_layers": m["layers"]}
        d = self.definitions
        return [
            d["he_keeps_variances"](kept(he), ratios(he)),
            d["xavier_keeps_tanh_variances"](kept(xavier), ratios(xavier)),
            d["variance_theory_holds"](worst, {"per_10_layers": deviations, "ratios": predicted}),
            d["xavier_few_saturate"](xavier["saturation"], {"xavier_tanh": xavier["saturation"]}),
            d["normal_most_saturate"](measured.get("normal_tanh", blank)["saturation"],
                                      {"normal_tanh": measured.get("normal_tanh", blank)["saturation"]}),
            d["constant_init_symmetric"](spread.get("constant", math.nan), {"max_unit_spread": spread}),
            d["deep_relu_trains_he"](deep_drop.get("he", math.nan), deep_drop),
            d["deep_relu_stalls_lecun"](deep_drop.get("lecun", math.nan), deep_drop),
            d["sigmoid_output_trains_ce"](out_drop.get("cross_entropy", math.nan), out_drop),
            d["sigmoid_output_stalls_mse"](out_drop.get("squared_error", math.nan), out_drop),
        ]

    def figures(self, runs: Runs, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        var = runs.matching(part="variance")
        diag = var.curves("diagnostics.csv")
        if not diag.empty:
            init = diag[diag["step"] == 0].dropna(subset=["act_var"]).copy()
            init["hidden layer"] = init["layer"] + 1
            first = init[init["layer"] == 0].set_index("run_id")
            init["Var(a_l) / Var(a_1)"] = init["act_var"] / init["run_id"].map(first["act_var"])
            last = init.groupby("run_id")["layer"].transform("max")
            tail = init[init["layer"] == last].set_index("run_id")["act_grad_norm"]
            init["|dL/da_l|^2 / |dL/da_L|^2"] = (init["act_grad_norm"] / init["run_id"].map(tail)) ** 2
            shown = init[init["scheme"] != "normal_tanh"]  # its back-propagated gradient overflows float32
            for ax, col in zip(axes[:2], ["Var(a_l) / Var(a_1)", "|dL/da_l|^2 / |dL/da_L|^2"]):
                sns.lineplot(shown, x="hidden layer", y=col, hue="scheme", errorbar=("pi", 100), ax=ax)
                ax.set(yscale="log", title=f"At initialisation: {col.split(' /')[0]} over depth (seed band)")
        curves = runs[runs["part"].isin(["deep_relu", "output"])].curves()
        if not curves.empty and "train/loss_epoch" in curves:
            ep = curves.dropna(subset=["train/loss_epoch"]).copy()
            ep["run"] = ep["part"] + ": " + ep["scheme"]
            sns.lineplot(ep, x="epoch", y="train/loss_epoch", hue="run", errorbar=("pi", 100), ax=axes[2])
            axes[2].set(yscale="log", ylabel="training loss (epoch mean)", title="Training: 30-layer ReLU, sigmoid output")
        fig.tight_layout()
        return save(fig, outdir / "initialisation")

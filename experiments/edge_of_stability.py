"""The edge of stability (Cohen, Kaur, Li, Kolter & Talwalkar 2021, "Gradient descent on neural networks typically
occurs at the edge of stability", Fig. 1 and Sec. 3; the lecture notes' eta < 2 / L).

On a quadratic, gradient descent with step size eta diverges once the sharpness (the top Hessian eigenvalue)
exceeds 2 / eta. On a net trained by full-batch GD with squared loss, Cohen et al. find instead: the sharpness rises
during training (progressive sharpening) until it reaches 2 / eta, then hovers just at or above it while the loss
keeps falling, non-monotonically, over long timescales; before that point GD tracks gradient flow, after it departs.
Gradient flow is approximated by GD at a step size whose 2 / eta stays far above the sharpness throughout (the
recipe's `flow` run), compared at equal time t = eta x step.

Claims, each measured on every seed (the "crossing" of a GD run is its first probe with sharpness >= 2 / eta):
1. Progressive sharpening: under gradient flow the sharpness rises over training: log2 of its last over its first
   probe above 0 (Cohen et al. 2021, Sec. 3.1).
2. GD's sharpness reaches 2 / eta at every eta: the smallest over eta of max_t sharpness / (2 / eta) is above 1.
3. It then hovers at 2 / eta: the median of sharpness / (2 / eta) over the probes from the crossing on lies in
   [0.8, 1.2] at every eta (reported: the eta farthest from 1) (Cohen et al. 2021, Fig. 1).
4. The loss keeps falling at the edge: log10 of the loss at the crossing over the loss at the end (each a mean over
   LOSS_WINDOW steps) above 0 at every eta.
5. ... non-monotonically: the share of steps after the crossing at which the full-batch loss rose is above
   RISES at every eta (gradient flow's share is reported: 0 at a stable step).
6. GD tracks gradient flow until the crossing: the largest relative loss difference |L_GD(t) - L_flow(t)| / L_flow(t)
   over the probes up to the crossing is below TRACKS at every eta (Cohen et al. 2021, Sec. 3, App.).
7. ... and departs from it after: the mean relative loss difference over the last third of the flow run's time
   span is above DEPARTS at every eta.
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

HOVER = (0.8, 1.2)   # the notes' band around 2 / eta
LOSS_WINDOW = 20     # steps averaged for "the loss at" a step: a single step's loss at the edge oscillates
RISES = 0.01         # share of steps at which the loss rose: gradient flow's and GD's before the crossing are 0
TRACKS = 0.05        # relative loss difference while tracking: measured 0.007-0.014 before the crossing (seeds 0-4)
DEPARTS = 0.10       # twice TRACKS: measured 0.13-0.41 after the crossing (seeds 0-4, eta 0.3-0.5)
COHEN = "Cohen et al. 2021"
FLOW_NOTE = ("gradient flow approximated by GD at a step size far below 2 / sharpness, compared by loss; Cohen et "
             "al. use a Runge-Kutta flow and compare iterates")

DEFINITIONS = Definitions(
    Definition("progressive_sharpening", "Progressive sharpening: under gradient flow the sharpness rises during "
               "training", quote="the sharpness tends to continually increase over the course of training, a "
               "phenomenon we call progressive sharpening", paraphrase=True, where=f"{COHEN}, Sec. 3.1",
               statistic="log2 sharpness at the end / at initialisation (flow run)", criterion=above(0.0),
               source="convention: any rise, the interval over seeds judging it"),
    Definition("sharpness_reaches_2_over_eta", "Gradient descent's sharpness rises to 2 / eta",
               quote="the maximum eigenvalue of the training loss Hessian hovers just above the numerical value 2 / "
                     "(step size)", where=f"{COHEN}, abstract and Fig. 1",
               statistic="smallest over eta of max sharpness / (2 / eta)", criterion=above(1.0),
               source="closed form: 2 / eta"),
    Definition("sharpness_hovers", "It then hovers at 2 / eta",
               quote="the maximum eigenvalue of the training loss Hessian hovers just above the numerical value 2 / "
                     "(step size)", where=f"{COHEN}, abstract and Fig. 1; the lecture notes' eta < 2 / L",
               statistic="median sharpness / (2 / eta) from the crossing on, the eta farthest from 1",
               criterion=within(*HOVER), source="closed form: centred on 2 / eta, within the notes' 20%"),
    Definition("loss_keeps_falling", "The loss keeps falling at the edge of stability",
               quote="the train loss behaves non-monotonically over short timescales, yet consistently decreases "
                     "over long timescales", where=f"{COHEN}, abstract and Sec. 3",
               statistic=f"smallest over eta of log10 loss at the crossing / at the end ({LOSS_WINDOW}-step means)",
               criterion=above(0.0), source="convention: any fall, the interval over seeds judging it"),
    Definition("loss_non_monotone", "... non-monotonically",
               quote="the train loss behaves non-monotonically over short timescales, yet consistently decreases "
                     "over long timescales", where=f"{COHEN}, abstract and Fig. 1",
               statistic="smallest over eta of the share of steps after the crossing at which the loss rose",
               criterion=above(RISES), source="closed form: gradient flow's share is 0; judged at 1% of steps"),
    Definition("gd_tracks_flow", "Gradient descent tracks gradient flow until the sharpness reaches 2 / eta",
               quote="gradient descent closely tracks the gradient flow trajectory until the sharpness reaches 2 / "
                     "eta", paraphrase=True, where=f"{COHEN}, Sec. 3 ({FLOW_NOTE})",
               statistic="largest over eta of max |L_GD(t) - L_flow(t)| / L_flow(t) up to the crossing",
               criterion=below(TRACKS), source="convention: a 5% relative loss difference (first chosen after "
               "seeing 0.007-0.014 at seeds 0-4: not an independent noise estimate)"),
    Definition("gd_departs_flow", "... and departs from it after",
               quote="once the sharpness reaches 2 / eta, gradient descent departs from the gradient flow "
                     "trajectory", paraphrase=True, where=f"{COHEN}, Sec. 3 ({FLOW_NOTE})",
               statistic="smallest over eta of the mean |L_GD(t) - L_flow(t)| / L_flow(t) over the last third of "
                         "flow's span", criterion=above(DEPARTS),
               source="convention: twice the tracking bound (first chosen after seeing 0.13-0.41 at seeds 0-4: not "
                      "an independent noise estimate)"),
)


def curves(runs: Runs, row) -> tuple[pd.DataFrame, pd.Series]:
    """(probes: step, t, loss, sharpness; the full-batch loss at every logged step) of a finished run."""
    if row is None or row["status"] != "done":
        return pd.DataFrame(columns=["step", "t", "loss", "sharpness"]), pd.Series(dtype=float)
    m = runs.curve(row)
    probes = m.dropna(subset=["probe/sharpness"])[["step", "probe/loss", "probe/sharpness"]]
    probes = probes.rename(columns={"probe/loss": "loss", "probe/sharpness": "sharpness"}).reset_index(drop=True)
    probes["t"] = (probes["step"] * float(row["optim.lr"])).round(6)
    # one full batch an epoch: the epoch's loss is the full-batch loss before that step's update
    steps = m.dropna(subset=["train/loss_epoch"]).set_index("step")["train/loss_epoch"] if "train/loss_epoch" in m \
        else pd.Series(dtype=float)
    return probes, steps


def edge(probes: pd.DataFrame, lr: float) -> dict:
    """Where a GD run meets 2 / eta, and how it sits there."""
    ratio = probes["sharpness"] * lr / 2
    crossed = probes[ratio >= 1]
    out = {"initial_ratio": float(ratio.iloc[0]) if len(ratio) else math.nan,
           "max_ratio": float(ratio.max()) if len(ratio) else math.nan,
           "crossing_step": int(crossed["step"].iloc[0]) if len(crossed) else None}
    out["hover_ratio"] = float(ratio[probes["step"] >= out["crossing_step"]].median()) \
        if out["crossing_step"] is not None else math.nan
    return out


def falls(steps: pd.Series, crossing: int | None) -> tuple[float, float]:
    """(log10 loss at the crossing / loss at the end, share of steps after the crossing at which the loss rose)."""
    if crossing is None or not len(steps):
        return math.nan, math.nan
    at = steps[(steps.index <= crossing)].iloc[-LOSS_WINDOW:].mean()
    end = steps.iloc[-LOSS_WINDOW:].mean()
    after = steps[steps.index >= crossing]
    rose = float((after.diff().dropna() > 0).mean()) if len(after) > 1 else math.nan
    return math.log10(at / end) if at > 0 and end > 0 else math.nan, rose


def against_flow(probes: pd.DataFrame, flow: pd.DataFrame, crossing: int | None) -> tuple[float, float]:
    """(largest relative loss difference to flow up to the crossing, mean over the last third of flow's span)."""
    if crossing is None or flow.empty:
        return math.nan, math.nan
    both = probes.merge(flow[["t", "loss"]].rename(columns={"loss": "flow"}), on="t")
    rel = (both["loss"] - both["flow"]).abs() / both["flow"]
    before = rel[both["step"] <= crossing]
    late = rel[both["t"] >= flow["t"].max() * 2 / 3]
    return (float(before.max()) if len(before) else math.nan), (float(late.mean()) if len(late) else math.nan)


@RECIPES.register("edge_of_stability")
class EdgeOfStability(Recipe):
    name = "edge_of_stability"
    title = "The edge of stability: progressive sharpening to 2 / eta, and gradient descent leaving gradient flow"
    papers = ["Cohen et al. 2021"]
    definitions = DEFINITIONS

    def measure(self, runs: Runs) -> list[Claim]:
        flow_row = runs.matching(part="flow")
        flow, flow_steps = curves(runs, flow_row.iloc[0] if len(flow_row) else None)
        sharpening = math.log2(flow["sharpness"].iloc[-1] / flow["sharpness"].iloc[0]) \
            if len(flow) > 1 and flow["sharpness"].iloc[0] > 0 and flow["sharpness"].iloc[-1] > 0 else math.nan
        flow_rose = float((flow_steps.diff().dropna() > 0).mean()) if len(flow_steps) > 1 else math.nan

        per_lr = {}
        for _, r in runs.matching(part="gd").sort_values("optim.lr").iterrows():
            lr = float(r["optim.lr"])
            probes, steps = curves(runs, r)
            e = edge(probes, lr) if len(probes) else {"initial_ratio": math.nan, "max_ratio": math.nan,
                                                      "crossing_step": None, "hover_ratio": math.nan}
            drop, rose = falls(steps, e["crossing_step"])
            tracked, departed = against_flow(probes, flow, e["crossing_step"])
            per_lr[f"{lr:g}"] = {**e, "two_over_eta": 2 / lr, "loss_drop_decades": drop, "share_rising": rose,
                                 "tracking_error": tracked, "departure": departed, "status": r["status"]}

        def worst(key: str, fn=min) -> float:
            values = [v[key] for v in per_lr.values()]
            return fn(values) if values and not any(map(math.isnan, values)) else math.nan
        hover = [v["hover_ratio"] for v in per_lr.values()]
        farthest = max(hover, key=lambda h: abs(math.log(h))) if hover and all(h > 0 for h in hover) else math.nan
        d = self.definitions
        return [
            d["progressive_sharpening"](sharpening, {
                "flow_sharpness_first": float(flow["sharpness"].iloc[0]) if len(flow) else None,
                "flow_sharpness_last": float(flow["sharpness"].iloc[-1]) if len(flow) else None}),
            d["sharpness_reaches_2_over_eta"](worst("max_ratio"), per_lr),
            d["sharpness_hovers"](farthest, {k: v["hover_ratio"] for k, v in per_lr.items()}),
            d["loss_keeps_falling"](worst("loss_drop_decades"), {k: v["loss_drop_decades"] for k, v in per_lr.items()}),
            d["loss_non_monotone"](worst("share_rising"), {"gd": {k: v["share_rising"] for k, v in per_lr.items()},
                                                           "flow": flow_rose}),
            d["gd_tracks_flow"](worst("tracking_error", max), {k: v["tracking_error"] for k, v in per_lr.items()}),
            d["gd_departs_flow"](worst("departure"), {k: v["departure"] for k, v in per_lr.items()}),
        ]

    def figures(self, runs: Runs, outdir: Path) -> list[Path]:
        sns, plt = sns_setup()
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        frames = []
        for _, r in runs.iterrows():
            probes, _ = curves(runs, r)
            if len(probes):
                probes["run"] = "flow" if r["part"] == "flow" else f"eta {float(r['optim.lr']):g}"
                probes["seed"] = r["seed"]
                frames.append(probes)
        if frames:
            table = pd.concat(frames, ignore_index=True)
            gd = table[table["run"] != "flow"]
            sns.lineplot(gd, x="step", y="sharpness", hue="run", errorbar=("pi", 100), ax=axes[0])
            for i, lr in enumerate(sorted(runs.matching(part="gd")["optim.lr"].unique())):
                axes[0].axhline(2 / lr, color=f"C{i}", ls="--", lw=0.8)
            axes[0].set(title="Sharpness against 2 / eta (dashed), seed band", ylabel="top Hessian eigenvalue")
            sns.lineplot(table, x="t", y="sharpness", hue="run", errorbar=("pi", 100), ax=axes[1])
            axes[1].set(title="Sharpness against time t = eta x step", xlabel="t")
            sns.lineplot(table, x="t", y="loss", hue="run", errorbar=("pi", 100), ax=axes[2])
            axes[2].set(yscale="log", xlabel="t", ylabel="full-batch loss", title="Gradient descent and gradient flow")
        fig.tight_layout()
        return save(fig, outdir / "edge_of_stability")

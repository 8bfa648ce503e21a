"""Reports: a suite's runs as DataFrames (from the run store or from W&B), its figures, and HTML pages.

`summary`: one row per run (a framework.results.Runs view: its config keys by their dotted names, its final
numbers). `history`: one row per run x logged step. Both are saved as CSV beside the figures. The HTML pages
embed every figure as a data URI, so they open from disk with no server and no network.
"""
from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from framework.config import flatten
from framework.files import atomic_write, strict_json
from framework.plots import save, sns_setup
from framework.recipe import Recipe
from framework.registry import UserError
from framework.results.runs import Runs, runs_frame
from framework.store import RunStore
from framework.suite import claims_or_error
from framework.tracking import code_version, wandb_group, wandb_mode
from framework.wandb_files import STEP, merged_history, offline_runs, read_run


def local_frames(recipe: Recipe, scale: str, store: RunStore, overrides=(), seeds=None,
                 seed_base=0) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = recipe.runs(scale, list(overrides), seeds, seed_base)
    summary = runs_frame(runs, store)
    return summary, summary.curves()


def wandb_history(run: dict) -> pd.DataFrame:
    """History rows of a W&B run that hold the framework's own metrics (Lightning's, not diagnostics)."""
    rows = [{k: v for k, v in r.items() if not k.startswith(("grad_norm/", "weight_norm/", "saturation/", "diag/"))}
            for r in run["history"]]
    frame = pd.DataFrame([r for r in rows if any(k in r for k in ("train/loss", "train/loss_epoch", "val/loss"))])
    if frame.empty:
        return frame
    frame = frame.rename(columns={STEP: "step"}).drop(
        columns=[c for c in ("_step", "_runtime", "_timestamp") if c in frame], errors="ignore")
    merged = frame.groupby("step", as_index=False).first()
    return merged[["step", *sorted(c for c in merged.columns if c != "step")]]


def wandb_frames(recipe: Recipe, scale: str, store: RunStore, overrides=(), seeds=None, seed_base=0,
                 project: str | None = None):
    """The same frames from W&B: through wandb.Api when online, else from the offline run files in the store."""
    runs = recipe.runs(scale, list(overrides), seeds, seed_base)
    if runs and wandb_mode(runs[0].cfg) == "online":
        return _api_frames(recipe, scale, runs, project or runs[0].cfg.tracking.project, runs[0].cfg.tracking.entity,
                           store)
    summary_rows, histories = [], []
    for run in runs:
        folders = offline_runs(store.run_dir(recipe.name, run.run_id))
        if not folders:
            continue
        records = [read_run(f) for f in folders]   # a resumed run has one folder per attempt
        config = records[-1]["config"]
        final = {}
        for r in records:
            final.update(r["summary"])
        summary_rows.append({"run_id": run.run_id, "variant": config.get("variant"), **run.axes,
                             **{k: v for k, v in flatten({k: config[k] for k in config
                                                                   if not k.startswith("_") and k not in
                                                                   ("run_id", "code")}).items()
                                if not isinstance(v, list)},
                             **{k: v for k, v in final.items() if not k.startswith("_") and "/" not in k}})
        # a resumed run's attempts as one history, merged as `repro sync` merges them
        hist = wandb_history({"history": merged_history(records)})
        if not hist.empty:
            for col in ["run_id", "variant", *run.axes]:
                hist[col] = summary_rows[-1][col]
            histories.append(hist)
    return _frames(runs, summary_rows, histories, store, recipe.name)


def _frames(runs, summary_rows: list[dict], histories: list[pd.DataFrame], store: RunStore, experiment: str):
    summary = Runs(summary_rows, store=store, experiment=experiment)
    summary.attrs["axes"] = list(dict.fromkeys(a for run in runs for a in run.axes))
    return summary, (pd.concat(histories, ignore_index=True) if histories else pd.DataFrame())


def current_attempts(remotes, wanted) -> dict:
    """Each wanted run's W&B run among `remotes` (the suite's group): matched by the run_id in its config (its W&B id
    is the config hash, or <hash>-<attempt> for a fresh attempt: tracking.wandb_id), the latest attempt's."""
    best: dict = {}
    for remote in remotes:
        config = dict(remote.config)
        run_id = config.get("run_id") or remote.id.split("-")[0]
        attempt = int(config.get("attempt") or 1)
        if run_id in wanted and attempt >= best.get(run_id, (0, None))[0]:
            best[run_id] = (attempt, remote)
    return {run_id: remote for run_id, (_, remote) in best.items()}


def _api_frames(recipe, scale, runs, project, entity, store):  # pragma: no cover - needs a W&B account and network
    import wandb
    api = wandb.Api(timeout=30)
    path = f"{entity}/{project}" if entity else project
    wanted = {run.run_id: run for run in runs}
    summary_rows, histories = [], []
    # the suite's group holds its verdict run too, whose config has no run_id: current_attempts leaves it out
    found = current_attempts(api.runs(path, filters={"group": wandb_group(recipe.name, scale)}), wanted)
    for run_id, remote in found.items():
        run = wanted[run_id]
        summary_rows.append({"run_id": run.run_id, "variant": run.cfg.variant, **run.axes,
                             **{k: v for k, v in flatten(dict(remote.config)).items()},
                             **{k: v for k, v in remote.summary.items() if not k.startswith("_")}})
        hist = remote.history(samples=100_000, pandas=True).rename(columns={STEP: "step"})
        for col in ["run_id", "variant", *run.axes]:
            hist[col] = summary_rows[-1][col]
        histories.append(hist)
    return _frames(runs, summary_rows, histories, store, recipe.name)


def versions() -> dict[str, str]:
    import pytorch_lightning
    import torch
    import wandb
    return {**code_version(), "torch": torch.__version__, "lightning": pytorch_lightning.__version__,
            "wandb": wandb.__version__, "generated": time.strftime("%Y-%m-%d %H:%M:%S")}


def diagnostics_figure(summary: Runs, outdir: Path) -> list[Path]:
    """What a user looks at when a run goes wrong: loss curves, first/last-layer gradient norms, saturation."""
    sns, plt = sns_setup()
    curves, diag = summary.curves(), summary.curves("diagnostics.csv")
    if curves.empty and diag.empty:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    if "train/loss" in curves:
        c = curves.dropna(subset=["train/loss"])
        sns.lineplot(c, x="step", y="train/loss", hue="variant", ax=axes[0], legend=False, lw=0.8)
        axes[0].set(yscale="log", xlabel="training step", ylabel="training loss", title="Training curves")
    if not diag.empty:
        layers = diag.groupby("run_id")["layer"].transform("max")
        ends = diag[(diag["layer"] == 0) | (diag["layer"] == layers)].assign(
            which=lambda d: d["layer"].eq(0).map({True: "first layer", False: "last layer"}))
        ends = ends.assign(grad_norm=ends["grad_norm"].clip(lower=1e-30))
        sns.lineplot(ends, x="step", y="grad_norm", hue="which", units="run_id", estimator=None, ax=axes[1],
                     lw=0.6, alpha=0.6)
        axes[1].set(yscale="log", xlabel="training step", ylabel="gradient norm (floor 1e-30)",
                    title="First- and last-layer gradient norms")
        sat = diag.dropna(subset=["saturation"])
        if not sat.empty:
            sat = sat.groupby(["run_id", "step"], as_index=False)["saturation"].mean()
            sns.lineplot(sat, x="step", y="saturation", units="run_id", estimator=None, ax=axes[2], lw=0.6,
                         alpha=0.6)
        axes[2].set(xlabel="training step", ylabel="saturated fraction of units", ylim=(-0.02, 1.02),
                    title="Activation saturation (mean over layers)")
    fig.tight_layout()
    return save(fig, outdir / "diagnostics")


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}"><figcaption>' \
           f'{html.escape(path.stem.replace("_", " "))}</figcaption></figure>'


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:13px}.yes{color:#070}.no{color:#b00}
.maybe{color:#a60}
img{max-width:100%}figure{margin:1em 0}code{font-size:12px}"""
# The page records how many of its figures decoded, for a headless browser (and a curious user) to read.
CHECK = """<script>window.addEventListener('load',()=>{const i=[...document.images];
document.body.dataset.figures=i.length;document.body.dataset.figuresLoaded=i.filter(x=>x.naturalWidth>0).length;});
</script>"""


def _g(v) -> str:
    if v is None:  # verdict.json's null: a statistic that was nan or infinite (strict JSON has neither)
        return "not finite"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


VERDICT_CLASS = {"reproduced": "yes", "not reproduced": "no", "inconclusive": "maybe"}


def verdict_rows(verdict: dict) -> str:
    rows = []
    for c in verdict["claims"]:
        lo, hi = c["interval"]
        per_seed = ", ".join(f"{s}: {_g(v)}" for s, v in c["per_seed"].items())
        mark = f'<b class="{VERDICT_CLASS.get(c["verdict"], "maybe")}">{html.escape(c["verdict"])}</b> ' \
               f'({c["seeds_holding"]}/{c["seeds"]} seeds hold' + \
               (f'; too few to judge, the interval alone: {html.escape(str(c.get("interval_verdict")))})'
                if c.get("too_few_seeds") else ")") + \
               (f'; censored at seed {html.escape(", ".join(c["censored"]))}' if c.get("censored") else "")
        quote = f'"{c.get("quote", "")}"' + (" (paraphrase)" if c.get("paraphrase") else "")
        rows.append(f"<tr><td>{html.escape(verdict['experiment'])}</td><td>{html.escape(c['claim'])} "
                    f"<small>v{c.get('version', 0)}</small></td>"
                    f"<td>{html.escape(quote)}<br>{html.escape(c['reference'])}</td>"
                    f"<td>{_g(c['mean'])} [{_g(lo)}, {_g(hi)}]</td>"
                    f"<td><code>{html.escape(per_seed)}</code></td>"
                    f"<td>{html.escape(c['criterion'])}</td><td>{mark}</td></tr>")
    return "\n".join(rows)


TABLE_HEAD = ("<tr><th>experiment</th><th>claim</th><th>paper</th><th>mean [95% interval]</th><th>per seed</th>"
              "<th>criterion</th><th>verdict</th></tr>")


def experiment_page(recipe: Recipe, verdict: dict, summary: pd.DataFrame, figures: list[Path], grid: dict,
                    info: dict) -> str:
    counts = summary["status"].value_counts().to_dict() if "status" in summary else {}
    grid_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in grid.items())
    figs = "\n".join(_img(p) for p in figures if p.suffix == ".png")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{recipe.name}</title><style>{STYLE}</style>
</head><body><h1>{html.escape(recipe.title)}</h1><p>Papers: {html.escape('; '.join(recipe.papers))}.
Scale: <b>{html.escape(verdict['scale'])}</b>. <a href="../../index.html">All experiments</a></p>
<h2>Verdict</h2><table id="verdict">{TABLE_HEAD}{verdict_rows(verdict)}</table>
<h2>Figures</h2>{figs}
<h2>Runs</h2><p>{len(summary)} runs: {html.escape(', '.join(f'{k} {v}' for k, v in counts.items()))}.
Data: <a href="summary.csv">summary.csv</a> (one row per run), <a href="history.csv">history.csv</a> (per step).</p>
<h3>Grid</h3><table>{grid_rows}</table>
<h2>Versions</h2><p><code>{html.escape(json.dumps(info))}</code></p>{CHECK}</body></html>"""


def index_page(verdicts: list[dict], info: dict) -> str:
    links = " · ".join(f'<a href="{html.escape(quote(v["experiment"]))}/{html.escape(quote(v["scale"]))}/index.html">'
                       f'{html.escape(v["experiment"])} [{html.escape(v["scale"])}]</a>' for v in verdicts)
    rows = "\n".join(verdict_rows(v) for v in verdicts)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>repro reports</title><style>{STYLE}</style>
</head><body><h1>Phenomena of neural-network training: verdicts</h1><p>{links}</p>
<table id="verdict">{TABLE_HEAD}{rows}</table><h2>Versions</h2><p><code>{html.escape(json.dumps(info))}</code></p>
{CHECK}</body></html>"""


class NoRuns(UserError):
    """A recipe with no finished runs to report (`report all` goes on to the next recipe)."""


def report(recipe: Recipe, scale: str | None, store: RunStore, reports_dir: Path, source: str = "local",
           overrides=(), seeds: int | None = None, seed_base: int = 0) -> dict:
    """Frames, figures, claims and the HTML page of one recipe, from runs already in the store (or W&B)."""
    scale = scale or recipe.default_scale()
    if source not in ("local", "wandb"):
        raise UserError(f"--source: unknown source '{source}'; choices: local, wandb")
    summary, hist = (local_frames if source == "local" else wandb_frames)(recipe, scale, store, overrides, seeds,
                                                                           seed_base)
    if summary.empty or "train_loss" not in summary:
        raise NoRuns(f"no finished runs of {recipe.name} [{scale}] in {store.root} (source {source}): "
                        f"run `repro run {recipe.name} --scale {scale}` first")
    outdir = recipe.report_dir(reports_dir, scale)
    outdir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(outdir / "summary.csv", index=False)
    hist.to_csv(outdir / "history.csv", index=False)
    claims, claims_error = claims_or_error(recipe, summary)
    figures = recipe.figures(summary, outdir) + diagnostics_figure(summary, outdir)
    info = versions()
    seeds_run = sorted(int(x) for x in summary["seed"].dropna().unique()) if "seed" in summary else []
    verdict = {"experiment": recipe.name, "scale": scale, "source": source, "seeds": seeds_run, "claims": claims,
               "runs": summary["status"].value_counts().to_dict() if "status" in summary else {},
               "figures": [f.name for f in figures], "versions": info, "claims_error": claims_error}
    atomic_write(outdir / "verdict.json", strict_json(verdict, indent=1, default=str))
    grid = recipe.spec().get("scales", {}).get(scale, {}) or {}
    grid = {"grid": json.dumps(recipe.spec().get("grid")), f"scale {scale}": json.dumps(grid)}
    (outdir / "index.html").write_text(experiment_page(recipe, verdict, summary, figures, grid, info))
    return verdict


def write_index(verdicts: list[dict], reports_dir: Path) -> Path:
    path = reports_dir / "index.html"
    path.write_text(index_page(verdicts, versions()))
    return path


"""Recipes: a phenomenon's grid (from configs/<name>.yaml), its claims and its figures, run as a suite.

A recipe's YAML holds the base run config, the grid and the scales:

    run:    {data: {...}, model: {...}, ...}        # nested or dotted keys of RunConfig
    grid:   {model.depth: [2, 10, 50],               # a list sweeps one key
             arch: {plain: {}, residual: {model.residual: true}}}   # a map names bundles of overrides
    scales: {smoke: {seeds: 2, run: {...}, grid: {...}}, cpu: {seeds: 5}}
    default_scale: cpu

Seeds are the framework's axis, never the grid's: each scale declares how many it runs (`seeds`, default
DEFAULT_SEEDS), `--seeds N --seed-base B` overrides both, and every grid point runs at seeds B ... B+N-1 with the
same data split (data.split_seed), unless the YAML says `data_per_seed: true` (then data.split_seed = seed: each
seed draws its own data, for synthetic problems whose draw is part of the claim). The Python side (experiments/<name>.py) measures each claim on one seed's runs,
only from their logged numbers; framework/verdict.py judges it over the seeds.
"""
from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from framework.planner import FUSE_MAX
from framework.config import RunConfig, apply, config_hash, flatten, parse_value, to_dict
from framework.registry import UserError, suggest
from framework.store import RunStore, atomic_write, strict_json
from framework.verdict import Claim, judge

DEFAULT_SEEDS = 5  # a scale that does not say how many seeds it runs
MAX_RUNS = 5_000   # a suite with more runs than this is expanded only when confirmed (--yes): a typo'd grid
                   # (1000 x 1000 values) took ~50 minutes and 1.3 GB to expand before anything trained

def config_dir() -> Path:
    """The recipes' YAML: $REPRO_CONFIGS, else the checkout's configs/ (an editable install), else the copy
    installed with the package (framework/configs, see pyproject.toml)."""
    from framework.resources import resource_dir
    return Path(os.environ["REPRO_CONFIGS"]) if os.environ.get("REPRO_CONFIGS") else resource_dir("configs")


@dataclass
class Run:
    cfg: RunConfig
    axes: dict[str, Any]

    @property
    def run_id(self) -> str:
        return config_hash(self.cfg)


class Recipe(ABC):
    """Subclass per phenomenon: set the class attributes, implement measure() (one seed) and figures()."""
    name: str = ""
    title: str = ""
    papers: list[str] = []

    def spec_path(self) -> Path:
        return config_dir() / f"{self.name}.yaml"

    def spec(self) -> dict:
        path = self.spec_path()
        if not path.exists():
            raise UserError(f"no config for experiment '{self.name}': expected {path}")
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"{path}{where}: malformed YAML ({problem})") from None
        if not isinstance(spec, dict):
            raise UserError(f"{path}: expected a map with run, grid and scales, got {type(spec).__name__}")
        return spec

    def scales(self) -> list[str]:
        return list((self.spec().get("scales") or {}).keys())

    def default_scale(self) -> str:
        return self.spec().get("default_scale", "cpu")

    def runs(self, scale: str | None = None, overrides: list[str] | dict | None = None, seeds: int | None = None,
             seed_base: int = 0) -> list[Run]:
        return expand(self.name, self.spec(), scale or self.default_scale(), overrides or [], self.spec_path(),
                      seeds, seed_base)

    def report_dir(self, reports_dir: Path, scale: str | None = None) -> Path:
        """Each scale keeps its own report: reports/<experiment>/<scale>/."""
        return Path(reports_dir) / self.name / (scale or self.default_scale())

    @abstractmethod
    def measure(self, runs: pd.DataFrame, store: RunStore) -> list[Claim]:
        """The recipe's claims measured on one seed's runs (the same claims, in the same order, for every seed),
        each from the runs' logged numbers."""

    def claims(self, runs: pd.DataFrame, store: RunStore) -> list[dict]:
        """Every claim over the seeds: per-seed values, mean, 95% interval and verdict (framework/verdict.py)."""
        return judge(self.measure, runs, store)

    def figures(self, runs: pd.DataFrame, store: RunStore, outdir: Path) -> list[Path]:
        return []


def _axis_label(key: str, value: Any) -> str:
    return f"{key.split('.')[-1]}={value}"


def expand(name: str, spec: dict, scale: str, overrides: list[str] | dict, source: Path | str = "",
           seeds: int | None = None, seed_base: int = 0) -> list[Run]:
    """The suite's runs: every grid point at every seed. Precedence, lowest first: the YAML's run, the scale's run,
    a grid value or bundle, and what the user typed (a typed key pins a swept axis to that value and overrides
    every bundle that sets it). Seeds: `seeds` (else the scale's, else DEFAULT_SEEDS) from `seed_base` on."""
    where = f"{source}: " if source else ""
    scales = spec.get("scales") or {}
    if not isinstance(scales, dict):
        raise UserError(f"{where}scales: expected a map of scale names, got {scales!r}")
    if scale not in scales:
        raise UserError(f"unknown scale '{scale}' for {name}{suggest(scale, scales)}; choices: {', '.join(scales)}")
    from framework.config import SAFE_NAME
    if not SAFE_NAME.fullmatch(str(scale)):  # it names reports/<experiment>/<scale>/ and appears in the HTML
        raise UserError(f"{where}scales.{scale}: a scale's name must be a plain folder name (letters, digits, '_', "
                        f"'-', '.')")
    scale_spec = scales[scale] or {}
    if not isinstance(scale_spec, dict):
        raise UserError(f"{where}scales.{scale}: expected a map (seeds, run, grid), got {scale_spec!r}")
    seed_list = _seeds(scale_spec.get("seeds", DEFAULT_SEEDS) if seeds is None else seeds, seed_base,
                       f"{where}scales.{scale}.seeds" if seeds is None else "--seeds")
    base = {**flatten(spec.get("run") or {}), **flatten(scale_spec.get("run") or {})}
    grids = _grids(spec.get("grid") or {}, scale_spec.get("grid"))
    typed: dict[str, Any] = {}
    items = overrides.items() if isinstance(overrides, dict) else _split(overrides)
    for key, value in items:
        if key == "seed" or key == "grid.seed":
            raise UserError(f"{key}: seeds are set with --seeds N --seed-base B (seeds B ... B+N-1), not as a key")
        if key.startswith("grid."):           # grid.model.depth=[2,3] replaces an axis
            axis = key[len("grid."):]
            owners = [g for g in grids if axis in g]
            if not owners:
                known = sorted({a for g in grids for a in g})
                raise UserError(f"unknown grid axis '{axis}'{suggest(axis, known)}; axes: {', '.join(known)}")
            for g in owners:
                g[axis] = value if isinstance(value, (list, dict)) else [value]
        else:
            for g in grids:                    # pinning a swept key sweeps just that value
                if key in g and not isinstance(g[key], dict):
                    g[key] = [value]
            typed[key] = value
    base_cfg = apply(RunConfig(), {**base, "experiment": name})
    apply(base_cfg, typed)  # a bad typed key fails here, named, before any grid is expanded

    count = len(seed_list) * sum(math.prod(len(v) if isinstance(v, (list, dict)) and v else 1 for v in g.values())
                                 for g in grids)
    if count > MAX_RUNS and os.environ.get("REPRO_YES") != "1":
        raise UserError(f"{name} [{scale}] would create {count:,} runs ({len(seed_list)} seeds x the grid's points); "
                        f"more than {MAX_RUNS:,} needs --yes (expanding them alone takes minutes and memory)")
    combos = []
    for grid in grids:
        axes = []
        for axis, values in grid.items():
            if axis == "seed":
                raise UserError(f"{where}grid.seed: a recipe never lists seeds; each scale declares how many it "
                                f"runs (scales.<name>.seeds) and the framework adds the axis")
            if isinstance(values, dict) and values:
                for label, bundle in values.items():
                    if bundle is not None and not isinstance(bundle, dict):
                        raise UserError(f"{where}grid.{axis}.{label}: expected a map of overrides, got {bundle!r}")
                axes.append([(axis, label, flatten(bundle or {}), True) for label, bundle in values.items()])
            elif isinstance(values, list) and values:
                axes.append([(axis, v, {axis: v}, False) for v in values])
            else:
                raise UserError(f"{where}grid.{axis}: expected a non-empty list of values or a non-empty map of "
                                f"named overrides, got {values!r}")
        combos += list(itertools.product(*axes, [("seed", s, {"seed": s}, False) for s in seed_list]))
    runs, seen = [], set()
    from framework.module import check_model_size
    data_per_seed = spec.get("data_per_seed", False)
    if not isinstance(data_per_seed, bool):
        raise UserError(f"{where}data_per_seed: expected true or false, got {data_per_seed!r}")
    for combo in combos:
        changes, labels, axis_values = {}, [], {}
        for axis, value, bundle, named in combo:
            changes.update(bundle)
            if axis == "seed" and data_per_seed:
                changes["data.split_seed"] = value
            axis_values[axis] = value
            if axis != "seed":
                labels.append(str(value) if named else _axis_label(axis, value))
        cfg = apply(base_cfg, {**changes, **typed, "variant": "_".join(labels) or "default"})
        run = Run(cfg, axis_values)
        if run.run_id not in seen:
            check_model_size(cfg)
            seen.add(run.run_id)
            runs.append(run)
    return runs


def _seeds(count, base, key: str) -> list[int]:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(f"{key}: expected a whole number of seeds >= 1, got {count!r}")
    if isinstance(base, bool) or not isinstance(base, int) or base < 0 or base + count > 2 ** 32:
        raise UserError(f"--seed-base: expected a whole number >= 0 with base + seeds <= 2**32, got {base!r}")
    return list(range(base, base + count))


def _grids(grid, scale_grid) -> list[dict]:
    """A grid is a map of axes, or a list of such maps whose runs are joined (sub-grids with their own axes).
    A scale's grid replaces a list grid whole, and a map grid axis by axis."""
    if isinstance(grid, list) or isinstance(scale_grid, list):
        chosen = scale_grid if scale_grid is not None else grid
        return [dict(g) for g in (chosen if isinstance(chosen, list) else [chosen])]
    return [{**grid, **(scale_grid or {})}]


def _split(args: list[str]):
    for arg in args:
        if "=" not in arg:
            raise UserError(f"override '{arg}' is not of the form key=value (e.g. model.depth=20)")
        key, text = arg.split("=", 1)
        yield key.strip(), parse_value(text)


def runs_frame(runs: list[Run], store: RunStore) -> pd.DataFrame:
    """One row per run: id, variant, grid axes, status, the flattened config and the run's summary.
    frame.attrs["axes"] names the grid-axis columns."""
    from framework.store import FINISHED
    rows = []
    for run in runs:
        exp = run.cfg.experiment
        status = store.status(exp, run.run_id)
        # the store's one check (a changed config.yaml is a UserError here, for `report` as for `run`); a finished
        # run that cannot stand for its config is no run of this suite: status "unusable", no numbers
        why = store.unusable(run.cfg, run.run_id) if status in FINISHED else None
        summary = store.summary(exp, run.run_id) if why is None else {"unusable": why}
        rows.append({"run_id": run.run_id, "variant": run.cfg.variant, **run.axes,
                     **{f"cfg.{k}": v for k, v in flatten(to_dict(run.cfg)).items() if not isinstance(v, list)},
                     **summary, "status": "unusable" if why else status})
    frame = pd.DataFrame(rows)
    frame.attrs["axes"] = list(dict.fromkeys(a for run in runs for a in run.axes))
    return frame


def history(runs: pd.DataFrame, store: RunStore, experiment: str, name: str = "metrics.csv") -> pd.DataFrame:
    """Per-step frames of the runs (metrics.csv or diagnostics.csv) joined with their grid axes."""
    axis_cols = list(runs.attrs.get("axes", []))
    frames = []
    for _, row in runs.iterrows():
        frame = store.read_frame(experiment, row["run_id"], name)
        if not frame.empty:
            for col in ["run_id", "variant", *axis_cols]:
                frame[col] = row[col]
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_suite(recipe: Recipe, scale: str | None, overrides, store: RunStore, reports_dir: Path,
              force: bool = False, console=None, fuse: str = "auto", fuse_max: int = FUSE_MAX,
              seeds: int | None = None, seed_base: int = 0) -> dict:
    """Train every run of the suite that is not finished, then evaluate the claims and draw the figures.

    Runs of one shape train as fused groups (framework/planner.py; fuse="off": one by one). Runs another live
    process owns (its lock, see framework/store.py) are left to it: this process trains the others, then waits
    for those and reuses what their owner stored (or trains them itself when the owner stopped without
    finishing them). The verdict lists the runs that failed, each with its error."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from framework.planner import plan_suite
    from framework.preemption import SIGNALS
    from framework.runner import is_lead_process, train_group
    from framework.store import RunBusy, describe_owner

    scale = scale or recipe.default_scale()
    runs = recipe.runs(scale, overrides, seeds, seed_base)
    from framework.tracking import wandb_mode
    for cfg in {r.cfg.tracking.mode: r.cfg for r in runs}.values():  # online that cannot be: one line now
        wandb_mode(cfg)
    started = time.time()
    failed: list[dict] = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    # the task owns USR1, TERM and INT from here on, between runs too
    with SIGNALS.owned(), Progress(*columns, console=console, transient=False, disable=console is None) as progress:
        suite = progress.add_task(f"{recipe.name} [{scale}]", total=len(runs))
        pending, told = list(runs), False
        while pending:
            busy = []
            for group in plan_suite(pending, store, fuse, fuse_max, force):
                SIGNALS.check("between runs")
                results = train_group([r.cfg for r in group], store, scale=scale, force=force, progress=progress)
                for run, summary in zip(group, results):
                    if isinstance(summary, RunBusy):
                        busy.append((run, summary.owner))
                        continue
                    if summary.get("status") == "failed":
                        failed.append({"run_id": run.run_id, "variant": run.cfg.variant, "error": summary.get("error")})
                    progress.advance(suite)
            pending = [run for run, _ in busy]
            force = False  # a run another process just trained is not trained again
            if pending:
                if not told and console is not None:
                    owners = sorted({describe_owner(o) for _, o in busy})
                    console.print(f"waiting for {len(pending)} runs owned by another process ({'; '.join(owners)})")
                    told = True
                time.sleep(POLL_S)
    if not is_lead_process():  # DDP workers train; only rank 0 reports
        return {"experiment": recipe.name, "scale": scale, "claims": [], "runs": {}, "figures": [], "failed": []}
    frame = runs_frame(runs, store)
    claims, claims_error = claims_or_error(recipe, frame, store)
    outdir = recipe.report_dir(reports_dir, scale)
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        figures, figure_error = recipe.figures(frame, store, outdir), None
    except UserError:  # a damaged store file: named, never drawn around
        raise
    except Exception as e:  # a broken figure must not cost the verdict of runs already trained
        figures, figure_error = [], f"{type(e).__name__}: {e}"
        if console is not None:
            console.print(f"[red]figures of {recipe.name} failed:[/] {figure_error}")
    from framework.tracking import code_version
    verdict = {
        "experiment": recipe.name, "scale": scale, "seeds": sorted({int(r.cfg.seed) for r in runs}), "claims": claims,
        "runs": frame["status"].value_counts().to_dict(), "failed": failed, "claims_error": claims_error,
        "figures": [str(f.relative_to(outdir)) for f in figures],
        "figure_error": figure_error, "code": code_version(), "wall_s": round(time.time() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write(outdir / "verdict.json", strict_json(verdict, indent=1, default=_jsonable))
    frame.to_csv(outdir / "runs.csv", index=False)
    return verdict


def claims_or_error(recipe: Recipe, frame: pd.DataFrame, store: RunStore) -> tuple[list[dict], str | None]:
    """The recipe's claims, or none and the error that stopped them (every run of a claim failed, say): the runs
    stay stored and the command exits 1 (`run` and `report` alike). A damaged store file (UserError) is raised."""
    try:
        return recipe.claims(frame, store), None
    except UserError:
        raise
    except Exception as e:
        return [], f"{type(e).__name__}: {e}"


POLL_S = 2.0  # how often a suite looks at runs another process owns


def _jsonable(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def pick(runs: pd.DataFrame, **axes) -> pd.Series | None:
    """The one run with these grid-axis values (None when the grid has no such run); floats match within
    rounding (a value read back from runs.csv)."""
    mask = pd.Series(True, index=runs.index)
    for key, value in axes.items():
        if key not in runs.columns:
            return None
        mask &= np.isclose(runs[key].astype(float), value) if isinstance(value, float) else runs[key] == value
    hits = runs[mask]
    return hits.iloc[0] if len(hits) else None


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log y against log x (nan under two points)."""
    if len(xs) < 2:
        return math.nan
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


def best_rate(rates, costs) -> float:
    """The learning rate that minimises `costs` (steps to target, a final loss) over a grid, refined between grid
    points: the vertex of the parabola through the grid's best point and its two neighbours, in log rate and log
    cost. A grid's argmin moves in whole grid steps (a factor sqrt(2) or 2), and on a flat optimum which point wins
    is a coin toss between seeds; the vertex moves continuously and stays within half a grid step of the best point.
    At the grid's edge, or next to a rate that diverged or missed the target, it is the grid point itself; nan when
    no rate has a finite cost. (Written by hand: numpy and scipy have no argmin refinement of a sampled curve.)"""
    pairs = sorted((float(r), float(c)) for r, c in zip(rates, costs))
    usable = [math.isfinite(c) and c > 0 for _, c in pairs]
    if not any(usable):
        return math.nan
    last = len(pairs) - 1
    # lowest usable cost; on a tie, an interior point (the optimum lies between the tied rates)
    i = min(range(len(pairs)), key=lambda k: (pairs[k][1] if usable[k] else math.inf, k in (0, last)))
    if i in (0, last) or not (usable[i - 1] and usable[i + 1]):
        return pairs[i][0]
    (x0, y0), (x1, y1), (x2, y2) = [(math.log(r), math.log(c)) for r, c in pairs[i - 1:i + 2]]
    curvature = (y2 - y1) / (x2 - x1) - (y1 - y0) / (x1 - x0)
    if curvature <= 0:   # all three equal: no refinement
        return pairs[i][0]
    # vertex of the parabola through the three points (Lagrange form, unequal spacing allowed)
    num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    return math.exp(x1 - 0.5 * num / den)


def fewest_steps(rows: pd.DataFrame) -> tuple[float, float]:
    """Over a learning-rate grid: the fewest steps to target (the runs' steps_to_target) and that learning rate;
    (inf, nan) when no finished run reached the target."""
    reached = rows[rows["status"].eq("done") & rows["steps_to_target"].notna()] if "steps_to_target" in rows else \
        rows.iloc[:0]
    if not len(reached):
        return math.inf, math.nan
    best = reached.loc[reached["steps_to_target"].astype(float).idxmin()]
    return float(best["steps_to_target"]), float(best["cfg.optim.lr"])


def loss_reduction(row: pd.Series | None, final: float | None = None) -> float:
    """1 - final / initial training loss: 0 when the loss stalled, 1 when it reached zero, nan if unknown. `final`:
    another end loss than the summary's train_loss (eval mode)."""
    if row is None or row.get("status") not in ("done", "diverged"):
        return float("nan")
    initial, final = row.get("initial_train_loss"), row.get("train_loss") if final is None else final
    if not (pd.notna(initial) and pd.notna(final)) or initial <= 0:
        return float("nan")
    return float(1 - final / initial)


def row_config(row: pd.Series) -> RunConfig:
    """The RunConfig of a runs-frame row (from its cfg.* columns)."""
    return apply(RunConfig(), {k[len("cfg."):]: v.item() if hasattr(v, "item") else v for k, v in row.items()
                               if isinstance(k, str) and k.startswith("cfg.") and not _missing(v)})


def _missing(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False

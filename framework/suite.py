"""A recipe's suite, run: train every unfinished run (fused where the planner allows), then judge the claims over
the seeds and draw the figures into reports/<experiment>/<scale>/verdict.json and its figures."""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from framework.files import atomic_write, strict_json
from framework.locks import RunBusy, describe_owner
from framework.planner import FUSE_MAX, plan_suite
from framework.preemption import SIGNALS
from framework.process import is_lead_process
from framework.recipe import Recipe
from framework.registry import UserError
from framework.results.runs import runs_frame
from framework.runner import train_group
from framework.store import RunStore
from framework.tracking import code_version, wandb_mode

HEARTBEAT_S = 30.0
PROGRESS_FILE = "REPRO_PROGRESS_FILE"  # set by `run all` for each child: its suite's runs done, for the parent


def _report_progress(task) -> None:
    """The suite's progress in the file $REPRO_PROGRESS_FILE names (where `run all` shows it), when set."""
    path = os.environ.get(PROGRESS_FILE)
    if path:
        atomic_write(Path(path), json.dumps({"done": task.completed, "total": task.total,
                                             "elapsed_s": task.elapsed or 0, "eta_s": task.time_remaining}))


@contextmanager
def heartbeat(progress, console, every: float | None = None):
    """Where output is no terminal (a SLURM log, CI, `run all`'s children, which write to a file), rich draws no
    bars: a line every `every` seconds instead, each task's runs done of its total and its estimated time left."""
    if console is None or console.is_terminal:
        yield
        return
    stop, every = threading.Event(), every or HEARTBEAT_S

    def beat():
        while not stop.wait(every):
            for task in progress.tasks:
                if task.total and task.description and "[" in task.description:
                    left = f", about {task.time_remaining:.0f} s left" if task.time_remaining else ""
                    console.print(f"{task.description}: {task.completed:.0f} of {task.total:.0f} runs done after "
                                  f"{task.elapsed or 0:.0f} s{left}", highlight=False)
    thread = threading.Thread(target=beat, daemon=True, name="progress-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1)


def run_suite(recipe: Recipe, scale: str | None, overrides, store: RunStore, reports_dir: Path,
              force: bool = False, console=None, fuse: str = "auto", fuse_max: int = FUSE_MAX,
              seeds: int | None = None, seed_base: int = 0) -> dict:
    """Train every run of the suite that is not finished, then evaluate the claims and draw the figures.

    Runs of one shape train as fused groups (framework/planner.py; fuse="off": one by one). Runs another live
    process owns (its lock, see framework/store.py) are left to it: this process trains the others, then waits
    for those and reuses what their owner stored (or trains them itself when the owner stopped without
    finishing them). The verdict lists the runs that failed, each with its error."""

    scale = scale or recipe.default_scale()
    runs = recipe.runs(scale, overrides, seeds, seed_base)
    for cfg in {r.cfg.tracking.mode: r.cfg for r in runs}.values():  # online that cannot be: one line now
        wandb_mode(cfg)
    started = time.time()
    failed: list[dict] = []
    reused = 0  # runs the store already held finished: train_group returns them marked `skipped`
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    # the task owns USR1, TERM and INT from here on, between runs too
    with SIGNALS.owned(), Progress(*columns, console=console, transient=False, disable=console is None) as progress, \
            heartbeat(progress, console):
        suite = progress.add_task(f"{recipe.name} [{scale}]", total=len(runs))
        _report_progress(progress.tasks[suite])
        pending, told = list(runs), False
        while pending:
            busy = []
            for group in plan_suite(pending, store, fuse, fuse_max, force):
                SIGNALS.check("between runs")
                results = train_group([r.cfg for r in group], store, scale=scale, force=force, progress=progress,
                                      axes=[r.axes for r in group])
                for run, summary in zip(group, results):
                    if isinstance(summary, RunBusy):
                        busy.append((run, summary.owner))
                        continue
                    reused += bool(summary.get("skipped"))
                    if summary.get("status") == "failed":
                        failed.append({"run_id": run.run_id, "variant": run.cfg.variant, "error": summary.get("error")})
                    progress.advance(suite)
                _report_progress(progress.tasks[suite])
            pending = [run for run, _ in busy]
            force = False  # a run another process just trained is not trained again
            if pending:
                if not told and console is not None:
                    owners = sorted({describe_owner(o) for _, o in busy})
                    console.print(f"waiting for {len(pending)} runs owned by another process ({'; '.join(owners)})")
                    told = True
                time.sleep(POLL_S)
    if reused and console is not None:
        console.print(f"{recipe.name} [{scale}]: {reused} of {len(runs)} runs were finished in the store and reused "
                      f"(--force trains them again)")
    if not is_lead_process():  # DDP workers train; only rank 0 reports
        return {"experiment": recipe.name, "scale": scale, "claims": [], "runs": {}, "figures": [], "failed": []}
    frame = runs_frame(runs, store)
    claims, claims_error = claims_or_error(recipe, frame)
    outdir = recipe.report_dir(reports_dir, scale)
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        figures, figure_error = recipe.figures(frame, outdir), None
    except UserError:  # a damaged store file: named, never drawn around
        raise
    except Exception as e:  # a broken figure must not cost the verdict of runs already trained
        figures, figure_error = [], f"{type(e).__name__}: {e}"
        if console is not None:
            console.print(f"[red]figures of {recipe.name} failed:[/] {figure_error}")
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


def claims_or_error(recipe: Recipe, frame) -> tuple[list[dict], str | None]:
    """The recipe's claims, or none and the error that stopped them (every run of a claim failed, say): the runs
    stay stored and the command exits 1 (`run` and `report` alike). A damaged store file (UserError) is raised."""
    try:
        return recipe.claims(frame), None
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

"""The `repro` command line.

Exit codes, for every command:
  0    everything asked for finished (a run that diverged is a result, not a failure)
  1    one or more runs failed (each is printed with its one-line error; the others are stored), or the store's
       disk filled up (what finished is stored; the rest trains on the next launch)
  2    bad input: a config key or value, a recipe YAML, a damaged store file, a changed default (one line)
  130  Ctrl-C, 143 SIGTERM, 138 SIGUSR1 outside SLURM: the run was checkpointed and left `pending` (rerun to
       resume), or, stopped before training, recorded `failed: interrupted` / `failed: terminated`
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from framework import cli_claims, cli_plan, cli_tools  # noqa: F401  (register claims, plan, submit, status, sync, bench, worker)
from framework.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_RUNS_FAILED,
    RECIPE_HELP,
    SEED_BASE_HELP,
    SEEDS_HELP,
    YES_HELP,
    Fuse,
    _check_fuse,
    _check_runs_dir,
    _confirm,
    _fail,
    _full,
    _names,
    _print_failures,
    _recipes,
    _seed_options,
    _stopped,
    app,
    command_line,
    console,
    err,
    fuse_option,
    print_verdicts,
    scale_option,
    write_verdict_table,
)
from framework.registry import UserError


@app.command()
def run(
    experiment: str = typer.Argument(..., help=RECIPE_HELP + ", or 'all'"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides: model.depth=20 optim.lr=0.05; "
                                                              "grid.model.depth=[2,3] replaces a grid axis"),
    scale: Optional[str] = scale_option("the recipe's scale (default: its default scale, cpu for the built-in ones)"),
    force: bool = typer.Option(False, help="re-run finished runs instead of skipping them"),
    runs_dir: Path = typer.Option(Path(os.environ.get("REPRO_RUNS", "runs")), help="the local run store"),
    reports_dir: Path = typer.Option(Path(os.environ.get("REPRO_REPORTS", "reports")), help="verdicts and figures"),
    fuse: Fuse = fuse_option("auto: runs of one shape train together as one fused model (each still its own run); "
                            "off: one after another"),
    fuse_max: int = typer.Option(16, "--fuse-max", help="at most this many runs in a fused group"),
    seeds: Optional[int] = typer.Option(None, help=SEEDS_HELP),
    seed_base: int = typer.Option(0, "--seed-base", help=SEED_BASE_HELP),
    workers: int = typer.Option(0, help="'all': this many recipes side by side, each in its own process (0: one per "
                                        "CPU this process may use; 1: one after another)"),
    yes: bool = typer.Option(False, "--yes", help=YES_HELP),
):
    """Run a recipe's suite (finished runs are skipped), then print its verdict and write its figures."""
    from framework.files import StoreFull, disk_full
    from framework.preemption import SIGNALS, Stop
    from framework.store import RunStore
    from framework.suite import run_suite
    _confirm(yes)
    try:
        _check_runs_dir(runs_dir)
        fuse = _check_fuse(fuse, fuse_max)
        seeding = _seed_options(seeds, seed_base)
        recipes, names = _recipes(), _names(experiment)
        if workers < 0:
            raise UserError(f"--workers: expected a whole number >= 0, got {workers}")
        from framework.workers import default_workers
        distributed = os.environ.get("WORLD_SIZE") or os.environ.get("LOCAL_RANK") or any(
            o.split("=")[0] in ("trainer.devices", "trainer.strategy", "trainer.num_nodes") for o in overrides or [])
        if len(names) > 1 and (workers or default_workers()) > 1 and not distributed:
            for name in names:  # bad input ends the command here, before any process starts
                recipes.get(name)().runs(scale, overrides or [], **seeding)
            child = [*(overrides or []), *(["--scale", scale] if scale else []), *(["--force"] if force else []),
                     "--runs-dir", str(runs_dir), "--reports-dir", str(reports_dir), "--fuse", fuse,
                     "--fuse-max", str(fuse_max), *(["--seeds", str(seeds)] if seeds is not None else []),
                     "--seed-base", str(seed_base), "--workers", "1"]
            _run_side_by_side(names, child, reports_dir, scale, workers or default_workers(),
                              command_line("run", experiment, overrides, scale, seeds, seed_base))
            return
        verdicts = []
        with SIGNALS.owned():  # for the whole command: between recipes too
            for name in names:
                recipe = recipes.get(name)()
                verdicts.append(run_suite(recipe, scale, overrides or [], RunStore(runs_dir), reports_dir, force,
                                          console, fuse=fuse, fuse_max=fuse_max, **seeding))
                if verdicts[-1]["claims"]:
                    console.print(f"wrote {recipe.report_dir(reports_dir, verdicts[-1]['scale'])}/verdict.json and "
                                  f"figures ({', '.join(verdicts[-1]['figures'][::2]) or 'none'}); "
                                  f"runs: {verdicts[-1]['runs']}")
        from framework.process import is_lead_process
        if is_lead_process():
            print_verdicts(verdicts)
            if experiment == "all":
                write_verdict_table(verdicts, reports_dir, command_line("run", experiment, overrides, scale, seeds,
                                                                        seed_base))
    except UserError as e:
        _fail(e)
    except Stop as e:
        _stopped(e)
    except (StoreFull, OSError) as e:
        if not (isinstance(e, StoreFull) or disk_full(e)):
            raise
        _full(e)
    if _print_failures(verdicts):
        raise typer.Exit(EXIT_RUNS_FAILED)


def _run_side_by_side(names: list[str], child: list[str], reports_dir: Path, scale: Optional[str], workers: int,
                      command: str):
    """`run all` with `workers` recipes at once (framework/workers.py); the same verdict table, failures and exit
    status as one after another."""
    import time

    from framework.workers import read_verdict, run_side_by_side
    started = time.time()
    codes, stop = run_side_by_side(names, child, reports_dir / "logs", workers, console,
                                   lambda args: app(args=args, prog_name="repro"))
    recipes = _recipes()
    verdicts = []
    for name in names:
        recipe = recipes.get(name)()
        v = read_verdict(recipe.report_dir(reports_dir, scale or recipe.default_scale()) / "verdict.json", started)
        if v is not None:
            verdicts.append(v)
    if verdicts:
        print_verdicts(verdicts)
        write_verdict_table(verdicts, reports_dir, command)
    failures = _print_failures(verdicts)
    stopped = [c for c in codes.values() if c >= 128]
    if stop is not None or stopped:
        signum = stop or (stopped[0] - 128)
        err.print(f"[bold yellow]stopped:[/] {len(names) - len(verdicts)} recipes did not finish; rerun the same "
                  f"command to resume", highlight=False, soft_wrap=True)
        raise typer.Exit(128 + signum)
    bad = [n for n, c in codes.items() if c == EXIT_BAD_INPUT]
    for name in bad:
        err.print(f"{name}: bad input (see {reports_dir / 'logs' / (name + '.log')})", highlight=False)
    if bad:
        raise typer.Exit(EXIT_BAD_INPUT)
    others = [n for n, c in codes.items() if c not in (0, EXIT_RUNS_FAILED)]
    for name in others:
        err.print(f"{name}: exit status {codes[name]} (see {reports_dir / 'logs' / (name + '.log')})",
                  highlight=False)
    if others or failures or any(c == EXIT_RUNS_FAILED for c in codes.values()):
        raise typer.Exit(EXIT_RUNS_FAILED)


@app.command()
def report(
    experiment: str = typer.Argument(..., help=RECIPE_HELP + ", or 'all'"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, as for `repro run`"),
    scale: Optional[str] = scale_option("the scale whose runs to report (default: each recipe's default)"),
    source: str = typer.Option("local", help="local (the run store) or wandb (wandb.Api online, else offline files)"),
    wandb_run: bool = typer.Option(True, help="also log the verdict and figures to a W&B report run"),
    runs_dir: Path = typer.Option(Path(os.environ.get("REPRO_RUNS", "runs")), help="the local run store"),
    reports_dir: Path = typer.Option(Path(os.environ.get("REPRO_REPORTS", "reports")), help="where reports go"),
    seeds: Optional[int] = typer.Option(None, help=SEEDS_HELP),
    seed_base: int = typer.Option(0, "--seed-base", help=SEED_BASE_HELP),
):
    """DataFrames (CSV), paper-style figures (PNG, PDF) and HTML reports from runs already trained."""
    from framework.report import NoRuns, write_index
    from framework.report import report as report_one
    from framework.store import RunStore
    from framework.verdict_run import log_report_run
    try:
        seeding = _seed_options(seeds, seed_base)
        recipes, names = _recipes(), _names(experiment)
        verdicts, skipped = [], []
        for name in names:
            recipe = recipes.get(name)()
            try:
                verdict = report_one(recipe, scale, RunStore(runs_dir), reports_dir, source, overrides or [],
                                     **seeding)
            except NoRuns as e:
                if experiment != "all":
                    raise
                err.print(escape(f"skipped {name}: {e}"), highlight=False, soft_wrap=True)
                skipped.append(name)
                continue
            verdicts.append(verdict)
            outdir = recipe.report_dir(reports_dir, verdict["scale"])
            if wandb_run:  # beside the training runs: their project and entity
                tracking = recipe.runs(verdict["scale"], overrides or [], seeds=1)[0].cfg.tracking
                log_report_run(verdict, outdir, tracking)
            console.print(f"wrote {outdir}/index.html ({len(verdict['figures']) // 2} figures)")
        if experiment == "all" or (reports_dir / "index.html").exists():
            known = {v["experiment"]: v for v in verdicts}
            for name in recipes.names():  # keep the other recipes' rows (their default scale) in the overall index
                path = recipes.get(name)().report_dir(reports_dir) / "verdict.json"
                if name not in known and path.exists():
                    from framework.files import read_json_file
                    known[name] = read_json_file(path)
            console.print(f"wrote {write_index([known[n] for n in recipes.names() if n in known], reports_dir)}")
        print_verdicts(verdicts)
        if experiment == "all":
            write_verdict_table(verdicts, reports_dir, command_line("report", experiment, overrides, scale, seeds,
                                                                    seed_base))
    except UserError as e:
        _fail(e)
    if _print_failures(verdicts):
        raise typer.Exit(EXIT_RUNS_FAILED)
    if skipped and not verdicts:
        _fail(UserError(f"no finished runs of any recipe in {runs_dir}"))


@app.command("list")
def list_recipes():
    """Each recipe, its claims and its papers."""
    try:
        recipes = _recipes()
        table = Table(show_lines=True)
        for col in ("experiment", "phenomenon", "claims", "papers", "scales"):
            table.add_column(col, overflow="fold")
        broken = []
        for name in recipes.names():
            r = recipes.get(name)()
            # each claim whole, as its definition states it (framework/claims.py), numbered as the docstring numbers it
            claims = "\n".join(f"{i}. {d.claim} ({d.where})" for i, d in enumerate(r.definitions, 1))
            try:
                scales = ", ".join(r.scales())
                r.runs()  # the whole YAML (grid included) is checked, not just its scale names
            except UserError as e:  # one broken YAML costs its own row, not the list
                scales = "[red]broken config[/]"
                broken.append(str(e))
            table.add_row(name, r.title, claims, "; ".join(r.papers), scales)
        console.print(table)
        for message in broken:
            err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        if broken:
            raise typer.Exit(EXIT_BAD_INPUT)
    except UserError as e:
        _fail(e)


if __name__ == "__main__":
    app()

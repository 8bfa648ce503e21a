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

import math
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from framework.registry import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reproduce documented phenomena of neural-network training, tracked run by run.")
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def _recipes():
    from experiments import RECIPES
    return RECIPES


def _names(experiment: str) -> list[str]:
    """'all' or one recipe name, checked before anything runs."""
    recipes = _recipes()
    names = recipes.names() if experiment == "all" else [experiment]
    for name in names:
        recipes.check(name, "experiment")
    return names


EXIT_RUNS_FAILED, EXIT_BAD_INPUT = 1, 2  # the others: 0, and 128 + a signal's number (_stopped)


def _fail(e: Exception):
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _full(e) -> None:
    """A full disk: one line, exit 1 (what was finished is stored; the rest trains on the next launch)."""
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_RUNS_FAILED)


def _stopped(e) -> None:
    """A stop signal: one line, no traceback, exit 128 + the signal's number."""
    err.print(f"[bold yellow]stopped:[/] {escape(str(e))}; rerun the same command to resume", highlight=False,
              soft_wrap=True)
    raise typer.Exit(128 + e.signum)


def _fmt(v) -> str:
    if v is None:  # verdict.json's null: a statistic that was nan or infinite (strict JSON has neither)
        return "not finite"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


VERDICT_STYLE = {"reproduced": "green", "not reproduced": "red", "inconclusive": "yellow"}


def print_verdicts(verdicts: list[dict]) -> None:
    table = Table(title="Verdict over seeds (mean and 95% interval; the per-seed values after them)", show_lines=True)
    for col in ("experiment", "claim", "mean [95% interval]", "per seed", "criterion", "verdict"):
        table.add_column(col, overflow="fold")
    for v in verdicts:
        for c in v["claims"]:
            lo, hi = c["interval"]
            per_seed = ", ".join(f"{s}: {_fmt(x)}" for s, x in c["per_seed"].items())
            style = VERDICT_STYLE.get(c["verdict"], "white")
            table.add_row(escape(f"{v['experiment']} [{v['scale']}]"), escape(f"{c['claim']} ({c['reference']})"),
                          f"{_fmt(c['mean'])} [{_fmt(lo)}, {_fmt(hi)}]", escape(per_seed), escape(c["criterion"]),
                          f"[{style}]{c['verdict']}[/] ({c['seeds_holding']}/{c['seeds']} seeds"
                          + (f"; too few to judge, the interval alone: {c.get('interval_verdict')})"
                             if c.get("too_few_seeds") else ")"))
    console.print(table)


def _seed_options(seeds: Optional[int], seed_base: int) -> dict:
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds: expected a whole number >= 1, got {seeds}")
    if seed_base < 0:
        raise UserError(f"--seed-base: expected a whole number >= 0, got {seed_base}")
    return {"seeds": seeds, "seed_base": seed_base}


YES_HELP = "confirm a suite of more than MAX_RUNS (5,000) runs"


def _confirm(yes: bool) -> None:
    if yes:  # read where the grid is expanded (framework/recipe.py), here and in every child process
        os.environ["REPRO_YES"] = "1"


def _check_runs_dir(runs_dir: Path) -> None:
    """--runs-dir must be a folder this process can write (one line, exit 2, before anything trains)."""
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UserError(f"--runs-dir: {runs_dir} is a file, not a folder")
    probe = runs_dir if runs_dir.exists() else next((p for p in runs_dir.absolute().parents if p.exists()), None)
    if probe is None or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--runs-dir: {runs_dir} is not writable by this user"
                        + ("" if runs_dir.exists() else f" (nor is {probe}, where it would be created)"))


SEEDS_HELP = "seeds per grid point (default: the scale's, 5 at cpu, 2 at smoke)"
SEED_BASE_HELP = "the first seed: runs use seeds B, B+1, ..., B+N-1"


@app.command()
def run(
    experiment: str = typer.Argument(..., help="a recipe name (see `repro list`), or 'all'"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides: model.depth=20 optim.lr=0.05; "
                                                              "grid.model.depth=[2,3] replaces a grid axis"),
    scale: Optional[str] = typer.Option(None, help="smoke, cpu (default) or a scale the recipe's YAML defines"),
    force: bool = typer.Option(False, help="re-run finished runs instead of skipping them"),
    runs_dir: Path = typer.Option(Path(os.environ.get("REPRO_RUNS", "runs")), help="the local run store"),
    reports_dir: Path = typer.Option(Path(os.environ.get("REPRO_REPORTS", "reports")), help="verdicts and figures"),
    fuse: str = typer.Option("auto", help="auto: runs of one shape train together as one fused model (each still "
                                          "its own run); off: one after another"),
    fuse_max: int = typer.Option(16, "--fuse-max", help="at most this many runs in a fused group"),
    seeds: Optional[int] = typer.Option(None, help=SEEDS_HELP),
    seed_base: int = typer.Option(0, "--seed-base", help=SEED_BASE_HELP),
    workers: int = typer.Option(0, help="'all': this many recipes side by side, each in its own process (0: one per "
                                        "CPU this process may use; 1: one after another)"),
    yes: bool = typer.Option(False, "--yes", help=YES_HELP),
):
    """Run a recipe's suite (finished runs are skipped), then print its verdict and write its figures."""
    from framework.preemption import SIGNALS, Stop
    from framework.suite import run_suite
    from framework.store import RunStore, StoreFull, disk_full
    _confirm(yes)
    try:
        _check_runs_dir(runs_dir)
        _check_fuse(fuse, fuse_max)
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
            _run_side_by_side(names, child, reports_dir, scale, workers or default_workers())
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
        from framework.runner import is_lead_process
        if is_lead_process():
            print_verdicts(verdicts)
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


def _print_failures(verdicts: list[dict]) -> bool:
    """Prints the verdicts' failed runs and uncomputed claims, one line each; True if there were any."""
    failed = [(v["experiment"], f) for v in verdicts for f in v.get("failed", [])]
    for name, f in failed:
        err.print(escape(f"failed: {name}/{f['run_id']} ({f['variant']}): {_one_line(f['error'])}"),
                  highlight=False, soft_wrap=True)
    broken = [v for v in verdicts if v.get("claims_error")]
    for v in broken:
        err.print(escape(f"claims of {v['experiment']} not computed: {_one_line(v['claims_error'])}"),
                  highlight=False, soft_wrap=True)
    if failed:
        err.print(f"{len(failed)} runs failed (retried on the next launch); exit status {EXIT_RUNS_FAILED}")
    return bool(failed or broken)


def _run_side_by_side(names: list[str], child: list[str], reports_dir: Path, scale: Optional[str], workers: int):
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


def _check_fuse(fuse: str, fuse_max: int) -> None:
    from framework.planner import FUSE_MODES
    if fuse not in FUSE_MODES:
        raise UserError(f"--fuse: expected one of {', '.join(FUSE_MODES)}, got {fuse!r}")
    if fuse_max < 1:
        raise UserError(f"--fuse-max: must be >= 1, got {fuse_max}")


def _one_line(text) -> str:
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    return lines[0][:300] if lines else "unknown error"


@app.command()
def submit(
    experiment: str = typer.Argument(..., help="a recipe name (see `repro list`)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, as for `repro run`"),
    scale: Optional[str] = typer.Option(None, help="the recipe's scale (default: its default scale)"),
    profile: str = typer.Option("local", help="a cluster profile from slurm/profiles.yaml"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the sbatch script and submit nothing"),
    runs_dir: Path = typer.Option(Path(os.environ.get("REPRO_RUNS", "runs")), help="the local run store"),
    fuse: str = typer.Option("auto", help="auto: each fused group of runs is one array task; off: runs alone"),
    fuse_max: int = typer.Option(16, "--fuse-max", help="at most this many runs in a fused group"),
    seeds: Optional[int] = typer.Option(None, help=SEEDS_HELP),
    seed_base: int = typer.Option(0, "--seed-base", help=SEED_BASE_HELP),
    yes: bool = typer.Option(False, "--yes", help=YES_HELP),
):
    """Submit the suite's unfinished runs as one SLURM job array; prints the job id and returns."""
    from framework.cluster import submit as submit_suite
    from framework.store import RunStore
    _confirm(yes)
    try:
        _check_fuse(fuse, fuse_max)
        recipes = _recipes()
        recipe = recipes.get(experiment, "experiment")()
        result = submit_suite(recipe, scale or recipe.default_scale(), overrides or [], RunStore(runs_dir), profile,
                              dry_run, fuse=fuse, fuse_max=fuse_max, **_seed_options(seeds, seed_base))
    except UserError as e:
        _fail(e)
    if "script" in result:
        typer.echo(result["script"])  # raw: a wrapped line would break the script
    elif result["job_id"] is None:
        console.print(result["message"])
    else:
        console.print(f"submitted job {result['job_id']}: {result['runs']} runs in {result['tasks']} array tasks; "
                      f"logs in {result['logs']}")


@app.command()
def status(
    experiment: str = typer.Argument(..., help="a recipe name"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, as for `repro run`"),
    scale: Optional[str] = typer.Option(None, help="the recipe's scale (default: its default scale)"),
    runs_dir: Path = typer.Option(Path(os.environ.get("REPRO_RUNS", "runs")), help="the local run store"),
    seeds: Optional[int] = typer.Option(None, help=SEEDS_HELP),
    seed_base: int = typer.Option(0, "--seed-base", help=SEED_BASE_HELP),
):
    """Run counts by status from the run store, and the suite's jobs in squeue when SLURM is there."""
    from framework.cluster import status as suite_status
    from framework.store import RunStore
    try:
        recipe = _recipes().get(experiment, "experiment")()
        s = suite_status(recipe, scale or recipe.default_scale(), overrides or [], RunStore(runs_dir),
                         **_seed_options(seeds, seed_base))
    except UserError as e:
        _fail(e)
    console.print(escape(f"{s['experiment']} [{s['scale']}]: {s['runs']} runs: ")
                  + ", ".join(f"{k} {v}" for k, v in s["counts"].items()))
    for job in s["queue"]:
        console.print(f"  job {job['job']}: {job['state']} {job['time']} {job['reason']}")


@app.command()
def report(
    experiment: str = typer.Argument(..., help="a recipe name, or 'all'"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, as for `repro run`"),
    scale: Optional[str] = typer.Option(None, help="the scale whose runs to report (default: each recipe's default)"),
    source: str = typer.Option("local", help="local (the run store) or wandb (wandb.Api online, else offline files)"),
    wandb_run: bool = typer.Option(True, help="also log the verdict and figures to a W&B report run"),
    runs_dir: Path = typer.Option(Path(os.environ.get("REPRO_RUNS", "runs")), help="the local run store"),
    reports_dir: Path = typer.Option(Path(os.environ.get("REPRO_REPORTS", "reports")), help="where reports go"),
    seeds: Optional[int] = typer.Option(None, help=SEEDS_HELP),
    seed_base: int = typer.Option(0, "--seed-base", help=SEED_BASE_HELP),
):
    """DataFrames (CSV), paper-style figures (PNG, PDF) and HTML reports from runs already trained."""
    from framework.report import NoRuns, log_report_run, report as report_one, write_index
    from framework.store import RunStore
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
            if wandb_run:
                log_report_run(verdict, outdir)
            console.print(f"wrote {outdir}/index.html ({len(verdict['figures']) // 2} figures)")
        if experiment == "all" or (reports_dir / "index.html").exists():
            known = {v["experiment"]: v for v in verdicts}
            for name in recipes.names():  # keep the other recipes' rows (their default scale) in the overall index
                path = recipes.get(name)().report_dir(reports_dir) / "verdict.json"
                if name not in known and path.exists():
                    from framework.store import read_json_file
                    known[name] = read_json_file(path)
            console.print(f"wrote {write_index([known[n] for n in recipes.names() if n in known], reports_dir)}")
        print_verdicts(verdicts)
    except UserError as e:
        _fail(e)
    if _print_failures(verdicts):
        raise typer.Exit(EXIT_RUNS_FAILED)
    if skipped and not verdicts:
        _fail(UserError(f"no finished runs of any recipe in {runs_dir}"))


def offline_folders(runs_dir: Path, reports_dir: Path) -> list[str]:
    """Every offline W&B run of the store (runs/<exp>/<run>/wandb/) and of the reports (reports/<exp>/<scale>/wandb/)."""
    folders = sorted(str(p) for p in runs_dir.glob("*/*/wandb/offline-run-*"))
    return folders + sorted(str(p) for p in reports_dir.glob("*/*/wandb/offline-run-*"))


def sync_command(folders: list[str], dry_run: bool = False) -> list[str]:
    """The `wandb sync` command line for these run folders. wandb >= 0.30 syncs offline runs it is given by path
    (0.30 removed --include-offline, which it now rejects); pyproject pins the wandb this is written against."""
    wandb_cli = shutil.which("wandb") or str(Path(sys.executable).parent / "wandb")
    return [wandb_cli, "sync", *(["--dry-run"] if dry_run else []), *folders]


@app.command()
def sync(runs_dir: Path = typer.Option(Path(os.environ.get("REPRO_RUNS", "runs")), help="the local run store"),
         reports_dir: Path = typer.Option(Path(os.environ.get("REPRO_REPORTS", "reports")),
                                          help="verdicts and figures (their report runs)"),
         dry_run: bool = typer.Option(False, "--dry-run", help="list what wandb would upload; upload nothing")):
    """Upload offline W&B runs (training runs and report runs) with `wandb sync` once you are online."""
    import subprocess
    from framework.tracking import _has_api_key
    folders = offline_folders(runs_dir, reports_dir)
    if not folders:
        _fail(UserError(f"no offline W&B runs under {runs_dir} or {reports_dir}"))
    if not dry_run and not _has_api_key():
        _fail(UserError("no W&B API key: run `wandb login` (or set WANDB_API_KEY) first"))
    console.print(f"{'would sync' if dry_run else 'syncing'} {len(folders)} offline runs...")
    raise typer.Exit(subprocess.run(sync_command(folders, dry_run)).returncode)


@app.command()
def bench(
    overrides: Optional[List[str]] = typer.Argument(None, help="config overrides for every case, e.g. "
                                                              "trainer.precision=bf16-mixed trainer.compile=true"),
    size: str = typer.Option("small", help="small (CI, seconds per case) or full (the recorded figures)"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)"),
    case: Optional[List[str]] = typer.Option(None, help="only these cases (deep_mlp_50x10, wide_mlp_2x2048, "
                                                        "resnet18_cifar, fused_mlp_16x50x10; on a GPU by default "
                                                        "also fused_resnet18_16xw4, fused_resnet18_16xw16)"),
    epoch: bool = typer.Option(False, help="also time an epoch of ResNet-18 on CIFAR-10 (real files when "
                                           "data.root has them, else 50,000 CIFAR-shaped images)"),
    record: Optional[Path] = typer.Option(None, help="append the table, dated, with the machine, to this "
                                                     "markdown file (e.g. reports/benchmarks.md)"),
):
    """Samples/s of the framework's training step against a plain PyTorch loop (same model, data, batch, process)."""
    from framework import bench as benchmark
    from framework.overrides import parse_overrides
    try:
        if size not in benchmark.SIZES:
            raise UserError(f"--size: choose one of {', '.join(benchmark.SIZES)}, got {size!r}")
        known = [c.name for c in benchmark.CASES] + list(benchmark.FUSED_CASES)
        for name in case or []:
            if name not in known:
                from framework.registry import suggest
                raise UserError(f"--case: unknown case '{name}'{suggest(name, known)}; cases: {', '.join(known)}")
        extra = parse_overrides(overrides or [])
        table = Table(title=f"repro bench ({size})")
        for col in ("case", "device", "batch", "params", "plain samples/s", "framework samples/s",
                    "framework / plain (range)"):
            table.add_column(col, justify="right" if col != "case" else "left")
        with console.status("benchmarking...") as status:
            def report(row):
                status.update(f"benchmarking... {row['case']}: {row['ratio']:.2f}x")
            plain_cases = [c for c in (case or []) if c not in benchmark.FUSED_CASES]
            rows = benchmark.run(size, device, plain_cases, extra, report) if plain_cases or not case else []
            import torch
            gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
            # the fused ResNet cases (minutes a step group on a CPU) run by default on a GPU only
            fused = [benchmark.run_fused(name, size, extra, lambda row: None, device)
                     for name in benchmark.FUSED_CASES
                     if (name in case if case else gpu or "resnet" not in name)]
        for r in rows:
            table.add_row(r["case"], r["device"], str(r["batch"]), f"{r['params']:,}", f"{r['plain_samples_s']:,.0f}",
                          f"{r['framework_samples_s']:,.0f}",
                          f"{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})")
        if rows:
            console.print(table)
        for f in fused:
            console.print(f"{f['case']} ({f['members']} runs, batch {f['batch']}, {f['threads']} thread(s)): fused "
                          f"framework {f['fused_samples_s']:,.0f} samples/s, unfused framework "
                          f"{f['unfused_samples_s']:,.0f}, raw fused loop {f['raw_samples_s']:,.0f}"
                          + ("" if math.isnan(f["handwritten_samples_s"]) else " (hand-written bmm loop without "
                             f"nn.Modules: {f['handwritten_samples_s']:,.0f})") + f" on {f['device']}")
            console.print(f"fused / unfused framework: {f['fused_over_unfused']:.2f}")
            console.print(f"fused framework / raw fused loop: {f['fused_over_raw']:.2f}")
            console.print(f"fused / unfused framework, whole runs (set-up, evaluation, store included): "
                          f"{f['end_to_end_fused_over_unfused']:.2f}")
        epoch_row = None
        if epoch:
            epoch_row = benchmark.resnet18_epoch(device, extra)
            console.print(f"ResNet-18 (k=64) on {epoch_row['data']}: {epoch_row['seconds_per_epoch']:.1f} s per "
                          f"epoch ({epoch_row['samples_s']:,.0f} samples/s) on {epoch_row['device_name']}")
        if record is not None:
            if rows or epoch_row:
                benchmark.record(record, rows, epoch_row, size, extra, case or None)
            for f in fused:
                benchmark.record_fused(record, f, size)
            console.print(f"appended to {record}")
    except UserError as e:
        _fail(e)


@app.command(hidden=True)
def worker(manifest: Path = typer.Argument(...), task: int = typer.Option(..., help="array task index")):
    """Train one array task's runs (called by the sbatch script)."""
    from framework.cluster import work
    raise typer.Exit(work(manifest, task))


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
            doc = (sys.modules[type(r).__module__].__doc__ or "")
            claims = "\n".join(line.strip() for line in doc.splitlines() if line[:2].strip().rstrip(".").isdigit())
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

"""`repro` commands around the runs: SLURM (submit, status, the array worker), W&B (sync) and the benchmark."""
from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from framework.cli_common import (
    RECIPE_HELP,
    SEED_BASE_HELP,
    SEEDS_HELP,
    YES_HELP,
    Fuse,
    Size,
    _check_fuse,
    _confirm,
    _fail,
    _recipe_name,
    _recipes,
    _seed_options,
    app,
    console,
    fuse_option,
    scale_option,
)
from framework.registry import UserError


@app.command()
def submit(
    experiment: str = typer.Argument(..., help=RECIPE_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, as for `repro run`"),
    scale: Optional[str] = scale_option("the recipe's scale (default: its default scale)"),
    profile: str = typer.Option("local", help="a cluster profile from slurm/profiles.yaml"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the sbatch script and submit nothing"),
    runs_dir: Path = typer.Option(Path(os.environ.get("REPRO_RUNS", "runs")), help="the local run store"),
    fuse: Fuse = fuse_option("auto: each fused group of runs is one array task; off: runs alone"),
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
        fuse = _check_fuse(fuse, fuse_max)
        recipe = _recipes().get(_recipe_name(experiment))()
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
    experiment: str = typer.Argument(..., help=RECIPE_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, as for `repro run`"),
    scale: Optional[str] = scale_option("the recipe's scale (default: its default scale)"),
    runs_dir: Path = typer.Option(Path(os.environ.get("REPRO_RUNS", "runs")), help="the local run store"),
    seeds: Optional[int] = typer.Option(None, help=SEEDS_HELP),
    seed_base: int = typer.Option(0, "--seed-base", help=SEED_BASE_HELP),
):
    """Run counts by status from the run store, and the suite's jobs in squeue when SLURM is there."""
    from framework.cluster import status as suite_status
    from framework.store import RunStore
    try:
        recipe = _recipes().get(_recipe_name(experiment))()
        s = suite_status(recipe, scale or recipe.default_scale(), overrides or [], RunStore(runs_dir),
                         **_seed_options(seeds, seed_base))
    except UserError as e:
        _fail(e)
    console.print(escape(f"{s['experiment']} [{s['scale']}]: {s['runs']} runs: ")
                  + ", ".join(f"{k} {v}" for k, v in s["counts"].items()))
    for run in s["failed"]:
        console.print(escape(f"  failed {run['run_id']} ({run['variant']}, seed {run['seed']}): {run['error']}"),
                      soft_wrap=True, highlight=False)
    for job in s["queue"]:
        console.print(f"  job {job['job']}: {job['state']} {job['time']} {job['reason']}")


def sync_command(folders: list[str], dry_run: bool = False) -> list[str]:
    """The `wandb sync` command line for these run folders. wandb >= 0.30 syncs offline runs it is given by path
    (0.30 removed --include-offline, which it now rejects); pyproject pins the wandb this is written against."""
    wandb_cli = shutil.which("wandb") or str(Path(sys.executable).parent / "wandb")
    return [wandb_cli, "sync", *(["--dry-run"] if dry_run else []), *folders]


@app.command()
def sync(runs_dir: Path = typer.Option(Path(os.environ.get("REPRO_RUNS", "runs")), help="the local run store"),
         reports_dir: Path = typer.Option(Path(os.environ.get("REPRO_REPORTS", "reports")),
                                          help="verdicts and figures (their report runs)"),
         dry_run: bool = typer.Option(False, "--dry-run", help="say what would be uploaded; upload nothing (a "
                                                               "resumed run's attempts are still merged, locally)")):
    """Upload the offline W&B runs the commands wrote (training runs, a resumed run's attempts merged into one
    with its whole history, and each suite's latest verdict run) with `wandb sync`, each once."""
    import subprocess

    from framework.tracking import _has_api_key
    from framework.wandb_sync import describe, plan
    if not dry_run and not _has_api_key():
        _fail(UserError("no W&B API key: run `wandb login` (or set WANDB_API_KEY) first"))
    uploads = plan(runs_dir, reports_dir)
    if not uploads:
        _fail(UserError(f"no offline W&B runs under {runs_dir} or {reports_dir}"))
    for line in describe(uploads):
        console.print(line, highlight=False, soft_wrap=True)
    folders = [str(u.folder) for u in uploads if not u.synced]
    if not folders:
        console.print("nothing to sync: every run is already uploaded")
        return
    console.print(f"{'would sync' if dry_run else 'syncing'} {len(folders)} offline runs...")
    code = subprocess.run(sync_command(folders, dry_run)).returncode
    if not dry_run:
        left = sum(not u.synced for u in uploads)
        console.print(f"synced {len(folders) - left} of {len(folders)} runs" + (f"; {left} not uploaded (rerun "
                      f"`repro sync` to retry them)" if left else ""))
    raise typer.Exit(code)


@app.command()
def bench(
    overrides: Optional[List[str]] = typer.Argument(None, help="config overrides for every case, e.g. "
                                                              "trainer.precision=bf16-mixed trainer.compile=true"),
    size: Size = typer.Option(Size.small, help="small (CI, seconds per case) or full (the recorded figures)"),
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
    from framework.bench import cases as benchmark
    from framework.bench import fused as fused_bench
    from framework.overrides import parse_overrides
    try:
        size = getattr(size, "value", size)
        if size not in benchmark.SIZES:
            raise UserError(f"--size: choose one of {', '.join(benchmark.SIZES)}, got {size!r}")
        known = [c.name for c in benchmark.CASES] + list(fused_bench.FUSED_CASES)
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
            plain_cases = [c for c in (case or []) if c not in fused_bench.FUSED_CASES]
            rows = benchmark.run(size, device, plain_cases, extra, report) if plain_cases or not case else []
            import torch
            gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
            # the fused ResNet cases (minutes a step group on a CPU) run by default on a GPU only
            fused = [fused_bench.run_fused(name, size, extra, lambda row: None, device)
                     for name in fused_bench.FUSED_CASES
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
                fused_bench.record_fused(record, f, size)
            console.print(f"appended to {record}")
    except UserError as e:
        _fail(e)


@app.command(hidden=True)
def worker(manifest: Path = typer.Argument(...), task: int = typer.Option(..., help="array task index")):
    """Train one array task's runs (called by the sbatch script)."""
    from framework.cluster import work
    _recipes()  # the plug-ins the submitting command loaded (REPRO_PLUGINS travels in the job's environment)
    raise typer.Exit(work(manifest, task))

"""What every `repro` command shares: the Typer app, the consoles, the exit codes and their one-line messages, the
options' checks and the verdict table. The commands import the framework inside themselves: torch costs seconds
to import, and `repro --help` or a bad option should not wait for it."""
from __future__ import annotations

import enum
import os
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
import typer.rich_utils
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from framework.registry import UserError
from framework.verdict_table import cells

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reproduce documented phenomena of neural-network training, tracked run by run.")


def _usage_error_line(e) -> None:
    """A bad option or argument (click's usage errors: a choice not offered, a missing argument) as one line on
    stderr, exit 2, like every other bad input; typer's boxed panel has no such switch, so it is replaced here."""
    if e.__class__.__name__ == "NoArgsIsHelpError":
        return
    command = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) is not None else ""
    print(f"error: {e.format_message().replace('Value error, ', '')}{command}", file=sys.stderr)


typer.rich_utils.rich_format_error = _usage_error_line


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version
        try:
            print(f"repro {version('repro')}")
        except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
            print("repro (not installed)")
        raise typer.Exit(0)


@app.callback()
def _main(show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                            help="print the installed version and exit"),
          plugin: Optional[List[str]] = typer.Option(None, "--plugin", help="a module or .py file that registers "
                                                     "your models, datasets or recipes (repeatable; REPRO_PLUGINS)")):
    """Reproduce documented phenomena of neural-network training, tracked run by run."""
    if plugin:
        from framework.plugins import add_plugins
        add_plugins(plugin)
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def _recipes():
    from experiments import RECIPES
    from framework.plugins import load_plugins
    load_plugins()  # a user's own models, datasets and recipes (framework/plugins.py)
    return RECIPES


def _recipe_name(experiment: str) -> str:
    """A recipe's name, or where a recipe lives (`path/to/recipe.py`, `pkg.module:Class`: loaded as a plug-in)."""
    from framework.plugins import is_recipe_spec, load_recipe
    recipes = _recipes()
    name = load_recipe(experiment) if is_recipe_spec(experiment) else experiment
    recipes.check(name, "experiment")
    return name


def _names(experiment: str) -> list[str]:
    """'all' or one recipe (by name or where it lives), checked before anything runs (_recipe_name)."""
    return _recipes().names() if experiment == "all" else [_recipe_name(experiment)]


EXIT_RUNS_FAILED, EXIT_BAD_INPUT = 1, 2  # the others: 0, and 128 + a signal's number (_stopped)


def _fail(e: Exception):
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _full(e) -> None:
    """A full disk: one line, exit 1 (what was finished is stored; the rest trains on the next launch)."""
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_RUNS_FAILED)


def _stopped(e) -> None:
    """A stop signal: one line, no traceback, exit 128 + the signal's number (a USR1 under SLURM: requeued)."""
    from framework.preemption import SIGNALS
    SIGNALS.requeue()
    err.print(f"[bold yellow]stopped:[/] {escape(str(e))}; rerun the same command to resume", highlight=False,
              soft_wrap=True)
    raise typer.Exit(128 + e.signum)


VERDICT_STYLE = {"reproduced": "green", "not reproduced": "red", "inconclusive": "yellow"}


def print_verdicts(verdicts: list[dict]) -> None:
    table = Table(title="Verdict over seeds (mean and 95% interval; the per-seed values after them)", show_lines=True)
    for col in ("experiment", "claim", "mean [95% interval]", "per seed", "criterion", "verdict"):
        table.add_column(col, overflow="fold")
    for v in verdicts:
        for c in v["claims"]:
            style = VERDICT_STYLE.get(c["verdict"], "white")
            table.add_row(*(escape(cell) for cell in cells(v, c)),
                          f"[{style}]{c['verdict']}[/] ({c['seeds_holding']}/{c['seeds']} seeds"
                          + (f"; too few to judge, the interval alone: {c.get('interval_verdict')})"
                             if c.get("too_few_seeds") else ")")
                          + (f" censored at seed {', '.join(c['censored'])}" if c.get("censored") else ""))
    console.print(table)
    few = sum(bool(c.get("too_few_seeds")) for v in verdicts for c in v["claims"])
    if few:
        console.print(f"[yellow]A plumbing check, not a verdict:[/] {few} claim(s) had fewer than 8 seeds with a number, "
                      f"which judge nothing (the smoke scale checks that every claim computes; the cpu scale judges)",
                      soft_wrap=True)


def _seed_options(seeds: Optional[int], seed_base: int) -> dict:
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds: expected a whole number >= 1, got {seeds}")
    if seed_base < 0:
        raise UserError(f"--seed-base: expected a whole number >= 0, got {seed_base}")
    return {"seeds": seeds, "seed_base": seed_base}


YES_HELP = "confirm a suite of more than MAX_RUNS (5,000) runs"


def _confirm(yes: bool) -> None:
    if yes:  # read where the grid is expanded (framework/grid.py), here and in every child process
        os.environ["REPRO_YES"] = "1"


def _check_runs_dir(runs_dir: Path) -> None:
    """--runs-dir must be a folder this process can write (one line, exit 2, before anything trains)."""
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UserError(f"--runs-dir: {runs_dir} is a file, not a folder")
    probe = runs_dir if runs_dir.exists() else next((p for p in runs_dir.absolute().parents if p.exists()), None)
    if probe is None or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--runs-dir: {runs_dir} is not writable by this user"
                        + ("" if runs_dir.exists() else f" (nor is {probe}, where it would be created)"))


SEEDS_HELP = "seeds per grid point (default: the scale's, 10 at cpu, 2 at smoke)"
SEED_BASE_HELP = "the first seed: runs use seeds B, B+1, ..., B+N-1"


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


# Choices shown in --help and checked by click (exit 2, naming the option); literal here so that --help does not
# import torch: tests/test_config.py checks them against planner.FUSE_MODES, the bench's SIZES, the recipes' scales
FUSE_CHOICES = ("auto", "off")
SIZE_CHOICES = ("small", "full")
RECIPE_HELP = "a recipe: its name (see `repro list`), or where it lives: path/to/recipe.py[:Class] or pkg.module:Class"
SCALES = ("smoke", "cpu", "gpu", "paper")  # every built-in recipe's scales; a recipe's YAML may define more


def _complete_scale(incomplete: str) -> list[str]:
    return [s for s in SCALES if s.startswith(incomplete)]


class _Choice(str, enum.Enum):
    def __str__(self) -> str:
        return self.value


Fuse = _Choice("Fuse", {c: c for c in FUSE_CHOICES})
Size = _Choice("Size", {c: c for c in SIZE_CHOICES})


def fuse_option(help: str):
    return typer.Option(Fuse.auto, help=help)


def scale_option(help: str):
    return typer.Option(None, metavar="[" + "|".join(SCALES) + "|...]", autocompletion=_complete_scale,
                        help=f"{help}; a recipe's YAML may define other scales")


def _check_fuse(fuse, fuse_max: int) -> str:
    """The --fuse value as a plain string, checked."""
    from framework.planner import FUSE_MODES  # the CLI imports torch only once a command needs it (--help: 0.2 s)
    fuse = getattr(fuse, "value", fuse)
    if fuse not in FUSE_MODES:
        raise UserError(f"--fuse: expected one of {', '.join(FUSE_MODES)}, got {fuse!r}")
    if fuse_max < 1:
        raise UserError(f"--fuse-max: must be >= 1, got {fuse_max}")
    return fuse


def _one_line(text) -> str:
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    return lines[0][:300] if lines else "unknown error"


def command_line(command: str, experiment: str, overrides, scale, seeds, seed_base) -> str:
    """The command that produced a verdict table, as one would type it again (the options that change verdicts)."""
    words = ["repro", command, experiment, *(overrides or []), *(["--scale", scale] if scale else []),
             *(["--seeds", str(seeds)] if seeds is not None else []), *(["--seed-base", str(seed_base)] if seed_base else [])]
    return shlex.join(words)


def write_verdict_table(verdicts: list[dict], reports_dir: Path, command: str) -> None:
    """reports/verdicts.md from the verdicts of every recipe just run or reported (`run all`, `report all`)."""
    from framework.tracking import code_version
    from framework.verdict_table import generated, update_readme, write
    if not verdicts:
        return
    code = code_version()  # git, once
    console.print(f"wrote {write(verdicts, reports_dir, command, code)}")
    recipes = _recipes()
    every_default = {v["experiment"] for v in verdicts} == set(recipes.names()) and all(
        v["scale"] == recipes.get(v["experiment"])().default_scale() for v in verdicts)
    readme = Path(reports_dir).resolve().parent / "README.md"
    if every_default and update_readme(readme, verdicts, generated(verdicts, command, code)):
        console.print(f"wrote the results summary in {readme}")

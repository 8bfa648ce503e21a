"""`repro plan`: a suite's runs, its fused groups and an estimate of its device time, before anything trains."""
from __future__ import annotations

from collections import Counter
from typing import List, Optional

import typer
from rich.table import Table

from framework.cli_common import (
    RECIPE_HELP,
    SEED_BASE_HELP,
    SEEDS_HELP,
    _fail,
    _names,
    _recipes,
    _seed_options,
    app,
    console,
    scale_option,
)
from framework.registry import UserError


@app.command()
def plan(experiment: str = typer.Argument(..., help=RECIPE_HELP + ", or 'all'"),
         overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, as `repro run` takes them"),
         scale: Optional[str] = scale_option("one scale (default: every scale the recipe defines)"),
         seeds: Optional[int] = typer.Option(None, help=SEEDS_HELP),
         seed_base: int = typer.Option(0, "--seed-base", help=SEED_BASE_HELP),
         groups: bool = typer.Option(False, "--groups", help="also list every fused group: its size, steps and runs")):
    """Each scale's runs, the fused groups the planner makes of them, the training steps, and an estimate of the
    device-hours on this CPU and on one H200 (framework/cost.py: fitted to `repro bench` figures; runs that stop
    early, at a training accuracy or a target, cost less)."""
    from framework.cost import DEVICES, estimate, group_seconds, steps
    from framework.planner import plan as make_plan
    try:
        seeding = _seed_options(seeds, seed_base)
        recipes = _recipes()
        table = Table(title="What each suite costs (an estimate: framework/cost.py)")
        for col in ("recipe", "scale", "runs", "fused groups (size x count)", "steps", "cpu hours", "H200 hours"):
            table.add_column(col)
        for name in _names(experiment):
            recipe = recipes.get(name)()
            for s in ([scale] if scale else recipe.scales()):
                if s not in recipe.scales():
                    raise UserError(f"--scale: {name} has no scale '{s}'; its scales: {', '.join(recipe.scales())}")
                runs = recipe.runs(s, overrides or [], **seeding)
                made = [[r.cfg for r in g] for g in make_plan(runs)]
                sizes = Counter(len(g) for g in made)
                table.add_row(name, s, str(len(runs)),
                              ", ".join(f"{k}x{n}" for k, n in sorted(sizes.items(), reverse=True)),
                              f"{sum(max(steps(c) for c in g) for g in made):,}",
                              f"{estimate(made, 'cpu'):.3g}", f"{estimate(made, 'cuda'):.3g}")
                if groups:
                    for g in made:
                        console.print(f"{name} [{s}] group of {len(g)}: {max(steps(c) for c in g):,} steps, "
                                      f"~{group_seconds(g, DEVICES['cuda']):.0f} s on an H200: "
                                      + ", ".join(f"{c.variant}@{c.seed}" for c in g[:6])
                                      + (" ..." if len(g) > 6 else ""), soft_wrap=True, highlight=False)
        console.print(table)
    except UserError as e:
        _fail(e)

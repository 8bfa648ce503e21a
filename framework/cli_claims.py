"""`repro claims`: each claim's version in the ledger, and a new version when a definition changed."""
from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from framework.cli_common import _fail, _recipes, app, console
from framework.registry import UserError


@app.command()
def claims(bump: Optional[str] = typer.Option(None, help="record a new version of every changed claim of this "
                                                         "recipe, recipe/key, or 'all'"),
           reason: str = typer.Option("", help="with --bump: one line saying why the definition changed")):
    """Each claim's version and whether its definition (quote, statistic, criterion, protocol) matches the
    ledger (configs/claims-ledger.yaml). Exits 1 when one changed without a new version."""
    from framework.claims import bump as bump_ledger
    from framework.claims import read_ledger, status, write_ledger
    from framework.recipe import ledger_path
    try:
        registry = _recipes()
        recipes = [registry.get(name)() for name in registry.names()]
        path = ledger_path()
        ledger = read_ledger(path)
        if bump is not None:
            known = {r.name for r in recipes} | {f"{r.name}/{d.key}" for r in recipes for d in r.definitions}
            if bump != "all" and bump not in known:
                raise UserError(f"--bump: no recipe or claim {bump!r}")
            bumped = bump_ledger(recipes, bump, reason, ledger)
            write_ledger(ledger, path)
            console.print(f"{len(bumped)} claim(s) at a new version: {', '.join(bumped) or 'none changed'}")
            return
        table = Table(show_lines=False)
        for col in ("claim", "version", "ledger"):
            table.add_column(col)
        stale = []
        for r in recipes:
            for name, entry in status(r, ledger).items():
                table.add_row(name, str(entry["version"]), entry["ledger"])
                if entry["ledger"] != "recorded":
                    stale.append(name)
        console.print(table)
        if stale:
            console.print(f"[bold red]{len(stale)} claim(s) changed or unrecorded[/]: {escape(', '.join(stale))}; "
                          f"record them with `repro claims --bump RECIPE --reason \"...\"`", soft_wrap=True)
            raise typer.Exit(1)
    except UserError as e:
        _fail(e)

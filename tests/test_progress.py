"""Progress that tells the truth where output is no terminal: a line every so often with runs done and time
left, the runs a rerun reused, and two-seed results labelled a plumbing check."""
import io

from rich.console import Console

import framework.suite as suite
from experiments import RECIPES
from framework.cli_common import print_verdicts
from framework.store import RunStore


def test_a_suite_without_a_terminal_says_how_far_it_is_and_what_it_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "HEARTBEAT_S", 0.5)
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    assert not console.is_terminal
    recipe, store = RECIPES.get("edge_of_stability")(), RunStore(tmp_path / "runs")
    typed = ["tracking.mode=disabled"]
    verdict = suite.run_suite(recipe, "smoke", typed, store, tmp_path / "reports", console=console)
    text = out.getvalue()
    total = len(recipe.runs("smoke", typed))
    beats = [line for line in text.splitlines() if "runs done after" in line]
    assert beats and all(f"of {total} runs done" in line for line in beats), text
    assert "reused" not in text
    out.truncate(0)
    suite.run_suite(recipe, "smoke", typed, store, tmp_path / "reports", console=console)
    assert f"{total} of {total} runs were finished in the store and reused" in out.getvalue()
    printed = io.StringIO()
    monkeypatch.setattr("framework.cli_common.console", Console(file=printed, width=200))
    print_verdicts([verdict])
    assert "A plumbing check, not a verdict" in printed.getvalue()

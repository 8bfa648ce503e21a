"""The verdict table of a run of every recipe, written by the tool (never by hand) into reports/verdicts.md: dated,
with the command that produced it, the seeds and the code version; one row per claim."""
from __future__ import annotations

import time
from pathlib import Path

from framework.files import atomic_write

NAME = "verdicts.md"


def fmt(v) -> str:
    if v is None:  # verdict.json's null: a statistic that was nan or infinite
        return "not finite"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def cells(verdict: dict, claim: dict) -> list[str]:
    """One claim's row, as the printed table and verdicts.md show it, up to its verdict: recipe [scale], claim
    (reference), mean [95% interval], per-seed values, criterion."""
    lo, hi = claim["interval"]
    return [f"{verdict['experiment']} [{verdict['scale']}]", f"{claim['claim']} ({claim['reference']})",
            f"{fmt(claim['mean'])} [{fmt(lo)}, {fmt(hi)}]",
            ", ".join(f"{s}: {fmt(x)}" for s, x in claim["per_seed"].items()), claim["criterion"]]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(verdicts: list[dict], command: str, code: dict | None = None, when: str | None = None) -> str:
    seeds = sorted({s for v in verdicts for s in v.get("seeds", [])})
    counts: dict[str, int] = {}
    for v in verdicts:
        for c in v["claims"]:
            counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    code = code or {}
    lines = [
        "# Verdicts", "",
        f"Generated {when or time.strftime('%Y-%m-%d %H:%M')} by `{command}`"
        + (f" (code {code['git_sha'][:10]}{', uncommitted changes' if code.get('git_dirty') == 'true' else ''})"
           if code.get("git_sha") else "")
        + f"; seeds {', '.join(map(str, seeds)) or 'none'}.",
        "", "Totals: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".", "",
        "| recipe [scale] | claim | mean [95% interval] | per seed | criterion | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        for c in v["claims"]:
            verdict = f"{c['verdict']} ({c['seeds_holding']}/{c['seeds']} seeds)"
            lines.append("| " + " | ".join(_cell(x) for x in [*cells(v, c), verdict]) + " |")
    return "\n".join(lines) + "\n"


def write(verdicts: list[dict], reports_dir: Path, command: str, code: dict | None = None) -> Path:
    path = Path(reports_dir) / NAME
    atomic_write(path, render(verdicts, command, code))
    return path

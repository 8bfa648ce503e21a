"""The verdict table of a run of every recipe, written by the tool (never by hand) into reports/verdicts.md: dated,
with the command that produced it, the seeds and the code version; one row per claim. The same run, at every
recipe's default scale, also rewrites the README's results summary (between its two SUMMARY markers): per claim
its version, verdict, mean and interval, and the paper's words it judges."""
from __future__ import annotations

import time
from pathlib import Path

from framework.files import atomic_write

NAME = "verdicts.md"
SUMMARY_START = "<!-- results summary: written by `repro run all` / `repro report all`, never by hand -->"
SUMMARY_END = "<!-- end of the results summary -->"


def fmt(v) -> str:
    if v is None:  # verdict.json's null: a statistic that was nan or infinite
        return "not finite"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def cells(verdict: dict, claim: dict) -> list[str]:
    """One claim's row, as the printed table and verdicts.md show it, up to its verdict: recipe [scale], claim
    (reference), mean [95% interval], per-seed values, criterion."""
    lo, hi = claim["interval"]
    version = f" [v{claim['version']}]" if "version" in claim else ""
    return [f"{verdict['experiment']} [{verdict['scale']}]", f"{claim['claim']} ({claim['reference']}){version}",
            f"{fmt(claim['mean'])} [{fmt(lo)}, {fmt(hi)}]",
            ", ".join(f"{s}: {fmt(x)}" for s, x in claim["per_seed"].items()), claim["criterion"]]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def generated(verdicts: list[dict], command: str, code: dict | None = None, when: str | None = None) -> str:
    """The line that dates a table: when, by which command, at which code version, over which seeds."""
    seeds = sorted({s for v in verdicts for s in v.get("seeds", [])})
    code = code or {}
    return (f"Generated {when or time.strftime('%Y-%m-%d %H:%M')} by `{command}`"
            + (f" (code {code['git_sha'][:10]}{', uncommitted changes' if code.get('git_dirty') == 'true' else ''})"
               if code.get("git_sha") else "")
            + f"; seeds {', '.join(map(str, seeds)) or 'none'}.")


def render(verdicts: list[dict], command: str, code: dict | None = None, when: str | None = None) -> str:
    counts: dict[str, int] = {}
    for v in verdicts:
        for c in v["claims"]:
            counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    lines = [
        "# Verdicts", "", generated(verdicts, command, code, when),
        "", "Totals: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".", "",
        "| recipe [scale] | claim | mean [95% interval] | per seed | criterion | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        for c in v["claims"]:
            verdict = f"{c['verdict']} ({c['seeds_holding']}/{c['seeds']} seeds" + \
                (f"; censored at {len(c['censored'])})" if c.get("censored") else ")")
            lines.append("| " + " | ".join(_cell(x) for x in [*cells(v, c), verdict]) + " |")
    return "\n".join(lines) + "\n"


def write(verdicts: list[dict], reports_dir: Path, command: str, code: dict | None = None) -> Path:
    path = Path(reports_dir) / NAME
    atomic_write(path, render(verdicts, command, code))
    return path


def summary(verdicts: list[dict], header: str) -> str:
    """The README's results table: claim (recipe/key), version, verdict, mean [95% interval], the quote."""
    lines = [header, "", "| claim | v | verdict | mean [95% interval] | the paper's words (where) |", "|---|---|---|---|---|"]
    for v in verdicts:
        for c in v["claims"]:
            lo, hi = c["interval"]
            quote = f"\"{c.get('quote', '')}\"" + (" (paraphrase)" if c.get("paraphrase") else "")
            censored = ", censored" if c.get("censored") else ""
            lines.append("| " + " | ".join(_cell(x) for x in [
                f"`{v['experiment']}/{c.get('key', '?')}`: {c['claim']}", c.get("version", 0),
                f"{c['verdict']}{censored}", f"{fmt(c['mean'])} [{fmt(lo)}, {fmt(hi)}]",
                f"{quote} ({c['reference']})"]) + " |")
    return "\n".join(lines)


def update_readme(readme: Path, verdicts: list[dict], header: str) -> bool:
    """Replace the README's results summary (between the markers); False when it has none."""
    if not readme.exists():
        return False
    text = readme.read_text()
    if SUMMARY_START not in text or SUMMARY_END not in text:
        return False
    head, rest = text.split(SUMMARY_START, 1)
    _, tail = rest.split(SUMMARY_END, 1)
    atomic_write(readme, head + SUMMARY_START + "\n" + summary(verdicts, header) + "\n" + SUMMARY_END + tail)
    return True

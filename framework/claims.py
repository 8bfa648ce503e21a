"""Claims fixed before they are judged: each claim's definition record and the ledger of its versions.

A recipe declares its claims up front (`Definitions`, a class attribute): for each, the paper's statement quoted
(<= 40 words, or a close paraphrase marked as such) with its section or figure, the statistic in words, the
criterion and where its numbers come from (the paper, a closed form, or noise measured on seeds not judged). The
protocol is the recipe's YAML (every scale's runs). measure() only fills in values: `definition(value, measured)`.

The ledger (configs/claims-ledger.yaml, beside the recipes' YAML) keeps, per claim, the hash of its definition and
protocol and a version with a one-line reason per version. `repro claims` lists claims whose definition changed
without a new version; `repro claims --bump RECIPE[/KEY] --reason "..."` records a new version. verdict.json and
the reports carry each claim's version; a claim the ledger does not know (or whose definition changed since) is
reported with version 0 and `ledger: "unrecorded"` / "changed"`.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from framework.files import atomic_write
from framework.registry import UserError
from framework.verdict import Claim, Criterion

SOURCES = ("paper", "closed form", "measured noise", "convention")
LEDGER = "claims-ledger.yaml"
MAX_QUOTE_WORDS = 40


@dataclass(frozen=True)
class Definition:
    """One claim, fixed: what the paper says, what is measured, and the side of which threshold counts."""
    key: str              # stable name within the recipe, e.g. "fit_time_grows"
    claim: str            # the claim in our words (the verdict table's line)
    quote: str            # the paper's words (<= 40), or a close paraphrase when `paraphrase`
    where: str            # paper, section / figure
    statistic: str        # what the value measures, in words
    criterion: Criterion
    source: str           # where the criterion's numbers come from: one of SOURCES, then ': ' and the detail
    paraphrase: bool = False

    def __post_init__(self):
        kind = self.source.split(":")[0].strip()
        if kind not in SOURCES:
            raise ValueError(f"claim {self.key}: source must start with one of {SOURCES}, got {self.source!r}")
        if len(self.quote.split()) > MAX_QUOTE_WORDS:
            raise ValueError(f"claim {self.key}: the quote has {len(self.quote.split())} words (at most "
                             f"{MAX_QUOTE_WORDS})")

    def __call__(self, value: float, measured: dict | None = None, censored: str | None = None) -> Claim:
        """This claim measured on one seed: its value, the numbers it came from, and why it is censored (an
        optimum on its grid's edge) if it is."""
        return Claim(self.claim, self.where, self.statistic, value, self.criterion, dict(measured or {}),
                     censored=censored, key=self.key)

    def record(self) -> dict:
        c = self.criterion
        bound = list(c.bound) if isinstance(c.bound, tuple) else c.bound
        return {"key": self.key, "claim": self.claim, "quote": self.quote, "paraphrase": self.paraphrase,
                "where": self.where, "statistic": self.statistic, "criterion": {"op": c.op, "bound": bound},
                "source": self.source}


class Definitions(tuple):
    """A recipe's claims in order, looked up by key."""

    def __new__(cls, *definitions: Definition):
        keys = [d.key for d in definitions]
        if len(set(keys)) != len(keys):
            raise ValueError(f"claim keys repeat: {keys}")
        return super().__new__(cls, definitions)

    def __getitem__(self, key):
        if isinstance(key, str):
            for d in self:
                if d.key == key:
                    return d
            raise KeyError(f"no claim {key!r}; claims: {[d.key for d in self]}")
        return super().__getitem__(key)


def _canonical(x) -> str:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)
        if isinstance(v, dict):
            return {str(k): clean(w) for k, w in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(w) for w in v]
        return v
    return json.dumps(clean(x), sort_keys=True, separators=(",", ":"))


def definition_hash(definition: Definition, protocol: dict) -> str:
    """The hash a ledger entry pins: the definition record and the recipe's whole YAML (its runs' configs)."""
    text = _canonical({"definition": definition.record(), "protocol": protocol})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_ledger(path: Path) -> dict:
    """The ledger at `path` (configs/claims-ledger.yaml: framework.recipe.ledger_path); empty when absent."""
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a map of claim -> {{version, hash, history}}")
    return data


def write_ledger(ledger: dict, path: Path) -> None:
    head = ("# The claims' ledger: per claim (recipe/key) the hash of its definition and protocol, its version, and\n"
            "# why each version was made. Edit with `repro claims --bump RECIPE[/KEY] --reason ...`, never by hand.\n")
    atomic_write(path, head + yaml.safe_dump(dict(sorted(ledger.items())), sort_keys=False, width=120))


def current(recipe) -> dict[str, str]:
    """recipe/key -> definition hash, for a recipe's claims as its code and YAML define them now."""
    protocol = recipe.spec()
    return {f"{recipe.name}/{d.key}": definition_hash(d, protocol) for d in recipe.definitions}


def status(recipe, ledger: dict) -> dict[str, dict]:
    """recipe/key -> {version, hash, ledger: recorded | changed | unrecorded}."""
    out = {}
    for name, h in current(recipe).items():
        entry = ledger.get(name)
        if entry is None:
            out[name] = {"version": 0, "hash": h, "ledger": "unrecorded"}
        elif entry.get("hash") != h:
            out[name] = {"version": 0, "hash": h, "ledger": "changed", "recorded_version": entry.get("version")}
        else:
            out[name] = {"version": int(entry["version"]), "hash": h, "ledger": "recorded"}
    return out


def bump(recipes: list, target: str, reason: str, ledger: dict) -> list[str]:
    """Record a new version of every claim under `target` (a recipe, or recipe/key) whose hash differs from the
    ledger's; returns the claims bumped."""
    if not reason or "\n" in reason:
        raise UserError("--reason: one line saying why the definition changed")
    bumped = []
    for recipe in recipes:
        for name, h in current(recipe).items():
            if not (target == recipe.name or target == name or target == "all"):
                continue
            entry = ledger.get(name)
            if entry is not None and entry.get("hash") == h:
                continue
            version = int(entry["version"]) + 1 if entry else 1
            history = list(entry.get("history", [])) if entry else []
            history.append({"version": version, "hash": h, "reason": reason})
            ledger[name] = {"version": version, "hash": h, "history": history}
            bumped.append(name)
    return bumped

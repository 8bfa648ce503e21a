"""A recipe: one phenomenon's grid (configs/<name>.yaml, expanded by framework/grid.py), its claims and its figures.

A recipe subclass names the experiment and implements measure(): the claims measured on one seed's runs (a
framework.results.Runs view: select runs by their axes, read a run's curve, compute with framework.results.measures),
only from their logged numbers; framework/verdict.py judges each claim over the seeds. figures() draws from the
same view. Register the class in a Registry (experiments/__init__.py's RECIPES) under its name.
"""
from __future__ import annotations

import inspect
import os
from abc import ABC, abstractmethod
from pathlib import Path

import yaml

from framework.claims import LEDGER, Definitions, read_ledger, status
from framework.grid import Run, expand
from framework.registry import UserError
from framework.resources import resource_dir
from framework.results.runs import Runs
from framework.verdict import Claim, judge


def config_dir() -> Path:
    """The recipes' YAML: $REPRO_CONFIGS, else the checkout's configs/ (an editable install), else the copy
    installed with the package (framework/configs, see pyproject.toml)."""
    return Path(os.environ["REPRO_CONFIGS"]) if os.environ.get("REPRO_CONFIGS") else resource_dir("configs")


def ledger_path() -> Path:
    """The claims' ledger beside the recipes' YAML (framework/claims.py)."""
    return config_dir() / LEDGER


class Recipe(ABC):
    """Subclass per phenomenon: set the class attributes, implement measure() (one seed) and figures()."""
    name: str = ""
    title: str = ""
    papers: list[str] = []
    definitions: Definitions = Definitions()  # the claims, fixed before they are judged (framework/claims.py)

    def spec_path(self) -> Path:
        """configs/<name>.yaml (config_dir), else <name>.yaml beside the recipe's module: a plug-in recipe
        (framework/plugins.py) keeps its YAML with its code."""
        path = config_dir() / f"{self.name}.yaml"
        if not path.exists():
            beside = Path(inspect.getfile(type(self))).with_name(f"{self.name}.yaml")
            if beside.exists():
                return beside
        return path

    def spec(self) -> dict:
        path = self.spec_path()
        if not path.exists():
            raise UserError(f"no config for experiment '{self.name}': expected {path}")
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"{path}{where}: malformed YAML ({problem})") from None
        if not isinstance(spec, dict):
            raise UserError(f"{path}: expected a map with run, grid and scales, got {type(spec).__name__}")
        return spec

    def scales(self) -> list[str]:
        return list((self.spec().get("scales") or {}).keys())

    def default_scale(self) -> str:
        return self.spec().get("default_scale", "cpu")

    def runs(self, scale: str | None = None, overrides: list[str] | dict | None = None, seeds: int | None = None,
             seed_base: int = 0) -> list[Run]:
        return expand(self.name, self.spec(), scale or self.default_scale(), overrides or [], self.spec_path(),
                      seeds, seed_base)

    def report_dir(self, reports_dir: Path, scale: str | None = None) -> Path:
        """Each scale keeps its own report: reports/<experiment>/<scale>/."""
        return Path(reports_dir) / self.name / (scale or self.default_scale())

    @abstractmethod
    def measure(self, runs: Runs) -> list[Claim]:
        """The recipe's claims measured on one seed's runs (the same claims, in the same order, for every seed),
        each from the runs' logged numbers."""

    def claims(self, runs: Runs) -> list[dict]:
        """Every claim over the seeds: per-seed values, mean, 95% interval and verdict (framework/verdict.py), with
        its definition record (the quote, where its criterion comes from) and its version in the ledger."""
        out = judge(self.measure, runs)
        keys, defined = [c["key"] for c in out], [d.key for d in self.definitions]
        if keys != defined:
            raise ValueError(f"{self.name}: measure() returned the claims {keys}; its definitions are {defined}")
        versions = status(self, read_ledger(ledger_path()))
        for entry, d in zip(out, self.definitions):
            ledger = versions[f"{self.name}/{d.key}"]
            entry.update({"quote": d.quote, "paraphrase": d.paraphrase, "criterion_source": d.source,
                          "version": ledger["version"], "ledger": ledger["ledger"], "definition_hash": ledger["hash"]})
        return out

    def figures(self, runs: Runs, outdir: Path) -> list[Path]:
        return []

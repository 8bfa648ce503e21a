"""Claims over seeds: each claim's statistic is measured on every seed's runs, then judged by its 95% interval.

A recipe measures a claim on one seed's runs (`Claim`: the statistic's value and the criterion that says on
which side of a threshold the paper's statement lies). `judge` gathers the seeds: the per-seed values, their
mean, a 95% interval for the mean, and one of three verdicts:
- reproduced: the whole interval lies on the claim's side of the criterion;
- not reproduced: the whole interval lies on the other side;
- inconclusive: the interval straddles the criterion, or fewer than MIN_SEEDS (3) seeds gave a number (the
  interval's own side is kept as `interval_verdict`).

The interval is a percentile bootstrap of the mean over seeds (scipy.stats.bootstrap, 10,000 resamples, a fixed
random state so that a verdict is a function of the per-seed values). Many of the statistics are skewed (error
gaps, step ratios: one seed far out on the claim's own side) and Student's t interval, tried first, let such an
outlier widen the interval across the criterion although every seed held. The price, stated: with 5 seeds a
percentile interval stays inside the observed values and covers less than its nominal 95% for a normal mean (about
85%); a claim whose seeds straddle its criterion still comes out inconclusive. Identical per-seed values give a
zero-width interval, so a deterministic statistic (every seed fits, every seed diverges) is judged as it stands.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from framework.results.measures import never_trained

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
LEVEL = 0.95


@dataclass(frozen=True)
class Criterion:
    """The side of a threshold the claim puts its statistic on: '>' (above), '<' (below) or 'in' [lo, hi]."""
    op: str
    bound: float | tuple[float, float]

    def holds(self, x: float) -> bool:
        if x is None or math.isnan(x):
            return False
        if self.op == ">":
            return x > self.bound
        if self.op == "<":
            return x < self.bound
        lo, hi = self.bound
        return lo <= x <= hi

    def judge(self, lo: float, hi: float) -> str:
        """The verdict of an interval [lo, hi] for the statistic's mean."""
        if any(v is None or math.isnan(v) for v in (lo, hi)):
            return INCONCLUSIVE
        if self.op == ">":
            return REPRODUCED if lo > self.bound else NOT_REPRODUCED if hi <= self.bound else INCONCLUSIVE
        if self.op == "<":
            return REPRODUCED if hi < self.bound else NOT_REPRODUCED if lo >= self.bound else INCONCLUSIVE
        a, b = self.bound
        if a <= lo and hi <= b:
            return REPRODUCED
        return NOT_REPRODUCED if hi < a or lo > b else INCONCLUSIVE

    def __str__(self) -> str:
        if self.op == "in":
            return f"in [{self.bound[0]:g}, {self.bound[1]:g}]"
        return f"{self.op} {self.bound:g}"


def above(x: float) -> Criterion:
    return Criterion(">", float(x))


def below(x: float) -> Criterion:
    return Criterion("<", float(x))


def within(lo: float, hi: float) -> Criterion:
    return Criterion("in", (float(lo), float(hi)))


@dataclass
class Claim:
    """One claim measured on one seed's runs: the statistic's value and the criterion it is judged by."""
    claim: str
    reference: str          # the paper, section or figure that states it
    statistic: str          # what `value` measures, in words
    value: float
    criterion: Criterion
    measured: dict[str, Any] = field(default_factory=dict)   # the numbers the value is computed from

    def __post_init__(self):
        self.value = _number(self.value)

    @property
    def holds(self) -> bool:
        return self.criterion.holds(self.value)


def _number(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


RESAMPLES = 10_000
# Fewer seeds with a number than this judge nothing: the verdict is inconclusive and `interval_verdict` keeps what
# the interval alone would say (a smoke suite's two seeds check that claims compute, not that they hold).
MIN_SEEDS = 3


def interval(values: list[float], level: float = LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap interval for the mean of the per-seed values (nan with fewer than two). Infinite values
    (a quantity never reached, as an underflowed gradient's log) give the range of the values instead."""
    xs = [v for v in values if not math.isnan(v)]
    if len(xs) < 2:
        return math.nan, math.nan
    if any(math.isinf(v) for v in xs) or min(xs) == max(xs):
        return min(xs), max(xs)
    result = stats.bootstrap((np.asarray(xs),), np.mean, confidence_level=level, n_resamples=RESAMPLES,
                             method="percentile", random_state=np.random.default_rng(0))
    ci = result.confidence_interval
    return float(ci.low), float(ci.high)


def summarise(per_seed: dict[int, Claim]) -> dict:
    """The verdict.json entry of one claim from its per-seed measurements."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    values = [per_seed[s].value for s in seeds]
    known = [v for v in values if not math.isnan(v)]
    mean = sum(known) / len(known) if known else math.nan
    lo, hi = interval(values)
    judged = first.criterion.judge(lo, hi)
    too_few = len(known) < MIN_SEEDS  # [min, max] of two values is no 95% interval: no verdict from it
    verdict = INCONCLUSIVE if too_few else judged
    return {"claim": first.claim, "reference": first.reference, "statistic": first.statistic,
            "criterion": f"{first.statistic} {first.criterion}", "per_seed": {str(s): per_seed[s].value for s in seeds},
            "mean": mean, "interval": [lo, hi], "verdict": verdict, "interval_verdict": judged,
            "too_few_seeds": too_few,
            "seeds_holding": sum(per_seed[s].holds for s in seeds), "seeds": len(seeds),
            "measured": {str(s): per_seed[s].measured for s in seeds}}


def judge(measure, runs) -> list[dict]:
    """Measure the claims on each seed's runs (`measure(runs_of_one_seed)`) and summarise them over seeds.
    A seed whose runs cannot give a claim's number counts as nan for it (never as a pass), and so does every
    claim of a seed none of whose runs ever trained (`never_trained`)."""
    seeds = sorted(runs["seed"].unique()) if "seed" in runs.columns else [0]
    measured: dict[int, list[Claim]] = {}
    for seed in seeds:
        part = runs[runs["seed"] == seed] if "seed" in runs.columns else runs
        part.attrs = dict(runs.attrs)
        measured[int(seed)] = measure(part)
        if len(part) and never_trained(part).all():  # numbers of nets that never took a finite step: no evidence
            for c in measured[int(seed)]:
                c.measured = {**c.measured, "never_trained": True, "value_as_measured": c.value}
                c.value = math.nan
    counts = {len(c) for c in measured.values()}
    if len(counts) != 1:
        raise ValueError(f"the recipe measured a different number of claims per seed: {sorted(counts)}")
    return [summarise({s: claims[i] for s, claims in measured.items()}) for i in range(counts.pop())]

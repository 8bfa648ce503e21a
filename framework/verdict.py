"""Claims over seeds: each claim's statistic is measured on every seed's runs, then judged by its 95% interval.

A recipe measures a claim on one seed's runs (`Claim`: the statistic's value and the criterion that says on
which side of a threshold the paper's statement lies). `judge` gathers the seeds: the per-seed values, their
mean, a 95% interval for the mean, and one of three verdicts:
- reproduced: the whole interval lies on the claim's side of the criterion;
- not reproduced: the whole interval lies on the other side;
- inconclusive: the interval straddles the criterion, or fewer than MIN_SEEDS (8) seeds gave a number (the
  interval is then the values' range, and its own side is kept as `interval_verdict`), or the value is censored
  at some seed (an argmin/argmax on its grid's edge: `censored` says where).

The interval is a studentized bootstrap (bootstrap-t) of the mean over seeds: 10,000 resamples, a fixed random
state, so that a verdict is a function of the per-seed values. It is chosen for coverage, measured by simulation
(tests/test_verdict.py, `test_the_interval_covers`, 2,000 draws a case): from 8 values on it covers a known mean
at least 93% of the time on normal values and on skewed ones (lognormal, gamma, exponential: 0.934-0.954 at 8,
0.936-0.954 at 10). With 5 values it covered 0.915-0.923 on exponential values, Student's t 0.88-0.92 on the
skewed ones, and the percentile bootstrap used before 0.85 even on normal values: hence MIN_SEEDS, and the cpu
scales' 10 seeds. Identical per-seed values give a zero-width interval, so a deterministic statistic (every seed
fits, every seed diverges) is judged as it stands; an infinite value (a quantity never reached) gives the range of
the values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    censored: str | None = None  # why the value cannot be trusted as a number (an optimum on its grid's edge)
    key: str = ""                # the definition's key (framework/claims.py)

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
# Fewer seeds with a number than this judge nothing (the interval's coverage is shown from here on): the verdict is
# inconclusive and `interval_verdict` keeps what the range alone would say (a smoke suite's two seeds check that
# claims compute, not that they hold).
MIN_SEEDS = 8


RESOLUTION = 1e-9


def snap(xs: np.ndarray) -> np.ndarray:
    """Values equal up to floating-point rounding made equal: values in one bucket of RESOLUTION times the largest
    |value| all take the first one's value (a value alone in its bucket stays exactly as it was). Without it, nine
    values of ~1e-17 beside one of 0.48 (rounding noise around an exact 0) give resamples of near-zero spread whose
    t statistics run to 1e14 (adam_vs_sgd 2 at seed base 2000: an upper bound of 3e14)."""
    finite = np.isfinite(xs)
    if not finite.any() or not np.abs(xs[finite]).max():
        return xs
    buckets = np.round(xs[finite] / (RESOLUTION * np.abs(xs[finite]).max()))
    first = {}
    values = [first.setdefault(b, x) for b, x in zip(buckets.tolist(), xs[finite].tolist())]
    out = xs.copy()
    out[finite] = values
    return out


def interval(values: list[float], level: float = LEVEL) -> tuple[float, float]:
    """Studentized-bootstrap interval for the mean of the per-seed values (see the module docstring); the values'
    range below MIN_SEEDS values or with an infinite one; nan with fewer than two."""
    xs = snap(np.asarray([v for v in values if not math.isnan(v)], dtype=float))
    if len(xs) < 2:
        return math.nan, math.nan
    if len(xs) < MIN_SEEDS or not np.isfinite(xs).all() or xs.min() == xs.max():
        return float(xs.min()), float(xs.max())
    # by hand: scipy.stats.bootstrap offers percentile, basic and BCa intervals, not the studentized one
    n, mean, sd = len(xs), xs.mean(), xs.std(ddof=1)
    resampled = xs[np.random.default_rng(0).integers(0, n, (RESAMPLES, n))]
    spread = resampled.std(axis=1, ddof=1)
    # A resample of one repeated value has no spread of its own: it is studentized by the sample's (dropped, it
    # took the interval's upper bound to the mean itself on nine equal values and one apart; kept as it was, its
    # rounding-level spread put the bound at 1e29)
    spread = np.where(spread > RESOLUTION * np.abs(xs).max(), spread, sd)
    t = (resampled.mean(axis=1) - mean) / (spread / math.sqrt(n))
    lower_q, upper_q = np.quantile(t, [(1 - level) / 2, (1 + level) / 2])
    return float(mean - upper_q * sd / math.sqrt(n)), float(mean - lower_q * sd / math.sqrt(n))


def summarise(per_seed: dict[int, Claim], data_draws: dict[int, list[int]] | None = None) -> dict:
    """The verdict.json entry of one claim from its per-seed measurements. A claim censored at any seed (its
    statistic an optimum on the grid's edge: the true optimum may lie beyond) is inconclusive."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    values = [per_seed[s].value for s in seeds]
    known = [v for v in values if not math.isnan(v)]
    mean = sum(known) / len(known) if known else math.nan
    lo, hi = interval(values)
    judged = first.criterion.judge(lo, hi)
    too_few = len(known) < MIN_SEEDS  # [min, max] of two values is no 95% interval: no verdict from it
    censored = {str(s): per_seed[s].censored for s in seeds if per_seed[s].censored}
    verdict = INCONCLUSIVE if too_few or censored else judged
    return {"key": first.key, "claim": first.claim, "reference": first.reference, "statistic": first.statistic,
            "criterion": f"{first.statistic} {first.criterion}", "per_seed": {str(s): per_seed[s].value for s in seeds},
            "mean": mean, "interval": [lo, hi], "verdict": verdict, "interval_verdict": judged,
            "too_few_seeds": too_few, "censored": censored,
            "seeds_holding": sum(per_seed[s].holds for s in seeds), "seeds": len(seeds),
            "data_draws": {str(s): (data_draws or {}).get(s, []) for s in seeds},
            "measured": {str(s): per_seed[s].measured for s in seeds}}


def judge(measure, runs) -> list[dict]:
    """Measure the claims on each seed's runs (`measure(runs_of_one_seed)`) and summarise them over seeds.
    A seed whose runs cannot give a claim's number counts as nan for it (never as a pass), and so does every
    claim of a seed none of whose runs ever trained (`never_trained`)."""
    seeds = sorted(runs["seed"].unique()) if "seed" in runs.columns else [0]
    measured: dict[int, list[Claim]] = {}
    draws: dict[int, list[int]] = {}
    for seed in seeds:
        part = runs[runs["seed"] == seed] if "seed" in runs.columns else runs
        part.attrs = dict(runs.attrs)
        measured[int(seed)] = measure(part)
        if "data.split_seed" in part.columns:
            draws[int(seed)] = sorted(int(d) for d in part["data.split_seed"].dropna().unique())
        if len(part) and never_trained(part).all():  # numbers of nets that never took a finite step: no evidence
            for c in measured[int(seed)]:
                c.measured = {**c.measured, "never_trained": True, "value_as_measured": c.value}
                c.value = math.nan
    counts = {len(c) for c in measured.values()}
    if len(counts) != 1:
        raise ValueError(f"the recipe measured a different number of claims per seed: {sorted(counts)}")
    return [summarise({s: claims[i] for s, claims in measured.items()}, draws) for i in range(counts.pop())]

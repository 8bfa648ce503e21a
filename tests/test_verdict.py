"""Claims over seeds: the 95% interval and the three-valued verdict, on constructed per-seed values."""
import math

import numpy as np
import pandas as pd
import pytest

from framework.grid import expand
from framework.registry import UserError
from framework.verdict import Claim, above, below, interval, judge, summarise, within


def _claims(values, criterion):
    return {seed: Claim("c", "paper, Fig. 1", "x", v, criterion, {"x": v}) for seed, v in enumerate(values)}


def test_interval_is_a_percentile_bootstrap_of_the_mean():
    values = [0.52, 0.55, 0.49, 0.58, 0.51]
    lo, hi = interval(values)
    rng = np.random.default_rng(1)
    means = rng.choice(values, size=(20_000, 5)).mean(1)  # the same bootstrap, drawn independently
    assert lo == pytest.approx(np.quantile(means, 0.025), abs=6e-3) and hi == pytest.approx(np.quantile(means, 0.975),
                                                                                            abs=6e-3)
    assert interval(values) == (lo, hi)                      # a fixed random state: the same values, the same verdict
    assert min(values) <= lo < sum(values) / 5 < hi <= max(values)
    assert interval([0.3, 0.3, 0.3]) == (0.3, 0.3)          # seeds that agree exactly: a point
    assert all(math.isnan(v) for v in interval([0.3]))      # one seed: no interval
    assert interval([1.0, math.inf, 2.0]) == (1.0, math.inf)  # a quantity never reached: the range


@pytest.mark.parametrize("values, criterion, verdict", [
    ([0.60, 0.62, 0.58, 0.61, 0.59], above(0.5), "reproduced"),
    ([0.40, 0.42, 0.38, 0.41, 0.39], above(0.5), "not reproduced"),
    ([0.30, 0.70, 0.45, 0.60, 0.52], above(0.5), "inconclusive"),      # straddles 0.5
    ([-3.0, -2.9, -3.2, -3.1, -2.8], below(-2), "reproduced"),
    ([-1.0, -0.5, -1.2, -0.8, -0.9], below(-2), "not reproduced"),
    ([-2.5, -1.5, -2.2, -1.8, -2.0], below(-2), "inconclusive"),
    ([0.9, 1.1, 1.0, 0.95, 1.05], within(0.7, 1.3), "reproduced"),
    ([0.2, 0.3, 0.25, 0.22, 0.28], within(0.7, 1.3), "not reproduced"),
    ([0.5, 1.0, 0.8, 0.6, 0.9], within(0.7, 1.3), "inconclusive"),     # crosses the lower edge
    ([0.6, 0.61], above(0.5), "inconclusive"),                         # two seeds that agree: too few to judge
    ([0.2, 0.9], above(0.5), "inconclusive"),
    ([0.036, 0.082, 0.225, 0.053, 0.564], above(0.02), "reproduced"),  # skewed, every seed on the claim's side
    ([0.7, math.nan, 0.8, 0.75], above(0.5), "reproduced"),            # a seed without a number is left out
    ([0.7, math.nan, 0.8], above(0.5), "inconclusive"),                # ... and two left are too few
    ([0.7], above(0.5), "inconclusive"),                               # one seed never decides
    ([math.nan, math.nan], above(0.5), "inconclusive"),
])
def test_three_valued_verdict(values, criterion, verdict):
    out = summarise(_claims(values, criterion))
    assert out["verdict"] == verdict
    if len([v for v in values if not math.isnan(v)]) == 2:  # what the [min, max] interval alone says, kept apart
        assert out["too_few_seeds"] and out["interval_verdict"] == ("reproduced" if min(values) > 0.5 else
                                                                    "inconclusive")
    assert out["per_seed"] == pytest.approx({str(i): v for i, v in enumerate(values)}, nan_ok=True)
    known = [v for v in values if not math.isnan(v)]
    assert out["mean"] == pytest.approx(sum(known) / len(known) if known else math.nan, nan_ok=True)
    assert out["seeds"] == len(values) and out["seeds_holding"] == sum(criterion.holds(v) for v in values)


def test_judge_measures_each_seed_on_its_own_runs():
    runs = pd.DataFrame({"seed": [3, 3, 4, 4], "width": [8, 16, 8, 16], "test_error": [0.3, 0.2, 0.25, 0.1]})
    seen = []

    def measure(part):
        seen.append(sorted(part["seed"].unique()))
        drop = part.sort_values("width")["test_error"].diff().iloc[-1]
        return [Claim("error falls with width", "paper", "error drop", -drop, above(0.0), {})]
    (claim,) = judge(measure, runs)
    assert seen == [[3], [4]]
    assert claim["per_seed"] == pytest.approx({"3": 0.1, "4": 0.15}) and claim["verdict"] == "inconclusive"
    assert claim["interval_verdict"] == "reproduced" and claim["too_few_seeds"]


SPEC = {"run": {"data": {"name": "digits"}}, "grid": {"model.width": [8, 16]},
        "scales": {"smoke": {"seeds": 2}, "cpu": {}}}


def test_the_framework_adds_the_seed_axis():
    runs = expand("x", SPEC, "smoke", [])
    assert [(r.cfg.model.width, r.cfg.seed) for r in runs] == [(8, 0), (8, 1), (16, 0), (16, 1)]
    assert all(r.axes["seed"] == r.cfg.seed and r.cfg.data.split_seed == 0 for r in runs)  # the split stays fixed
    assert len(expand("x", SPEC, "cpu", [])) == 10                                    # the default: 5 seeds
    based = expand("x", SPEC, "smoke", [], seeds=3, seed_base=7)
    assert sorted({r.cfg.seed for r in based}) == [7, 8, 9]
    # seed 0's run of a config is the run it always was: its id does not depend on how many seeds run
    assert expand("x", SPEC, "smoke", [], seeds=1)[0].run_id == runs[0].run_id
    per_seed_data = expand("x", {**SPEC, "data_per_seed": True}, "smoke", [])
    assert [r.cfg.data.split_seed for r in per_seed_data] == [0, 1, 0, 1]


@pytest.mark.parametrize("spec, overrides, seeds, base, key", [
    ({**SPEC, "grid": {"seed": [0, 1]}}, [], None, 0, "grid.seed"),
    (SPEC, ["seed=3"], None, 0, "seed"),
    (SPEC, [], 0, 0, "--seeds"),
    (SPEC, [], 2, -1, "--seed-base"),
    ({**SPEC, "scales": {"smoke": {"seeds": "two"}}}, [], None, 0, "scales.smoke.seeds"),
])
def test_bad_seeds_are_named(spec, overrides, seeds, base, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        expand("x", spec, "smoke", overrides, seeds=seeds, seed_base=base)


def test_best_rate_refines_the_grid_argmin_between_its_neighbours():
    from framework.results.measures import best_rate
    grid = [0.05, 0.1, 0.2, 0.4]
    assert best_rate(grid, [4.0, 1.0, 4.0, 9.0]) == pytest.approx(0.1)       # symmetric neighbours: the grid point
    lean = best_rate(grid, [2.0, 1.0, 4.0, 9.0])                              # the lower neighbour is the closer
    assert 0.05 * 2 ** 0.5 <= lean < 0.1                                      # within half a grid step, towards it
    assert best_rate(grid, [1.0, 2.0, 4.0, 9.0]) == 0.05                      # at the grid's edge: the edge
    assert best_rate(grid, [math.inf, 1.0, 4.0, 9.0]) == 0.1                  # next to a diverged rate: the point
    assert best_rate(grid, [4.0, 1.0, 1.0, 9.0]) == pytest.approx(0.1 * 2 ** 0.5)  # a tie: between the two
    assert math.isnan(best_rate(grid, [math.inf] * 4))

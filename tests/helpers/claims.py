"""A recipe's claims judged on edited data: the smoke suite of a recipe, trained once per test session, and edits
of its runs view (and of a copy of its store's files) under which a claim must hold, or must fail."""
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

from experiments import RECIPES
from framework.results.runs import Runs, runs_frame
from framework.store import RunStore
from framework.suite import run_suite

SMOKE = {}


def smoke(name, tmp_path_factory, *overrides):
    """(recipe, store, its runs view, the verdict run_suite wrote, root) of the recipe's smoke suite."""
    key = (name, overrides)
    if key not in SMOKE:
        root = tmp_path_factory.mktemp(name)
        recipe = RECIPES.get(name)()
        store = RunStore(root / "runs")
        typed = ["tracking.mode=disabled", *overrides]
        verdict = run_suite(recipe, "smoke", typed, store, root / "reports")
        SMOKE[key] = (recipe, store, runs_frame(recipe.runs("smoke", typed), store), verdict, root)
    return SMOKE[key]


def judged(recipe, frame, store) -> list[dict]:
    """The recipe's claims over `frame` (a runs view, edited or not) reading curves from `store`."""
    view = Runs(frame, store=store, experiment=recipe.name)
    view.attrs = dict(frame.attrs)
    return recipe.claims(view)


def verdict_of(recipe, store, frame, index):
    return judged(recipe, frame, store)[index]["interval_verdict"]  # two smoke seeds: the interval's own side


def rows(frame, **where):
    mask = pd.Series(True, index=frame.index)
    for k, v in where.items():
        mask &= np.isclose(frame[k].astype(float), v) if isinstance(v, float) else frame[k] == v
    assert mask.any(), f"no run matches {where}"
    return frame[mask]


def edit(frame, where: dict, **values):
    """Set columns on every run matching `where` (at every seed: the edited claim then holds or fails at all)."""
    frame = frame.copy()
    mask = frame.index.isin(rows(frame, **where).index)
    for col, v in values.items():
        frame.loc[mask, col] = v
    return frame


def write_metrics(store, name, frame, where: dict, make):
    """Replace metrics.csv of every run matching `where` by make(row) (a DataFrame with a step column)."""
    for _, row in rows(frame, **where).iterrows():
        store.write_frame(name, row["run_id"], "metrics.csv", make(row))


def then(*edits):
    """Edits (each (frame, store) -> (frame, store)) applied one after another."""
    def apply(frame, store):
        for e in edits:
            frame, store = e(frame, store)
        return frame, store
    return apply


def claim_follows_the_data(name, index, hold, fail, tmp_path_factory, tmp_path):
    """Claim `index` of recipe `name`: reproduced on the smoke store edited by `hold`, not reproduced on it
    edited by `fail` (each a function of (frame, store copy) -> (frame, store)), as written on it unedited."""
    recipe, store, frame, verdict, _ = smoke(name, tmp_path_factory)
    doc = sys.modules[type(recipe).__module__].__doc__
    numbered = [line for line in doc.splitlines() if line[:2].strip().rstrip(".").isdigit()]
    assert len(judged(recipe, frame, store)) == len(numbered), "every documented claim is computed, and no other"
    for edit_with, expected, where in ((hold, "reproduced", "held"), (fail, "not reproduced", "failed")):
        copy = RunStore(tmp_path / where)
        shutil.copytree(store.root, copy.root)
        edited, copy = edit_with(frame.copy(), copy)
        claims = judged(recipe, edited, copy)
        assert claims[index]["interval_verdict"] == expected, claims[index]
    again = judged(recipe, frame, store)[index]  # unedited: what the suite itself wrote
    assert again["verdict"] == verdict["claims"][index]["verdict"]
    assert again["per_seed"] == pytest.approx(verdict["claims"][index]["per_seed"], nan_ok=True)

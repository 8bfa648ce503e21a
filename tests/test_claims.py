"""Claims fixed before they are judged: every claim's definition record, and the ledger of their versions."""
import dataclasses
import shutil

import pytest

from experiments import RECIPES
from framework.claims import Definition, bump, read_ledger, status
from framework.recipe import config_dir, ledger_path
from framework.verdict import above
from tests.helpers import cli

RECIPE_NAMES = RECIPES.names()


def test_every_claim_is_in_the_ledger_at_its_current_definition():
    """A definition (quote, statistic, criterion, its source, the recipe's YAML) changed without a new version
    fails here: record it with `repro claims --bump RECIPE --reason "..."`."""
    ledger = read_ledger(ledger_path())
    for name in RECIPE_NAMES:
        for claim, entry in status(RECIPES.get(name)(), ledger).items():
            assert entry["ledger"] == "recorded", f"{claim}: definition {entry['ledger']} without a new version"
            history = ledger[claim]["history"]
            assert [h["version"] for h in history] == list(range(1, entry["version"] + 1))
            assert all(h["reason"].strip() and "\n" not in h["reason"] for h in history)


def test_every_definition_quotes_its_paper_and_says_where_its_threshold_comes_from():
    for name in RECIPE_NAMES:
        for d in RECIPES.get(name)().definitions:
            assert d.quote and d.where and d.statistic and len(d.quote.split()) <= 40, d.key
            assert d.source.split(":")[0] in ("paper", "closed form", "measured noise", "convention"), d.key
    with pytest.raises(ValueError, match="at most 40"):
        Definition("k", "c", " ".join(["word"] * 41), "w", "s", above(0), "paper: x")
    with pytest.raises(ValueError, match="source"):
        Definition("k", "c", "q", "w", "s", above(0), "a hunch")


@pytest.fixture
def configs_copy(tmp_path, monkeypatch):
    copy = tmp_path / "configs"
    shutil.copytree(config_dir(), copy)
    monkeypatch.setenv("REPRO_CONFIGS", str(copy))
    return copy


def test_an_edited_definition_fails_until_it_has_a_new_version(configs_copy, monkeypatch):
    """Edit one claim's criterion in the code and one recipe's YAML (its protocol): the ledger check fails and
    names them; a bump with a reason records the next version of exactly those claims, and the check passes again."""
    versions = {c: e["version"] for c, e in read_ledger(ledger_path()).items()}
    recipe_cls = RECIPES.get("random_labels")
    edited = list(recipe_cls.definitions)
    edited[0] = dataclasses.replace(edited[0], criterion=above(0.5))
    monkeypatch.setattr(recipe_cls, "definitions", type(recipe_cls.definitions)(*edited))
    result = cli("claims")
    assert result.exit_code == 1 and "random_labels/fits_random_labels" in result.output
    ledger = read_ledger(ledger_path())
    changed = [c for c, e in status(recipe_cls(), ledger).items() if e["ledger"] != "recorded"]
    assert changed == ["random_labels/fits_random_labels"]

    yaml_path = configs_copy / "step_size.yaml"  # the protocol: every claim of the recipe changes
    yaml_path.write_text(yaml_path.read_text().replace("n_samples: 200", "n_samples: 300", 1))
    stale = [c for c, e in status(RECIPES.get("step_size")(), ledger).items() if e["ledger"] != "recorded"]
    assert len(stale) == len(RECIPES.get("step_size").definitions)

    assert cli("claims", "--bump", "random_labels/fits_random_labels").exit_code == 2  # no reason: refused
    result = cli("claims", "--bump", "random_labels", "--reason", "criterion tightened to 0.5")
    assert result.exit_code == 0, result.output
    ledger = read_ledger(ledger_path())
    entry = ledger["random_labels/fits_random_labels"]
    assert entry["version"] == versions["random_labels/fits_random_labels"] + 1
    assert entry["history"][-1]["reason"] == "criterion tightened to 0.5"
    # unchanged claims keep their version
    assert ledger["random_labels/test_at_chance"]["version"] == versions["random_labels/test_at_chance"]
    assert cli("claims", "--bump", "step_size", "--reason", "400 samples").exit_code == 0
    assert cli("claims").exit_code == 0
    assert bump([recipe_cls()], "random_labels", "again", ledger) == []     # nothing changed since: no new version

"""A user's own model, dataset and recipe, without editing this package: the example plug-in under
examples/plugin, loaded with --plugin (its entry point does the same once installed), as real processes."""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, cli, repro

PLUGIN = ROOT / "examples" / "plugin" / "repro_example_plugin" / "__init__.py"
QUICK = ["tracking.mode=disabled"]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with the example plug-in package installed (pip, its pyproject, its `repro.plugins` entry
    point): nothing loads it but that entry point. repro and its dependencies (torch, Lightning, W&B) come from
    this environment through a site dir, not reinstalled (minutes of downloads in CI)."""
    home = tmp_path_factory.mktemp("venv") / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home)], check=True)
    site_dir = subprocess.run([str(home / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                               "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    Path(site_dir, "_repro_base.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    source = home.parent / "plugin"  # built from a copy: a build writes build/ and *.egg-info beside its sources
    shutil.copytree(ROOT / "examples" / "plugin", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = subprocess.run([str(home / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--no-index", str(source)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    return home / "bin" / "python"


def in_venv(python, *args, env=None):
    full = {**os.environ, "WANDB_MODE": "offline", "REPRO_PLUGINS": "", **(env or {})}
    return subprocess.run([str(python), "-m", "framework.cli", *args], capture_output=True, text=True, env=full,
                          cwd=ROOT, timeout=600)


def test_the_installed_plugin_recipe_runs_on_its_own_model_and_dataset(venv, tmp_path):
    """Installed, found through its entry point alone: the plug-in's recipe (its YAML beside its module) at 8
    seeds, on its own dataset and model, a real verdict. This environment, without the package, knows none of it."""
    r = in_venv(venv, "run", "rings_separate", "--scale", "smoke", "--seeds", "8", *QUICK, "--runs-dir",
                tmp_path / "runs", "--reports-dir", tmp_path / "reports")
    assert r.returncode == 0, r.stderr[-3000:]
    verdict = json.loads((tmp_path / "reports" / "rings_separate" / "smoke" / "verdict.json").read_text())
    (claim,) = verdict["claims"]
    assert verdict["runs"] == {"done": 16} and claim["verdict"] == "reproduced", claim
    assert claim["ledger"] == "unrecorded" and claim["version"] == 0  # the plug-in keeps no ledger here
    assert "rings_separate" not in repro("list").stdout
    assert "rings_separate" in repro("--plugin", str(PLUGIN), "list").stdout  # unpackaged code: --plugin


def test_a_builtin_recipe_runs_on_the_installed_plugin_model(venv, tmp_path):
    r = in_venv(venv, "run", "double_descent", "--scale", "smoke", "--seeds", "1", "model.name=ring_net", *QUICK,
                "--runs-dir", tmp_path / "runs", "--reports-dir", tmp_path / "reports")
    assert r.returncode == 0, r.stderr[-3000:]
    configs = list((tmp_path / "runs" / "double_descent").glob("*/config.yaml"))
    assert configs and all("name: ring_net" in c.read_text() for c in configs)


@pytest.mark.xdist_group("slurm")
def test_submit_from_the_plugin_venv_trains_on_slurm(venv, slurm, tmp_path):
    """`repro submit` from the venv with the plug-in: the array tasks (that venv's python) build its model and
    dataset from the entry point and train the plug-in recipe's runs, as a local run does."""
    r = in_venv(venv, "submit", "rings_separate", "--scale", "smoke", "--seeds", "1", *QUICK, "--runs-dir",
                tmp_path / "runs", env=slurm)
    assert r.returncode == 0, r.stderr[-3000:]
    job = re.search(r"submitted job (\d+)", r.stdout).group(1)
    deadline = time.time() + 300
    while time.time() < deadline and subprocess.run(["squeue", "-h", "-j", job], capture_output=True,
                                                     text=True).stdout.strip():
        time.sleep(1)
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "rings_separate").glob("*/status.json")]
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "rings_separate" / "_slurm").glob("*/logs/*.out"))
    assert len(statuses) == 2 and all(s["status"] == "done" for s in statuses), logs[-3000:]
    configs = [p.read_text() for p in (tmp_path / "runs" / "rings_separate").glob("*/config.yaml")]
    assert all("name: ring_net" in c and "name: rings" in c for c in configs)


def test_a_recipe_from_its_file_or_module_path(tmp_path):
    """A recipe that is not registered anywhere, in a file of its own with its YAML beside it: `repro plan` and
    `repro run` take path/to/recipe.py and pkg.module:Class; a file with two recipes asks which."""
    pkg = tmp_path / "mine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "wide.py").write_text(RECIPE)
    (pkg / "wide_fits.yaml").write_text(RECIPE_YAML)
    dirs = ["--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]
    planned = repro("plan", str(pkg / "wide.py"), "--scale", "smoke")
    assert planned.returncode == 0 and "wide_fits" in planned.stdout, planned.stderr[-2000:]
    r = repro("run", "mine.wide:WideFits", "--scale", "smoke", *QUICK, *dirs, env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    verdict = json.loads((tmp_path / "reports" / "wide_fits" / "smoke" / "verdict.json").read_text())
    assert verdict["runs"] == {"done": 4} and verdict["claims"][0]["key"] == "wide_fits_better"
    (pkg / "two.py").write_text(RECIPE + "\n\nclass Other(WideFits):\n    name = 'other'\n")
    # one file named two ways (--plugin's absolute path, the recipe's relative one) is one plug-in, imported once
    same = repro("--plugin", str(PLUGIN), "plan", str(PLUGIN.relative_to(ROOT)) + ":RingsSeparate", "--scale", "smoke")
    assert same.returncode == 0 and "rings_separate" in same.stdout, same.stderr[-2000:]
    two = cli("plan", str(pkg / "two.py"))
    assert two.exit_code == 2 and "several recipe classes" in two.stderr and "two.py:Class" in two.stderr, two.output


RECIPE = '''
from framework.claims import Definition, Definitions
from framework.recipe import Recipe
from framework.results.measures import loss_reduction
from framework.verdict import above


class WideFits(Recipe):
    name = "wide_fits"
    title = "A wider MLP fits Gaussian classes better in a few epochs"
    papers = ["a test"]
    definitions = Definitions(
        Definition("wide_fits_better", "64 units reduce the training loss more than 2 units",
                   quote="a wider hidden layer fits faster", paraphrase=True, where="a test",
                   statistic="training loss reduction, 64 - 2 units", criterion=above(0.0),
                   source="convention: any gain"),
    )

    def measure(self, runs):
        narrow, wide = runs.one(**{"model.width": 2}), runs.one(**{"model.width": 64})
        return [self.definitions["wide_fits_better"](loss_reduction(wide) - loss_reduction(narrow), {})]
'''

RECIPE_YAML = """run:
  data: {name: gaussian, n_samples: 200, n_features: 6, n_classes: 3}
  model: {name: mlp, depth: 2}
  trainer: {max_epochs: 3}
grid:
  model.width: [2, 64]
scales:
  smoke: {seeds: 2}
default_scale: smoke
"""


def test_a_plugin_that_clashes_or_breaks_is_one_line_and_exit_2(tmp_path, monkeypatch):
    clash = tmp_path / "clash.py"
    clash.write_text("from framework.models import MODELS\n\n@MODELS.register('mlp')\ndef b(cfg, s, n):\n    pass\n")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module\n")
    for plugin, words in ((clash, "model 'mlp' registered twice"), (broken, "No module named 'no_such_module'")):
        monkeypatch.setenv("REPRO_PLUGINS", "")  # --plugin sets it for this process: restored after the test
        r = cli("--plugin", str(plugin), "list")
        assert r.exit_code == 2 and words in r.stderr and f"plugin {plugin}" in r.stderr, r.output
        assert len(r.stderr.strip().splitlines()) == 1

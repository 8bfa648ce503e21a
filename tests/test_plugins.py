"""A user's own model, dataset and recipe, without editing this package: the example plug-in under
examples/plugin, loaded with --plugin (its entry point does the same once installed), as real processes."""
import json

from tests.helpers import ROOT, cli, repro

PLUGIN = ROOT / "examples" / "plugin" / "repro_example_plugin" / "__init__.py"
QUICK = ["tracking.mode=disabled"]


def test_a_plugin_recipe_runs_on_its_own_model_and_dataset(tmp_path):
    """The plug-in's recipe (its YAML beside its module) at 8 seeds: its own dataset and model, a real verdict."""
    r = repro("--plugin", str(PLUGIN), "run", "rings_separate", "--scale", "smoke", "--seeds", "8", *QUICK,
              "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports"))
    assert r.returncode == 0, r.stderr[-3000:]
    verdict = json.loads((tmp_path / "reports" / "rings_separate" / "smoke" / "verdict.json").read_text())
    (claim,) = verdict["claims"]
    assert verdict["runs"] == {"done": 16} and claim["verdict"] == "reproduced", claim
    assert claim["ledger"] == "unrecorded" and claim["version"] == 0  # the plug-in keeps no ledger here


def test_a_builtin_recipe_runs_on_a_plugin_model(tmp_path):
    r = repro("--plugin", str(PLUGIN), "run", "double_descent", "--scale", "smoke", "--seeds", "1",
              "model.name=ring_net", *QUICK, "--runs-dir", str(tmp_path / "runs"), "--reports-dir",
              str(tmp_path / "reports"))
    assert r.returncode == 0, r.stderr[-3000:]
    configs = list((tmp_path / "runs" / "double_descent").glob("*/config.yaml"))
    assert configs and all("name: ring_net" in c.read_text() for c in configs)


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

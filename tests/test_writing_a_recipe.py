"""docs/writing-a-recipe.md, followed to the letter: its two files written where the page says, the module
registered in experiments/__init__.py as the page says, and the recipe run through the real CLI."""
import json
import os
import re
import shutil
import subprocess
import sys

from tests.helpers import ROOT

PAGE = ROOT / "docs" / "writing-a-recipe.md"
FENCE = re.compile(r"^```\w+ (\S+)\n(.*?)^```$", re.M | re.S)  # ```yaml configs/x.yaml ... ```


def page_files() -> dict[str, str]:
    return dict(FENCE.findall(PAGE.read_text()))


def test_the_page_writes_a_config_and_a_module():
    assert set(page_files()) == {"configs/width_helps.yaml", "experiments/width_helps.py"}


def test_a_recipe_written_from_the_page_runs(tmp_path):
    project = tmp_path / "project"  # the user's checkout: the recipes and configs, with the page's files added
    shutil.copytree(ROOT / "experiments", project / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "configs", project / "configs")
    for path, text in page_files().items():
        (project / path).write_text(text)
    init = project / "experiments" / "__init__.py"
    registered = re.sub(r"(from experiments import [\w, ]+)", r"\1, width_helps", init.read_text(), count=1)
    assert registered != init.read_text()
    init.write_text(registered)

    env = {**os.environ, "PYTHONPATH": f"{project}{os.pathsep}{ROOT}", "REPRO_CONFIGS": str(project / "configs"),
           "WANDB_MODE": "offline"}
    bump = subprocess.run([sys.executable, "-m", "framework.cli", "claims", "--bump", "width_helps", "--reason",
                           "first definition"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert bump.returncode == 0, bump.stderr[-3000:]
    args = [sys.executable, "-m", "framework.cli", "run", "width_helps", "--scale", "smoke", "--runs-dir",
            str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports"), "tracking.mode=disabled"]
    first = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    verdict = json.loads((tmp_path / "reports" / "width_helps" / "smoke" / "verdict.json").read_text())
    (claim,) = verdict["claims"]
    assert verdict["runs"] == {"done": 16} and claim["seeds"] == 8
    assert claim["verdict"] == "reproduced", claim  # 8 seeds: a real verdict, from the page's own claim code
    assert claim["version"] == 1 and claim["ledger"] == "recorded" and claim["quote"]
    statuses = sorted((tmp_path / "runs" / "width_helps").glob("*/status.json"))
    stamps = [p.stat().st_mtime_ns for p in statuses]
    again = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(statuses) == 16 and [p.stat().st_mtime_ns for p in statuses] == stamps  # nothing trained again

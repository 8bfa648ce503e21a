"""Reports: HTML pages checked in headless Chromium, W&B offline files read back into the same DataFrames as
the run store, and figures drawn from the data (the plotted numbers move with the DataFrame)."""
import json
import re
import shutil
import subprocess

import pandas as pd
import pytest

from experiments import RECIPES
from framework.report import local_frames, wandb_frames
from framework.results.runs import Runs
from framework.store import RunStore
from framework.suite import run_suite
from tests.helpers import repro

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000"]


def chromium(*args, profile):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    # one seed (every recipe's smoke suite at two seeds took 165 s here; the seed axis is tested in test_recipes)
    common = ["--scale", "smoke", "--seeds", "1", "--runs-dir", str(root / "runs"), "--reports-dir",
              str(root / "reports")]
    r = repro("run", "all", *common, "tracking.mode=disabled")
    assert r.returncode == 0, r.stderr[-2000:]
    r = repro("report", "all", *common, "tracking.mode=disabled", "--no-wandb-run")
    assert r.returncode == 0, r.stderr[-2000:]
    return root


def test_report_all_writes_the_verdict_table(reports):
    """reports/verdicts.md is the tool's: the command that made it, and one row per claim of every recipe, each
    with the mean and verdict its verdict.json holds."""
    table = (reports / "reports" / "verdicts.md").read_text()
    assert "by `repro report all tracking.mode=disabled --scale smoke --seeds 1`" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "recipe [scale]" not in line]
    expected = 0
    for name in RECIPES.names():
        verdict = json.loads((reports / "reports" / name / "smoke" / "verdict.json").read_text())
        mine = [row for row in rows if row.startswith(f"| {name} [smoke] |")]
        assert len(mine) == len(verdict["claims"]), name
        for row, claim in zip(mine, verdict["claims"]):
            assert f"({claim['seeds_holding']}/{claim['seeds']} seeds" in row and claim["verdict"] in row
            assert f"[v{claim['version']}]" in row and ("censored at" in row) == bool(claim["censored"])
        expected += len(verdict["claims"])
    assert len(rows) == expected


def test_the_readme_results_summary_is_generated(reports, tmp_path):
    """The README's results summary: between its markers, one row per claim with its version, verdict, mean and
    interval and the paper's words, from the verdicts; the rest of the README untouched; no markers, no change."""
    from framework.verdict_table import SUMMARY_END, SUMMARY_START, update_readme
    verdicts = [json.loads((reports / "reports" / name / "smoke" / "verdict.json").read_text())
                for name in RECIPES.names()]
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{SUMMARY_START}\nold rows\n{SUMMARY_END}\n\n## after\n")
    assert update_readme(readme, verdicts, "Generated now")
    text = readme.read_text()
    assert text.startswith("# title\n") and text.endswith("## after\n") and "old rows" not in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    claims = [(v["experiment"], c) for v in verdicts for c in v["claims"]]
    assert len(rows) == len(claims)
    for row, (name, c) in zip(rows, claims):
        assert row.startswith(f"| `{name}/{c['key']}`") and f"| {c['version']} | {c['verdict']}" in row
        assert c["quote"].replace("|", "\\|") in row
    plain = tmp_path / "plain.md"
    plain.write_text("# no markers\n")
    assert not update_readme(plain, verdicts, "Generated now") and plain.read_text() == "# no markers\n"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_reports_load_every_figure_in_chromium(reports, tmp_path):
    pages = [reports / "reports" / name / "smoke" / "index.html" for name in RECIPES.names()]
    for page in pages:
        dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
        body = re.search(r'<body data-figures="(\d+)" data-figures-loaded="(\d+)"', dom)
        assert body, f"{page}: the page's load check did not run"
        total, loaded = map(int, body.groups())
        assert total >= 2 and loaded == total, f"{page}: {loaded} of {total} figures loaded"
        assert 'id="verdict"' in dom and ("reproduced" in dom or "inconclusive" in dom)  # one seed: inconclusive
    index = chromium("--dump-dom", (reports / "reports" / "index.html").as_uri(), profile=tmp_path / "profile").stdout
    table = index[index.index('id="verdict"'):]
    for name in RECIPES.names():
        assert f"<td>{name}</td>" in table, f"{name} missing from the verdict table"
    shot = reports / "reports" / "screenshot.png"
    chromium("--window-size=1400,2000", f"--screenshot={shot}", pages[0].as_uri(), profile=tmp_path / "profile")
    assert shot.stat().st_size > 20_000


def test_report_writes_frames_and_versions(reports):
    out = reports / "reports" / "double_descent" / "smoke"
    summary = pd.read_csv(out / "summary.csv")
    history = pd.read_csv(out / "history.csv")
    assert len(summary) == 4 and {"run_id", "model.width", "seed", "train_error",
                                  "test_error"} <= set(summary.columns)  # 4 widths x 1 seed
    assert set(history["run_id"]) == set(summary["run_id"]) and "train/loss" in history
    verdict = json.loads((out / "verdict.json").read_text())
    assert {"torch", "lightning", "wandb"} <= set(verdict["versions"])
    assert (out / "double_descent.pdf").exists() and (out / "diagnostics.png").exists()


def test_wandb_offline_files_give_the_same_frames_as_the_run_store(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    recipe = RECIPES.get("double_descent")()
    store = RunStore(tmp_path / "runs")
    overrides = ["grid.model.width=[8,32]"]
    run_suite(recipe, "smoke", overrides, store, tmp_path / "reports")
    local_summary, local_history = local_frames(recipe, "smoke", store, overrides)
    wb_summary, wb_history = wandb_frames(recipe, "smoke", store, overrides)
    assert len(wb_summary) == len(local_summary) == 4  # 2 widths x 2 seeds
    keys = ["run_id", "variant", "model.width", "data.label_noise", "optim.lr",
            "train_loss", "train_error", "test_error", "test_loss", "steps", "status"]
    pd.testing.assert_frame_equal(wb_summary[keys].sort_values("run_id").reset_index(drop=True),
                                  local_summary[keys].sort_values("run_id").reset_index(drop=True),
                                  check_dtype=False)
    cols = ["run_id", "step", "epoch", "train/loss", "train/loss_epoch", "train/acc", "lr"]
    a = wb_history[cols].sort_values(["run_id", "step"]).reset_index(drop=True)
    b = local_history[cols].sort_values(["run_id", "step"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, atol=1e-7)


def test_figure_is_drawn_from_the_data(reports, tmp_path):
    recipe = RECIPES.get("double_descent")()
    store = RunStore(reports / "runs")
    summary, _ = local_frames(recipe, "smoke", store, seeds=1)

    def plotted(frame, outdir):
        outdir.mkdir()
        recipe.figures(Runs(frame, store=store, experiment=recipe.name), outdir)
        data = json.loads((outdir / "double_descent.data.json").read_text())
        return {line["label"]: line["y"] for line in data[0]["lines"] if line["label"] in ("train", "test")}
    before = plotted(summary, tmp_path / "a")  # the seeds' mean per width (and their band)
    assert before["test"] == pytest.approx(summary.groupby("model.width")["test_error"].mean().tolist())
    changed = summary.copy()
    changed.loc[changed["model.width"] == changed["model.width"].max(), "test_error"] = 0.777
    after = plotted(changed, tmp_path / "b")
    assert after["test"][-1] == pytest.approx(0.777) and after["test"][:-1] == before["test"][:-1]
    assert after["train"] == before["train"]


def test_the_verdict_run_in_wandb_sits_beside_its_training_runs(tmp_path):
    """`repro report`, W&B offline: one verdict run per suite and scale (a second report resumes the same id, never
    a duplicate), in the training runs' group, with the claims as a table, the figures as images and an artifact
    holding verdict.json and the PDFs; the training runs' records carry the group, variant and seed tag."""
    from framework.wandb_files import offline_runs, read_run
    env = {"WANDB_MODE": "offline", "WANDB_CACHE_DIR": str(tmp_path / "cache"),
           "WANDB_CONFIG_DIR": str(tmp_path / "config")}
    common = ["edge_of_stability", "--scale", "smoke", "--runs-dir", str(tmp_path / "runs"), "--reports-dir",
              str(tmp_path / "reports")]
    assert repro("run", *common, env=env).returncode == 0
    for _ in range(2):
        r = repro("report", *common, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
    folders = sorted((tmp_path / "reports" / "edge_of_stability" / "smoke" / "wandb").glob("offline-run-*"))
    records = [read_run(f) for f in folders]
    assert len(records) == 2 and {rec["id"] for rec in records} == {"verdict-edge_of_stability-smoke"}
    rec = records[-1]
    assert rec["group"] == "edge_of_stability-smoke" and rec["job_type"] == "verdict"
    logged = {k: v for row in rec["history"] for k, v in row.items()}
    assert logged["claims/_type"] == "table-file" and logged["claims/nrows"] == 7  # one row per claim
    assert any(k.endswith("/_type") and v == "image-file" for k, v in logged.items())
    (artifact,) = [a for a in rec["artifacts"] if a["type"] == "verdict"]
    assert artifact["type"] == "verdict" and "verdict.json" in artifact["files"]
    assert any(f.endswith(".pdf") for f in artifact["files"])
    assert rec["summary"]["progressive_sharpening/version"] >= 1
    some_run = next((tmp_path / "runs" / "edge_of_stability").glob("*/wandb"))
    train_rec = read_run(offline_runs(some_run.parent)[0])
    assert train_rec["group"] == "edge_of_stability-smoke" and any(t.startswith("seed:") for t in train_rec["tags"])
    assert train_rec["job_type"] == train_rec["config"]["variant"] and "smoke" in train_rec["tags"]
    # the run's grid point in its config: a dashboard groups by grid.<axis>
    assert "seed" in train_rec["config"]["grid"] and len(train_rec["config"]["grid"]) >= 2
    from framework.diagnostics import PER_LAYER
    assert set(PER_LAYER) <= train_rec["hidden"]
    # repro sync --dry-run: the training runs and the suite's latest verdict run (its older report left out)
    sync = repro("sync", "--dry-run", "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports"),
                 env=env)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    n_train = len(list((tmp_path / "runs" / "edge_of_stability").glob("*/wandb")))
    assert f"training runs: {n_train} to upload" in sync.stdout
    assert "report runs: 1 to upload" in sync.stdout and "1 older reports" in sync.stdout
    assert f"edge_of_stability/smoke: {folders[-1].name}" in sync.stdout
    assert f"would sync {n_train + 1} offline runs" in sync.stdout

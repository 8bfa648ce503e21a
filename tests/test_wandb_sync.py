"""`repro sync` of a run preempted by a real signal and resumed from its checkpoint: one W&B run with the whole
history, read back from the offline records; a forced retrain starts its own W&B run."""
import pytest

from framework.config import config_hash
from framework.preemption import Preempted
from framework.runner import train
from framework.store import RunStore
from framework.wandb_files import STEP, offline_runs, read_run
from tests.helpers import repro
from tests.helpers.signals import SignalAt


@pytest.fixture
def offline(monkeypatch, tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_CACHE_DIR": str(tmp_path / "cache"),
           "WANDB_CONFIG_DIR": str(tmp_path / "config")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def rows(record, key="train/loss"):
    return [(r[STEP], r[key]) for r in record["history"] if key in r]


def test_a_resumed_run_syncs_once_with_its_whole_history(tiny, tmp_path, offline):
    cfg = tiny(tracking__mode="auto", trainer__max_epochs=5, data__n_samples=400)
    run_id = config_hash(cfg)
    train(cfg, RunStore(tmp_path / "ref"))  # uninterrupted
    reference = read_run(offline_runs(RunStore(tmp_path / "ref").run_dir("test", run_id))[0])
    store = RunStore(tmp_path / "runs")
    with pytest.raises(Preempted):
        train(cfg, store, callbacks=[SignalAt(20)])
    train(cfg, store)
    first, second = [read_run(f) for f in offline_runs(store.run_dir("test", run_id))]
    assert first["id"] == second["id"] == run_id
    # each attempt holds only its part: the first stops after step 20's row, the second goes on from there
    assert [s for s, _ in rows(first)][-1] == 20 and [s for s, _ in rows(second)][0] == 21
    dirs = ["--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]
    out = repro("sync", "--dry-run", *dirs, env=offline)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "training runs: 1 to upload (1 resumed, each merged from its 2 attempts' folders" in out.stdout
    assert f"merged: test/{run_id} (2 attempts)" in out.stdout and "would sync 1 offline runs" in out.stdout
    (folder,) = offline_runs(store.run_dir("test", run_id) / "wandb" / "merged")
    merged = read_run(folder)
    assert merged["id"] == run_id and merged["group"] == second["group"] and merged["tags"] == second["tags"]
    assert merged["config"]["seed"] == cfg.seed and merged["config"]["run_id"] == run_id
    # the whole history, each step once, equal to the uninterrupted run's (the resume is exact)
    for key in ("train/loss", "val/loss", "lr"):
        got, want = rows(merged, key), rows(reference, key)
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), key
    assert {"grad_norm/*", "weight_norm/*", "saturation/*"} <= merged["hidden"]
    assert merged["summary"]["test_acc"] == pytest.approx(second["summary"]["test_acc"])
    # a second dry run reuses the merge; after wandb marks it synced, it is left alone
    again = repro("sync", "--dry-run", *dirs, env=offline)
    assert offline_runs(store.run_dir("test", run_id) / "wandb" / "merged") == [folder]
    (folder / f"{folder.name.split('-')[-1]}.wandb.synced").write_text("")
    assert "training runs: 1" in again.stdout
    done = repro("sync", "--dry-run", *dirs, env=offline)
    assert "already synced: 1 (left alone)" in done.stdout and "nothing to sync" in done.stdout


def test_force_starts_a_new_wandb_run(tiny, tmp_path, offline):
    cfg = tiny(tracking__mode="auto")
    run_id = config_hash(cfg)
    store = RunStore(tmp_path / "runs")
    train(cfg, store)
    train(cfg, store, force=True)
    (folder,) = offline_runs(store.run_dir("test", run_id))  # the first attempt's files went with it
    record = read_run(folder)
    assert record["id"] == f"{run_id}-2" and record["config"]["attempt"] == 2 and record["config"]["run_id"] == run_id
    assert store.read_json("test", run_id, "status.json")["attempt"] == 2


def test_reading_back_from_wandb_takes_each_runs_latest_attempt(tiny, tmp_path, offline):
    """What `repro report --source wandb` matches online, on the real offline records of a run trained, then
    forced (two W&B runs, <hash> and <hash>-2) and another run's, and the suite's verdict run: each stored run's
    latest attempt, by the run_id in its config; the verdict run and a run not asked for left out."""
    from types import SimpleNamespace

    from framework.report import current_attempts
    store = RunStore(tmp_path / "runs")
    cfg, other = tiny(tracking__mode="auto"), tiny(tracking__mode="auto", seed=1)
    train(cfg, store)
    first = read_run(offline_runs(store.run_dir("test", config_hash(cfg)))[0])
    train(cfg, store, force=True)
    second = read_run(offline_runs(store.run_dir("test", config_hash(cfg)))[0])
    train(other, store)
    third = read_run(offline_runs(store.run_dir("test", config_hash(other)))[0])
    remotes = [SimpleNamespace(id=r["id"], config=r["config"]) for r in (second, first, third)]
    remotes.append(SimpleNamespace(id="verdict-test-smoke", config={"experiment": "test"}))
    found = current_attempts(remotes, {config_hash(cfg): None})
    assert list(found) == [config_hash(cfg)] and found[config_hash(cfg)].id == f"{config_hash(cfg)}-2"

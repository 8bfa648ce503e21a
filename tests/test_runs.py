"""Determinism, the run store (skip on relaunch), divergence and failure recording, W&B offline read-back."""
import json

import pandas as pd
import pytest

from framework.config import config_hash
from framework.runner import train
from framework.wandb_files import is_complete, offline_runs, read_run


def test_same_config_same_metrics(tiny, tmp_path):
    from framework.store import RunStore
    cfg = tiny(model__dropout=0.2, trainer__max_epochs=3)
    a = train(cfg, RunStore(tmp_path / "a"))
    b = train(cfg, RunStore(tmp_path / "b"))
    for key in ("train_loss", "val_loss", "test_acc", "grad_norm_first", "initial_train_loss"):
        assert a[key] == b[key], key
    ma = pd.read_csv(tmp_path / "a" / "test" / a["run_id"] / "metrics.csv")
    mb = pd.read_csv(tmp_path / "b" / "test" / b["run_id"] / "metrics.csv")
    pd.testing.assert_frame_equal(ma, mb)
    c = train(tiny(model__dropout=0.2, trainer__max_epochs=3, seed=1), RunStore(tmp_path / "c"))
    assert c["train_loss"] != a["train_loss"], "another seed must give another run"


def test_store_layout_and_skip_on_relaunch(tiny, store):
    cfg = tiny()
    first = train(cfg, store)
    run_dir = store.run_dir("test", config_hash(cfg))
    for name in ("config.yaml", "metrics.csv", "diagnostics.csv", "summary.json", "status.json"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert {"step", "train/loss", "val/loss", "val/acc"} <= set(metrics.columns)
    diag = pd.read_csv(run_dir / "diagnostics.csv")
    assert set(diag["layer"]) == {0, 1, 2} and (diag["grad_norm"] > 0).all()
    # the last epoch's training-mode loss, as logged, beside the eval-mode train_loss
    epochs = metrics.dropna(subset=["train/loss_epoch"]).sort_values("step")
    assert first["train_loss_last_epoch"] == pytest.approx(epochs["train/loss_epoch"].iloc[-1])

    stamp = (run_dir / "summary.json").stat().st_mtime_ns
    again = train(cfg, store)
    assert again.get("skipped") is True and again["train_loss"] == first["train_loss"]
    assert (run_dir / "summary.json").stat().st_mtime_ns == stamp
    forced = train(cfg, store, force=True)
    assert "skipped" not in forced and (run_dir / "summary.json").stat().st_mtime_ns != stamp


def test_diverging_run_is_recorded_and_suite_goes_on(tiny, store):
    bad = tiny(optim__lr=1e12, trainer__max_epochs=5)
    result = train(bad, store)
    assert result["status"] == "diverged" and result["diverged_step"] is not None
    assert result["steps"] < 5 * 6, "a diverged run stops instead of training on NaN"
    assert store.status("test", config_hash(bad)) == "diverged"
    assert store.is_finished("test", config_hash(bad)), "diverged is final: a relaunch must not retry it"
    assert train(tiny(), store)["status"] == "done"


def test_failed_run_is_recorded(tiny, store):
    cfg = tiny(trainer__accelerator="tpu")  # no such device here: Lightning raises inside the run
    result = train(cfg, store)
    assert result["status"] == "failed" and ("tpu" in result["error"].lower() or "xla" in result["error"].lower())
    status = store.read_json("test", config_hash(cfg), "status.json")
    assert status["status"] == "failed" and status["error"]
    assert not store.is_finished("test", config_hash(cfg)), "a failed run is retried on relaunch"


def test_wandb_offline_run_files_hold_metrics_and_config(tiny, store, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    cfg = tiny(tracking__mode="auto", variant="depth=2", tracking__tags=["unit"])
    summary = train(cfg, store)
    run_id = config_hash(cfg)
    (folder,) = offline_runs(store.run_dir("test", run_id))
    run = read_run(folder)
    assert run["id"] == run_id
    # a dashboard's handles: the group (experiment, scale when there is one), the variant, the seed as a tag; the
    # per-layer keys logged but hidden from the default panels
    assert run["group"] == "test" and run["job_type"] == "depth=2" and {"test", "seed:0", "unit"} <= set(run["tags"])
    assert {"grad_norm/*", "weight_norm/*", "saturation/*"} <= run["hidden"]
    assert run["config"]["model"]["depth"] == 2 and run["config"]["run_id"] == run_id
    assert run["config"]["data"]["name"] == "gaussian"
    losses = [row["train/loss"] for row in run["history"] if "train/loss" in row]
    stored = store.read_frame("test", run_id, "metrics.csv")["train/loss"].dropna().tolist()
    assert losses == pytest.approx(stored)
    assert any(k.startswith("grad_norm/layer_") for row in run["history"] for k in row)
    assert run["summary"]["train_loss"] == pytest.approx(summary["train_loss"])
    assert run["summary"]["status"] == "done"
    # whole when the run is stored (tracking.finish_run waits for it); a file cut short before its exit record is not
    (log,) = folder.glob("*.wandb")
    assert is_complete(log)
    cut = tmp_path / "cut.wandb"
    cut.write_bytes(log.read_bytes()[:len(log.read_bytes()) // 2])
    assert not is_complete(cut)

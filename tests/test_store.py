"""A store that never holds wrong data: run locks between real processes, a changed default, fresh attempts,
damaged files, strict JSON and file modes."""
import dataclasses
import json
import multiprocessing as mp
import os
import signal
import socket
import time

import pandas as pd
import pytest

from framework.config import DataConfig, config_hash
from framework.files import StoreError, atomic_write
from framework.locks import RunBusy
from framework.overrides import apply
from framework.registry import UserError
from framework.runner import train
from framework.store import RunStore
from tests.helpers import repro


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"bare {name} in JSON")
    return json.loads(text, parse_constant=refuse)


# ---- two processes, one store ------------------------------------------------------------------------------

def test_two_concurrent_suites_train_each_run_once(tmp_path):
    """Acceptance: two `repro run` of one suite at once on one store end with every run finished, each trained
    exactly once, and each run's metrics equal to a single process's."""
    import subprocess
    import sys

    from tests.helpers import ROOT
    # one seed, one run at a time: the store's locks are the subject (a process that finds half a fused group
    # locked trains the rest as another group, whose float32 rounding differs from a single process's group)
    args = [sys.executable, "-m", "framework.cli", "run", "vanishing_gradients", "--scale", "smoke", "--seeds", "1",
            "--fuse", "off", "tracking.mode=disabled", "--runs-dir", str(tmp_path / "shared"), "--reports-dir"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    procs = [subprocess.Popen([*args, str(tmp_path / f"reports{i}")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    single = repro("run", "vanishing_gradients", "--scale", "smoke", "--seeds", "1", "--fuse", "off",
                   "tracking.mode=disabled", "--runs-dir",
                   str(tmp_path / "single"), "--reports-dir", str(tmp_path / "reports-single"))
    assert single.returncode == 0, single.stderr[-2000:]
    shared, alone = RunStore(tmp_path / "shared"), RunStore(tmp_path / "single")
    run_ids = alone.run_ids("vanishing_gradients")
    assert len(run_ids) == 6 and shared.run_ids("vanishing_gradients") == run_ids
    trainers = set()
    for run_id in run_ids:
        status = shared.status_record("vanishing_gradients", run_id)
        assert status["status"] in ("done", "diverged") and status["attempt"] == 1, (run_id, status)
        trainers.add(status["pid"])
        assert not (shared.run_dir("vanishing_gradients", run_id) / "lock").exists()
        pd.testing.assert_frame_equal(shared.read_frame("vanishing_gradients", run_id, "metrics.csv"),
                                      alone.read_frame("vanishing_gradients", run_id, "metrics.csv"))
    assert trainers <= {p.pid for p in procs}
    verdicts = [_strict((tmp_path / f"reports{i}" / "vanishing_gradients" / "smoke" / "verdict.json").read_text())
                for i in range(2)]
    assert verdicts[0]["claims"] == verdicts[1]["claims"]


def _hold_lock(root, ready, release):
    store = RunStore(root)
    lock = store.lock("test", "abc")
    ready.set()
    release.wait(60)
    lock.release()


def test_lock_has_one_owner_and_a_dead_owner_is_taken_over(tmp_path):
    store = RunStore(tmp_path)
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    owner = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    owner.start()
    assert ready.wait(60)
    with pytest.raises(RunBusy) as busy:
        store.lock("test", "abc")
    assert busy.value.owner["pid"] == owner.pid and busy.value.owner["host"] == socket.gethostname()
    assert store.owner("test", "abc")["pid"] == owner.pid
    os.kill(owner.pid, signal.SIGKILL)  # dies holding the lock: same host, pid gone -> stale
    owner.join()
    lock = store.lock("test", "abc")
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock.path.exists()
    # after a clean release the lock is free at once
    store.lock("test", "abc").release()


def test_a_lock_from_another_host_is_stale_only_when_its_heartbeat_stops(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    path = store.run_dir("test", "abc") / "lock"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "node-17", "pid": 1, "slurm_job": "42_3", "token": "x"}))
    with pytest.raises(RunBusy, match="SLURM job 42_3"):
        store.lock("test", "abc")
    monkeypatch.setenv("REPRO_LOCK_STALE_S", "30")
    old = time.time() - 31
    os.utime(path, (old, old))
    assert store.owner("test", "abc") is None
    lock = store.lock("test", "abc")
    assert lock.owned() and not list(path.parent.glob("lock.stale-*"))
    lock.release()


def test_the_heartbeat_keeps_a_lock_fresh_and_notices_a_takeover(tmp_path, monkeypatch):
    from framework.locks import RunLock
    monkeypatch.setattr(RunLock, "HEARTBEAT_S", 0.1)
    store = RunStore(tmp_path)
    lock = store.lock("test", "abc")
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    time.sleep(0.5)
    assert time.time() - lock.path.stat().st_mtime < 5, "the heartbeat touches the lock"
    lock.path.write_text(json.dumps({"host": "other", "pid": 2, "token": "someone else"}))
    time.sleep(0.5)
    assert lock.lost, "an owner whose lock was taken over knows it (and writes nothing)"
    lock.release()
    assert lock.path.exists(), "releasing never removes another owner's lock"


def test_train_leaves_a_run_another_process_owns(tiny, store):
    cfg = tiny()
    holder = store.lock("test", config_hash(cfg))
    # this process is the holder, but a lock is per owner record: a second RunLock is another owner
    with pytest.raises(RunBusy):
        train(cfg, store)
    assert store.status("test", config_hash(cfg)) == "pending"
    holder.release()
    assert train(cfg, store)["status"] == "done"


# ---- a changed default --------------------------------------------------------------------------------------

def change_default(monkeypatch, cls, name: str, value) -> None:
    """Changes a config dataclass's default as an edit of framework/config.py would."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    defaults = list(cls.__init__.__defaults__)
    defaults[names.index(name) - (len(names) - len(defaults))] = value
    monkeypatch.setattr(cls.__init__, "__defaults__", tuple(defaults))
    monkeypatch.setattr(cls, name, value)
    monkeypatch.setattr(cls.__dataclass_fields__[name], "default", value)


def test_a_changed_default_is_never_a_silent_cache_hit(tiny, store, monkeypatch):
    cfg = tiny()
    run_id = config_hash(cfg)
    first = train(cfg, store)
    assert first["status"] == "done"
    change_default(monkeypatch, DataConfig, "val_fraction", 0.30)
    today = tiny()
    assert today.data.val_fraction == 0.30 and config_hash(today) == run_id, \
        "a default is not in the hash: the same run folder"
    with pytest.raises(UserError) as e:
        train(today, store)
    message = str(e.value)
    for text in (run_id, "data.val_fraction", "0.15", "0.3", "--force", "data.val_fraction=0.15"):
        assert text in message, text
    assert "\n" not in message
    redone = train(today, store, force=True)
    assert redone["status"] == "done" and redone["n_train"] != first["n_train"]
    assert train(today, store)["skipped"] is True
    pinned = apply(today, {"data.val_fraction": 0.15})
    assert config_hash(pinned) != run_id


def test_a_new_option_keeps_old_runs(tiny, store):
    """A stored config without a key (an option added since) is reused: the key is at its default."""
    cfg = tiny()
    train(cfg, store)
    path = store.run_dir("test", config_hash(cfg)) / "config.yaml"
    import yaml
    stored = yaml.safe_load(path.read_text())
    del stored["trainer"]["threads"], stored["data"]["crop_padding"]
    path.write_text(yaml.safe_dump(stored))
    assert train(cfg, store)["skipped"] is True


# ---- attempts ---------------------------------------------------------------------------------------------

def test_force_and_retry_never_merge_an_earlier_attempts_rows(tiny, store, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = tiny(tracking__mode="offline")
    run_id = config_hash(cfg)
    first = train(cfg, store)
    clean = store.read_frame("test", run_id, "metrics.csv")
    # an earlier attempt's leftovers: its Lightning rows (one at a step this attempt never reaches, with a
    # column it never logs) and its W&B files
    lightning = store.lightning_dir("test", run_id)
    lightning.mkdir(parents=True, exist_ok=True)
    (lightning / "metrics.csv").write_text("step,epoch,train/loss,old/metric\n9999,99,5.0,1.0\n")
    (lightning / "metrics.part-0.csv").write_text("step,epoch,train/loss\n3,0,7.0\n")
    forced = train(cfg, store, force=True)
    metrics = store.read_frame("test", run_id, "metrics.csv")
    pd.testing.assert_frame_equal(metrics, clean)
    assert len(list(store.run_dir("test", run_id).glob("wandb/offline-run-*"))) == 1
    assert store.status_record("test", run_id)["attempt"] == 2 and forced["train_loss"] == first["train_loss"]
    # a failed attempt's rows are not continued by the retry either
    store.set_status("test", run_id, "failed", error="boom", attempt=2)
    (lightning / "metrics.csv").write_text("step,epoch,train/loss,old/metric\n9999,99,5.0,1.0\n")
    train(cfg, store)
    pd.testing.assert_frame_equal(store.read_frame("test", run_id, "metrics.csv"), clean)
    assert store.status_record("test", run_id)["attempt"] == 3


# ---- damaged files ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, damage, command", [
    ("status.json", '{"status": "do', "run"),
    # each case trains a suite through the CLI (about 50 s): these two run with -m slow (CI time)
    pytest.param("summary.json", '{"train_loss": 0.', "run", marks=pytest.mark.slow),
    pytest.param("metrics.csv", 'step,train/loss\n"3,0.5\n', "report", marks=pytest.mark.slow)])
def test_a_damaged_store_file_is_named(name, damage, command, tmp_path):
    runs = tmp_path / "runs"
    args = ["double_descent", "--scale", "smoke", "--seeds", "1", "grid.model.width=[4]", "tracking.mode=disabled",
            "--runs-dir", str(runs), "--reports-dir", str(tmp_path / "reports")]
    assert repro("run", *args).returncode == 0
    (run_dir,) = (runs / "double_descent").glob("[0-9a-f]*")
    (run_dir / name).write_text(damage)
    r = repro(command, *args, *(["--no-wandb-run"] if command == "report" else []))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert str(run_dir / name) in r.stderr and "damaged" in r.stderr and "--force" in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1
    forced = repro("run", *args, "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    json.loads((run_dir / "status.json").read_text())


def test_a_half_written_checkpoint_is_set_aside_and_the_run_restarts(tiny, tmp_path, capsys):
    cfg = tiny(trainer__max_epochs=3)
    reference = train(cfg, RunStore(tmp_path / "ref"))
    store = RunStore(tmp_path / "run")
    run_id = config_hash(cfg)
    checkpoint = store.checkpoint("test", run_id)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"PK\x03\x04 half a zip")
    store.set_status("test", run_id, "pending", preempted=True, checkpoint=str(checkpoint))
    summary = train(cfg, store)
    assert summary["status"] == "done" and summary["train_loss"] == reference["train_loss"]
    assert summary["steps"] == reference["steps"]
    aside = list(checkpoint.parent.glob("checkpoint.ckpt.damaged-*"))
    assert len(aside) == 1 and not checkpoint.exists()
    assert "is damaged" in capsys.readouterr().err


def test_summary_and_status_are_strict_json_even_when_a_run_diverges(tiny, store):
    cfg = tiny(optim__lr=1e12, trainer__max_epochs=3)
    result = train(cfg, store)
    assert result["status"] == "diverged"
    run_dir = store.run_dir("test", config_hash(cfg))
    summary = _strict((run_dir / "summary.json").read_text())
    assert summary["train_loss"] is None and summary["diverged_step"] is not None
    _strict((run_dir / "status.json").read_text())


def test_store_files_follow_the_umask(tiny, store):
    old = os.umask(0o002)
    try:
        cfg = tiny()
        train(cfg, store)
        run_dir = store.run_dir("test", config_hash(cfg))
        for name in ("status.json", "summary.json", "metrics.csv", "config.yaml"):
            assert (run_dir / name).stat().st_mode & 0o777 == 0o664, name
        os.umask(0o022)
        atomic_write(run_dir / "x.json", "{}")
        assert (run_dir / "x.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_a_truncated_status_is_an_error_not_pending(store):
    path = store.run_dir("test", "abc") / "status.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"status": "do')
    with pytest.raises(StoreError, match="status.json is damaged"):
        store.is_finished("test", "abc")


def test_a_checkpoint_is_not_resumed_under_a_changed_default(tiny, store, monkeypatch):
    import pytorch_lightning as pl

    from framework.preemption import Preempted

    class SignalAt(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGUSR1)

    cfg = tiny(trainer__max_epochs=3)
    with pytest.raises(Preempted):
        train(cfg, store, callbacks=[SignalAt()])
    assert store.checkpoint("test", config_hash(cfg)).exists()
    change_default(monkeypatch, DataConfig, "val_fraction", 0.30)
    with pytest.raises(UserError, match="data.val_fraction: stored 0.15, today 0.3"):
        train(tiny(trainer__max_epochs=3), store)
    assert store.status("test", config_hash(cfg)) == "pending", "nothing was touched"

"""Signals and exit codes with real signals: USR1, SIGTERM and Ctrl-C wherever they land (data being built, in
fit, during the final evaluation, between packed runs), and failed runs that make the command exit 1.

A signal "at the wrong moment" is sent by the process to itself from inside the framework function that runs
at that moment (patched in the child process only), so it lands exactly there."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from framework.store import RunStore
from tests.helpers import ROOT, repro

SUITE = ["double_descent", "--scale", "smoke", "grid.model.width=[4,8]", "tracking.mode=disabled", "--seeds", "1"]
OVERRIDES = SUITE[3:-2]  # the signals are the subject here, not seeds: one seed per grid point


def repro_patched(patch: str, *args, tmp_path, timeout=600):
    """`repro ARGS` in a child process that first runs `patch` (Python) to place a signal."""
    code = "import os, signal, sys\n" + patch + "\nfrom framework.cli import app\napp()\n"
    return subprocess.run([sys.executable, "-c", code, *args, "--runs-dir", str(tmp_path / "runs"),
                           "--reports-dir", str(tmp_path / "reports")], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"}, timeout=timeout)


def statuses(tmp_path, *extra):
    from experiments import RECIPES
    experiment = "double_descent"
    store = RunStore(tmp_path / "runs")
    runs = RECIPES.get(experiment)().runs("smoke", [*OVERRIDES, *extra], seeds=1)
    return [store.status_record(experiment, r.run_id) for r in runs], store, runs


def one_line_stop(r, code):
    assert r.returncode == code, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("stopped:"), r.stderr


AT_DATA = """
import framework.runner as runner
build = runner.build_splits
def build_splits(cfg):
    os.kill(os.getpid(), signal.{sig})
    return build(cfg)
runner.build_splits = build_splits
"""

BETWEEN_RUNS = """
import framework.runner as runner
train, done = runner.train_group, []
def once(*args, **kwargs):
    out = train(*args, **kwargs)
    done.append(1)
    if len(done) == 1:
        os.kill(os.getpid(), signal.SIGUSR1)
    return out
runner.train_group = once
"""

AT_FINAL_EVALUATION = """
import framework.module as module
evaluate, calls = module.ReproModule.evaluate, []
def evaluate_then_signal(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the first run's final evaluation (the first call is its initial loss)
        os.kill(os.getpid(), signal.SIGUSR1)
    return evaluate(self, *args, **kwargs)
module.ReproModule.evaluate = evaluate_then_signal
"""

IN_FIT = """
import framework.module as module
step = module.ReproModule.training_step
def step_then_signal(self, batch, batch_idx):
    if self.global_step == 5 and not getattr(self, "_signalled", False):
        self._signalled = True
        os.kill(os.getpid(), signal.SIGUSR1)
    return step(self, batch, batch_idx)
module.ReproModule.training_step = step_then_signal
"""


def test_usr1_while_data_is_built_leaves_the_run_pending(tmp_path):
    r = repro_patched(AT_DATA.format(sig="SIGUSR1"), "run", *SUITE, tmp_path=tmp_path)
    one_line_stop(r, 128 + signal.SIGUSR1)
    (first, second), store, runs = statuses(tmp_path)
    assert first["status"] == "pending" and first["stopped"] == "preempted" and first["checkpoint"] is None
    assert second == {}, "the next run is never started"


def test_usr1_between_runs_stops_before_the_next_run(tmp_path):
    r = repro_patched(BETWEEN_RUNS, "run", *SUITE, tmp_path=tmp_path)
    one_line_stop(r, 128 + signal.SIGUSR1)
    (first, second), _, _ = statuses(tmp_path)
    assert first["status"] == "done" and second == {}


def test_usr1_during_the_final_evaluation_finishes_the_run_first(tmp_path):
    r = repro_patched(AT_FINAL_EVALUATION, "run", *SUITE, tmp_path=tmp_path)
    one_line_stop(r, 128 + signal.SIGUSR1)
    (first, second), store, runs = statuses(tmp_path)
    assert first["status"] == "done" and store.summary("double_descent", runs[0].run_id)["test_error"] >= 0
    assert second == {}


def test_usr1_in_fit_checkpoints_and_the_relaunch_resumes_exactly(tmp_path):
    r = repro_patched(IN_FIT, "run", *SUITE, tmp_path=tmp_path)
    one_line_stop(r, 128 + signal.SIGUSR1)
    (first, second), store, runs = statuses(tmp_path)
    assert first["status"] == "pending" and first["checkpoint"].endswith("checkpoint.ckpt")
    assert store.checkpoint("double_descent", runs[0].run_id).exists() and second == {}
    again = repro("run", *SUITE, "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports"))
    assert again.returncode == 0, again.stderr[-2000:]
    ref = repro("run", *SUITE, "--runs-dir", str(tmp_path / "ref"), "--reports-dir", str(tmp_path / "ref-reports"))
    assert ref.returncode == 0
    reference = RunStore(tmp_path / "ref")
    for run in runs:
        assert store.status("double_descent", run.run_id) == "done"
        pd.testing.assert_frame_equal(store.read_frame("double_descent", run.run_id, "metrics.csv"),
                                      reference.read_frame("double_descent", run.run_id, "metrics.csv"))
    assert store.status_record("double_descent", runs[0].run_id)["resumed_from"].endswith("checkpoint.ckpt")


def test_usr1_between_packed_runs_of_an_array_task(tmp_path):
    """The worker (an array task's pack of runs) owns the signal between runs too."""
    from experiments import RECIPES
    from framework.config import to_dict
    runs = RECIPES.get("double_descent")().runs("smoke", OVERRIDES, seeds=1)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"experiment": "double_descent", "scale": "smoke",
                                    "runs_dir": str(tmp_path / "runs"), "tasks": [[to_dict(r.cfg) for r in runs]]}))
    code = "import os, signal, sys\n" + BETWEEN_RUNS + "\nfrom framework.cli import app\napp()\n"
    r = subprocess.run([sys.executable, "-c", code, "worker", str(manifest), "--task", "0"], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 128 + signal.SIGUSR1, r.stdout + r.stderr
    store = RunStore(tmp_path / "runs")
    assert store.status("double_descent", runs[0].run_id) == "done"
    assert store.status_record("double_descent", runs[1].run_id) == {}


@pytest.mark.parametrize("sig, reason", [(signal.SIGTERM, "terminated"),
                                         pytest.param(signal.SIGINT, "interrupted", marks=pytest.mark.slow)])  # CI time
def test_term_and_ctrl_c_while_data_is_built_record_failed(sig, reason, tmp_path):
    r = repro_patched(AT_DATA.format(sig=sig.name), "run", *SUITE, tmp_path=tmp_path)
    one_line_stop(r, 128 + sig)
    (first, second), _, _ = statuses(tmp_path)
    assert first["status"] == "failed" and first["error"] == reason and second == {}


@pytest.mark.parametrize("sig, reason", [(signal.SIGTERM, "terminated"), (signal.SIGINT, "interrupted")])
def test_term_and_ctrl_c_in_fit_checkpoint_and_exit_non_zero(sig, reason, tmp_path):
    """Sent from outside, as SLURM (scancel, the time limit) or a terminal would."""
    args = ["double_descent", "--scale", "smoke", "grid.model.width=[64]", "trainer.max_epochs=1500",
            "tracking.mode=disabled", "trainer.log_every_n_steps=5"]
    proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "run", *args, "--seeds", "1", "--runs-dir",
                             str(tmp_path / "runs"),
                             "--reports-dir", str(tmp_path / "reports")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    from experiments import RECIPES
    (run,) = RECIPES.get("double_descent")().runs("smoke", args[3:], seeds=1)
    store = RunStore(tmp_path / "runs")
    metrics = store.lightning_dir("double_descent", run.run_id) / "metrics.csv"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err and "stopped:" in err
    status = store.status_record("double_descent", run.run_id)
    assert status["status"] == "pending" and status["stopped"] == reason and status["preempted"] is False
    assert store.checkpoint("double_descent", run.run_id).exists()


def test_failed_runs_are_printed_and_the_command_exits_1(tmp_path):
    r = repro("run", *SUITE, "trainer.accelerator=tpu", "--runs-dir", str(tmp_path / "runs"), "--reports-dir",
              str(tmp_path / "reports"))
    assert r.returncode == 1, r.stderr[-3000:]
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("failed: double_descent/")]
    assert len(failed) == 2 and all("tpu" in ln.lower() or "xla" in ln.lower() for ln in failed), r.stderr
    assert "2 runs failed" in r.stderr
    (first, second), _, _ = statuses(tmp_path, "trainer.accelerator=tpu")
    assert first["status"] == second["status"] == "failed"


@pytest.mark.parametrize("step", [15, 16])  # the last batch of an epoch (the stop waits a batch), the first
def test_sigterm_on_any_batch_checkpoints_and_resumes_exactly(step, tiny, tmp_path):
    """Lightning's own SIGTERM handler would end fit with SystemExit(0) at the end of an epoch's last batch."""
    import pytorch_lightning as pl

    from framework.config import config_hash
    from framework.preemption import Terminated
    from framework.runner import train

    class TermAt(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == step:
                os.kill(os.getpid(), signal.SIGTERM)

    cfg = tiny(trainer__max_epochs=5, data__n_samples=400)
    reference = train(cfg, RunStore(tmp_path / "ref"))
    store = RunStore(tmp_path / "run")
    with pytest.raises(Terminated):
        train(cfg, store, callbacks=[TermAt()])
    status = store.status_record("test", config_hash(cfg))
    assert status["status"] == "pending" and status["stopped"] == "terminated"
    resumed = train(cfg, store)
    for key in ("train_loss", "val_loss", "test_acc", "steps"):
        assert resumed[key] == reference[key], key
    pd.testing.assert_frame_equal(store.read_frame("test", resumed["run_id"], "metrics.csv"),
                                  RunStore(tmp_path / "ref").read_frame("test", resumed["run_id"], "metrics.csv"))


@pytest.mark.slow
def test_run_all_side_by_side_forwards_sigterm_and_resumes(tmp_path):
    """`repro run all` with two recipes at once: a SIGTERM to the command reaches the suites training; they
    checkpoint, the command exits 143, and the same command then finishes every recipe with the verdicts of an
    uninterrupted run (each child is an ordinary `repro run NAME`)."""
    args = [sys.executable, "-m", "framework.cli", "run", "all", "--scale", "smoke", "--workers", "2",
            "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports"), "tracking.mode=disabled"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = tmp_path / "reports" / "logs"
    deadline = time.time() + 300
    while time.time() < deadline:
        if logs.exists() and any(p.stat().st_size > 0 for p in logs.glob("*.log")):
            break
        time.sleep(0.5)
    time.sleep(4)  # into the first suites' training
    proc.send_signal(signal.SIGTERM)
    out, errs = proc.communicate(timeout=300)
    assert proc.returncode == 143, errs[-2000:]
    assert "stopped:" in errs and "finished" in out
    store = RunStore(tmp_path / "runs")
    stopped = [p for p in logs.glob("*.log") if "stopped:" in p.read_text()]
    assert stopped, [p.read_text()[-500:] for p in logs.glob("*.log")]
    r = repro("run", "all", *args[5:])
    assert r.returncode == 0, r.stderr[-2000:]
    for exp in ("vanishing_gradients", "double_descent"):
        verdict = json.loads((tmp_path / "reports" / exp / "smoke" / "verdict.json").read_text())
        assert verdict["claims"] and set(verdict["runs"]) <= {"done", "diverged"}
        assert all(store.status(exp, run_id) in ("done", "diverged") for run_id in
                   pd.read_csv(tmp_path / "reports" / exp / "smoke" / "runs.csv")["run_id"])

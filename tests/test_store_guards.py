"""The store never lies, part two: each test is a way a real process, signal or file once got a silently wrong
number or lost work (issue 26's points), tried again as a user or a failing machine would."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from framework.config import config_hash
from framework.store import RunStore
from tests.helpers import ROOT, repro

DD = ["double_descent", "--scale", "smoke", "grid.model.width=[4]", "tracking.mode=disabled", "--seeds", "1"]


def dirs(tmp_path):
    return ["--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]


@pytest.fixture(scope="module")
def dd_trained(tmp_path_factory):
    """The double-descent smoke suite at one seed, trained once by the real CLI; each test takes a copy."""
    root = tmp_path_factory.mktemp("dd")
    r = repro("run", *DD[:3], *DD[4:], *dirs(root))
    assert r.returncode == 0, r.stderr[-2000:]
    return root


@pytest.fixture
def dd_copy(dd_trained, tmp_path):
    shutil.copytree(dd_trained / "runs", tmp_path / "runs")
    return tmp_path


DD_ALL = [*DD[:3], *DD[4:]]


def usr1_at(hook: str, step: int):
    """A Lightning callback that sends this process a real SIGUSR1, once, from `hook` at global step `step`."""
    import pytorch_lightning as pl

    def send(self, trainer, *args):
        if trainer.global_step == step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)
    return type("SignalAt", (pl.Callback,), {"sent": False, hook: send})()  # the suite dd_trained ran: the smoke grid, one seed


def one_line_error(r, *words):
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


# ---- 1. a typed experiment never leaves the store ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "ABSOLUTE"])
def test_a_typed_experiment_cannot_write_outside_the_store(name, tmp_path):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    target = str(tmp_path / "outside") if name == "ABSOLUTE" else name
    env = {"PYTHONPATH": str(ROOT)}  # this tree's framework, from another working directory
    r = repro("run", *DD, f"experiment={target}", *dirs(work), cwd=work, env=env)
    one_line_error(r, "experiment")
    assert not list(tmp_path.rglob("config.yaml")), "nothing written, inside the store or outside it"
    s = repro("status", *DD[:-2], f"experiment={target}", "--runs-dir", str(work / "runs"), cwd=work, env=env)
    one_line_error(s, "experiment")


def test_the_store_refuses_a_path_as_a_folder_name(tmp_path):
    from framework.files import StoreError
    store = RunStore(tmp_path / "runs")
    for exp, run_id in [("..", "abc"), ("a/b", "abc"), ("exp", "../abc"), ("", "abc")]:
        with pytest.raises(StoreError):
            store.run_dir(exp, run_id)


# ---- 2. a stop signal in full-batch training (an epoch of one batch) ----------------------------------------------

@pytest.mark.parametrize("members", [1, 2])
def test_a_signal_stops_full_batch_training_and_the_resume_is_exact(members, tiny, tmp_path):
    """Every batch is an epoch's last here: the stop used to wait for a batch that never came."""
    from framework.preemption import Preempted
    from framework.runner import train_group

    cfgs = [tiny(seed=s, data__batch_size=1000, trainer__max_epochs=40, trainer__log_every_n_steps=1)
            for s in range(members)]
    reference = RunStore(tmp_path / "ref")
    expected = train_group(cfgs, reference)
    store = RunStore(tmp_path / "run")
    with pytest.raises(Preempted):
        train_group(cfgs, store, callbacks=(usr1_at("on_train_batch_start", 7),))
    for cfg in cfgs:
        status = store.status_record("test", config_hash(cfg))
        assert status["status"] == "pending" and status["checkpoint"], status
    resumed = train_group(cfgs, store)
    for cfg, a, b in zip(cfgs, expected, resumed):
        assert b["status"] == "done" and b["steps"] == a["steps"] == 40
        assert b["train_loss"] == a["train_loss"]
        assert b["fused_members"] == members and b["compute"].startswith("cpu ")  # how it trained, per run
        pd.testing.assert_frame_equal(store.read_frame("test", b["run_id"], "metrics.csv"),
                                      reference.read_frame("test", a["run_id"], "metrics.csv"))


def test_sigterm_from_outside_stops_a_gradient_descent_suite(tmp_path):
    """edge_of_stability trains full-batch: a SIGTERM mid-fit checkpoints, the command exits 143, nothing is stored
    `done` early, and the rerun finishes every run."""
    args = ["edge_of_stability", "--scale", "smoke", "--seeds", "1", "trainer.max_steps=3000",
            "tracking.mode=disabled", *dirs(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "run", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "runs").glob("*/*/lightning/metrics.csv")):
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped:" in err and "Traceback" not in err
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("edge_of_stability/*/status.json")]
    stopped = [s for s in statuses if s["status"] == "pending"]
    assert stopped and all(s["checkpoint"] for s in stopped), statuses
    for path in (tmp_path / "runs").glob("edge_of_stability/*/summary.json"):
        assert json.loads(path.read_text())["steps"] == 3000, "a run stored done before its last step"


# ---- 3. a member deleted from a preempted group -------------------------------------------------------------------

def test_a_deleted_member_of_a_preempted_group_is_trained_again_from_step_0(tiny, tmp_path, capfd):
    from framework.preemption import Preempted
    from framework.runner import train_group

    cfgs = [tiny(seed=s, trainer__max_epochs=4) for s in range(2)]
    ids = [config_hash(c) for c in cfgs]
    reference = RunStore(tmp_path / "ref")
    expected = train_group(cfgs, reference)
    store = RunStore(tmp_path / "run")
    with pytest.raises(Preempted):
        train_group(cfgs, store, callbacks=(usr1_at("on_train_batch_end", 9),))
    assert store.group_checkpoint("test", ids).exists()
    shutil.rmtree(store.run_dir("test", ids[1]))  # as a user does to retrain one run
    capfd.readouterr()
    resumed = train_group(cfgs, store)
    assert "is not resumed" in capfd.readouterr().err
    for a, b in zip(expected, resumed):
        assert b["status"] == "done" and b["steps"] == a["steps"]
        assert store.status_record("test", b["run_id"])["resumed_from"] is None
        fa, fb = (s.read_frame("test", a["run_id"], "metrics.csv") for s in (reference, store))
        assert fb["step"].min() == fa["step"].min() and fb.shape == fa.shape
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-4 * max(abs(a["train_loss"]), 1e-3)


# ---- 4. a finished status with a file missing -------------------------------------------------------------------

@pytest.mark.parametrize("lost", ["summary.json", "metrics.csv"])
def test_a_done_run_with_a_missing_file_is_trained_again(lost, dd_copy):
    tmp_path = dd_copy
    store = RunStore(tmp_path / "runs")
    run_id = next(p.name for p in (tmp_path / "runs" / "double_descent").iterdir() if (p / "summary.json").exists())
    before = store.summary("double_descent", run_id)
    (store.run_dir("double_descent", run_id) / lost).unlink()
    assert not store.is_finished("double_descent", run_id)
    again = repro("run", *DD_ALL, *dirs(tmp_path))
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"run double_descent/{run_id}" in again.stderr and "trains again" in again.stderr
    after = store.summary("double_descent", run_id)
    assert store.is_finished("double_descent", run_id)
    assert after["test_loss"] == pytest.approx(before["test_loss"], rel=1e-3)  # alone now, maybe fused before
    assert store.status_record("double_descent", run_id)["attempt"] == 2


def test_the_runs_frame_leaves_out_a_run_whose_summary_is_missing(tiny, tmp_path):
    from framework.grid import Run
    from framework.results.runs import runs_frame
    from framework.runner import train
    store = RunStore(tmp_path / "runs")
    cfg = tiny()
    train(cfg, store)
    (store.run_dir("test", config_hash(cfg)) / "summary.json").unlink()
    frame = runs_frame([Run(cfg, {})], store)
    assert frame["status"].tolist() == ["unusable"] and "train_loss" not in frame


# ---- 5. report checks what run checks -----------------------------------------------------------------------------

def test_report_refuses_a_run_whose_stored_config_was_changed(dd_copy):
    import yaml
    tmp_path = dd_copy
    store = RunStore(tmp_path / "runs")
    run_id = next(p.name for p in (tmp_path / "runs" / "double_descent").iterdir() if (p / "config.yaml").exists())
    path = store.run_dir("double_descent", run_id) / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["model"]["depth"] = cfg["model"]["depth"] + 1
    path.write_text(yaml.safe_dump(cfg))
    for command in ("run", "report"):
        out = repro(command, *DD_ALL, *dirs(tmp_path), *(["--no-wandb-run"] if command == "report" else []))
        one_line_error(out, run_id, "model.depth")


def test_report_all_goes_on_past_a_recipe_with_no_runs(dd_copy):
    tmp_path = dd_copy
    out = repro("report", "all", "--scale", "smoke", "--seeds", "1", "--no-wandb-run", *dirs(tmp_path))
    assert "skipped vanishing_gradients" in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert (tmp_path / "reports" / "double_descent" / "smoke" / "index.html").exists()
    assert out.returncode == 0, out.stderr[-3000:]


def test_report_catches_a_recipe_error_on_missing_runs(dd_copy):
    """A claim that raises on a missing run (as `run` already caught) is listed, and report exits 1."""
    tmp_path = dd_copy
    code = ("import sys\nimport experiments.double_descent as dd\n"
            "def broken(self, runs):\n    raise ValueError('no run at width 4')\n"
            "dd.DoubleDescent.measure = broken\nfrom framework.cli import app\napp()\n")
    out = subprocess.run([sys.executable, "-c", code, "report", *DD_ALL, "--no-wandb-run", *dirs(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "claims of double_descent not computed: ValueError: no run at width 4" in out.stderr


# ---- 6. non-finite data --------------------------------------------------------------------------------------------

def test_data_that_overflow_float32_are_bad_input(tmp_path):
    r = repro("run", *DD, "data.feature_scale=1e300", *dirs(tmp_path))
    one_line_error(r, "data.feature_scale", "not finite")


def test_claims_of_runs_that_never_trained_are_not_judged():
    from framework.verdict import Claim, above, judge
    seeds = [s for s in range(8) for _ in range(2)]  # eight seeds of two runs: enough to judge (MIN_SEEDS)
    frame = pd.DataFrame({"seed": seeds, "status": ["done"] * 16, "diverged_step": [None] * 16,
                          "initial_train_loss": [2.3] * 16, "value": [0.9] * 16})

    def measure(runs):
        return [Claim("c", "ref", "value", float(runs["value"].mean()), above(0.5))]

    assert judge(measure, frame)[0]["verdict"] == "reproduced"
    never = frame.assign(status="diverged", diverged_step=0)
    out = judge(measure, never)[0]
    assert out["verdict"] == "inconclusive" and all(v != v for v in out["per_seed"].values())
    nan_start = frame.assign(initial_train_loss=float("nan"))
    assert judge(measure, nan_start)[0]["verdict"] == "inconclusive"


# ---- 7. repro sync against the installed wandb -------------------------------------------------------------------

def test_sync_builds_a_command_the_installed_wandb_accepts(tiny, tmp_path):
    """A dry run through the real `wandb sync` of a real offline run; every option passed exists in the installed
    wandb's CLI (0.30 removed --include-offline, and rejects it with exit 1)."""
    from wandb.cli.cli import sync as wandb_sync

    from framework.cli_tools import sync_command
    from framework.runner import train
    store = RunStore(tmp_path / "runs")
    train(tiny(tracking__mode="offline"), store)
    options = {o for p in wandb_sync.params if not getattr(p, "hidden", False) for o in p.opts}
    assert all(a in options for a in sync_command(["x"], dry_run=True)[2:] if a.startswith("-"))
    r = repro("sync", "--dry-run", *dirs(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "would sync 1 offline runs" in r.stdout and "Error" not in r.stdout + r.stderr


# ---- rough edges: locks, the runs folder, a full disk, online mode, huge grids, names in HTML -------------------

def _lock(store, cfg, text, mtime=None):
    path = store.run_dir(cfg.experiment, config_hash(cfg)) / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.mark.parametrize("text", ['{"host": "%s", "pid": "abc"}', "[1, 2]", '{"host": "%s", "pid": 100000000000000000000}',
                                  "\x00\x01 not json", '{"host": "%s", "pid": 1, "token": "x"}'])
def test_a_malformed_or_unrelated_lock_is_taken_over(text, tiny, tmp_path):
    """Malformed locks (not written by this tool) and a live unrelated pid with a heartbeat an hour in the future
    are stale: the run trains at once (it used to raise, or wait until mtime + the stale limit)."""
    import socket

    from framework.runner import train
    store = RunStore(tmp_path / "runs")
    cfg = tiny()
    future = time.time() + 3600 if '"pid": 1,' in text else None
    _lock(store, cfg, text.replace("%s", socket.gethostname()), future)
    started = time.time()
    assert train(cfg, store)["status"] == "done"
    assert time.time() - started < 60


def test_a_lock_of_a_reused_pid_is_taken_over(tiny, tmp_path):
    import socket

    from framework.locks import _process_start
    from framework.runner import train
    store = RunStore(tmp_path / "runs")
    cfg = tiny()
    parent = os.getppid()  # alive, and not the process that wrote the lock (its start time differs)
    _lock(store, cfg, json.dumps({"host": socket.gethostname(), "pid": parent, "token": "x",
                                  "pid_start": (_process_start(parent) or 0) + 1}))
    assert train(cfg, store)["status"] == "done"


def test_a_lock_that_is_a_folder_and_a_runs_dir_that_is_a_file_are_one_line(tmp_path):
    from experiments import RECIPES
    (run, *_) = RECIPES.get("double_descent")().runs("smoke", DD[3:5], seeds=1)
    lock = tmp_path / "runs" / "double_descent" / run.run_id / "lock"
    lock.mkdir(parents=True)
    one_line_error(repro("run", *DD, *dirs(tmp_path)), "lock", "not a lock file")
    (tmp_path / "file").write_text("x")
    one_line_error(repro("run", *DD, "--runs-dir", str(tmp_path / "file")), "--runs-dir", "is a file")


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MB filesystem (tmpfs); skipped where this process may not mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_in_a_fused_group_keeps_what_finished(tiny, tmp_path, small_disk):
    """Another process fills the disk as the group ends: the members stored before it stay done, the rest are
    left to train again (never `failed`, never `done` without their files), the error is one exception the CLI
    prints as one line (exit 1), and the rerun finishes them."""
    import pytorch_lightning as pl

    from framework.files import StoreFull
    from framework.runner import train_group
    cfgs = [tiny(seed=s, trainer__max_epochs=20, diagnostics__every_n_steps=1) for s in range(4)]
    reference = RunStore(tmp_path / "ref")
    train_group(cfgs, reference)
    member = sum(p.stat().st_size for p in reference.run_dir("test", config_hash(cfgs[0])).rglob("*") if p.is_file())
    filler = small_disk / "filler"

    class FillTheDisk(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            st = os.statvfs(small_disk)
            free = st.f_bavail * st.f_frsize
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, free - int(1.5 * member)))

    store = RunStore(small_disk / "runs")
    with pytest.raises(StoreFull, match="no space left"):
        train_group(cfgs, store, callbacks=(FillTheDisk(),))
    statuses = [store.status_record("test", config_hash(c)).get("status") for c in cfgs]
    assert statuses[0] == "done" and store.is_finished("test", config_hash(cfgs[0])), statuses
    assert "failed" not in statuses and statuses.count("done") < 4, statuses
    for c, status in zip(cfgs, statuses):
        assert (status == "done") == store.is_finished("test", config_hash(c))
    filler.unlink()
    again = train_group(cfgs, store)
    assert again[0].get("skipped") and all(r["status"] == "done" for r in again)


def test_online_tracking_that_cannot_be_fails_once_before_training(tmp_path):
    started = time.time()
    r = repro("run", *DD[:4], "tracking.mode=online", "--seeds", "1", *dirs(tmp_path),
              env={"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_MODE": ""})
    one_line_error(r, "tracking.mode=online", "127.0.0.1:9")
    assert time.time() - started < 60 and not (tmp_path / "runs").exists()


def test_an_absurd_grid_is_refused_before_it_is_expanded(tmp_path):
    widths = ",".join(str(w) for w in range(1, 1001))
    started = time.time()
    r = repro("run", *DD[:3], f"grid.model.width=[{widths}]", "--seeds", "1000", *dirs(tmp_path))
    one_line_error(r, "1,000,000 runs", "--yes")
    assert time.time() - started < 60


def test_a_scale_name_is_a_folder_name_and_is_escaped_in_html(tmp_path):
    import yaml

    from framework.recipe import config_dir
    from framework.report import index_page
    configs = tmp_path / "configs"
    shutil.copytree(config_dir(), configs)
    spec = yaml.safe_load((configs / "double_descent.yaml").read_text())
    spec["scales"]["<img src=x>"] = spec["scales"]["smoke"]
    (configs / "double_descent.yaml").write_text(yaml.safe_dump(spec))
    r = repro("run", "double_descent", "--scale", "<img src=x>", *dirs(tmp_path), env={"REPRO_CONFIGS": str(configs)})
    one_line_error(r, "scales.<img src=x>", "folder name")
    page = index_page([{"experiment": "e<b>", "scale": "<img src=x>", "claims": []}], {})
    assert "<img src=x>" not in page and "e<b>" not in page


def test_a_read_only_runs_folder_is_one_line(tmp_path):
    """Root writes through permission bits, so a read-only filesystem it is (a real one: tmpfs mounted ro)."""
    disk = tmp_path / "ro"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        one_line_error(repro("run", *DD, "--runs-dir", str(disk / "runs")), "--runs-dir", "not writable")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_through_the_cli_is_one_line_and_exit_1(tmp_path, small_disk):
    """The same full disk as above, met by `repro run` (the disk is filled by a callback placed in the child
    process only, as the signal tests place their signals): one line, exit 1, no traceback; what finished stays."""
    patch = f"""
import os
import pytorch_lightning as pl
import framework.runner as runner
class FillTheDisk(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        st = os.statvfs({str(small_disk)!r})
        with open({str(small_disk / "filler")!r}, "wb") as f:
            f.write(b"\\0" * st.f_bavail * st.f_frsize)  # every block: the run's files cannot be written
callbacks = runner._callbacks
runner._callbacks = lambda *a, **k: [*callbacks(*a, **k), FillTheDisk()]
"""
    code = patch + "\nfrom framework.cli import app\napp()\n"
    r = subprocess.run([sys.executable, "-c", code, "run", *DD, "--runs-dir", str(small_disk / "runs"),
                        "--reports-dir", str(tmp_path / "reports")], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no space left") and "Traceback" not in r.stderr, r.stderr
    statuses = [json.loads(p.read_text())["status"] for p in (small_disk / "runs").glob("double_descent/*/status.json")]
    assert statuses and "failed" not in statuses and "done" not in statuses, statuses

"""The cluster path on a real single-node SLURM (slurm/local-cluster.sh), preemption and resume, and DDP.

Needs root to start SLURM (as in CI); elsewhere the SLURM tests skip with that reason.
"""
import json
import multiprocessing as mp
import re
import subprocess
import time
from pathlib import Path

import pytest

from framework.config import config_hash
from framework.files import atomic_write
from framework.preemption import Preempted
from framework.runner import train
from framework.store import RunStore
from tests.helpers import ROOT, cli, repro
from tests.helpers.signals import SignalAt

pytestmark = pytest.mark.xdist_group("slurm")  # one local SLURM, started once, by one test worker
QUICK = ["tracking.mode=disabled", "trainer.accelerator=cpu"]
ONE = ["--seeds", "1"]  # these tests are about the cluster, not seeds: one seed per grid point keeps them short


def job_of(submitted) -> str:
    """The array job id `repro submit` printed."""
    return re.search(r"submitted job (\d+)", submitted.stdout).group(1)


def wait_for_queue(job: str, timeout: float = 240, until=lambda jobs: not jobs):
    """Waits until `until` holds for this job's array tasks in squeue (by id: another job of the same name,
    a test's leftover, is not this one); by default until the job has left the queue."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i %T %r"], capture_output=True, text=True)
        jobs = [line.split() for line in out.stdout.strip().splitlines()]
        if until(jobs):
            return jobs
        time.sleep(1)
    raise TimeoutError(f"job {job} still queued: {jobs}")


def local_summaries(name, overrides, tmp_path):
    """The same suite run locally, in this process: the reference for the cluster's numbers."""
    from experiments import RECIPES
    store = RunStore(tmp_path / "local")
    recipe = RECIPES.get(name)()
    return {r.run_id: train(r.cfg, store) for r in recipe.runs("smoke", overrides, seeds=1)}


def test_submit_array_runs_every_run_like_a_local_run(slurm, tmp_path):
    runs_dir = tmp_path / "runs"
    r = repro("submit", "double_descent", "--scale", "smoke", *ONE, *QUICK, "--runs-dir", str(runs_dir), env=slurm)
    assert r.returncode == 0, r.stderr
    assert "submitted job" in r.stdout and "4 runs in 4 array tasks" in r.stdout and "logs in" in r.stdout
    wait_for_queue(job_of(r))
    store = RunStore(runs_dir)
    reference = local_summaries("double_descent", QUICK, tmp_path)
    for run_id, local in reference.items():
        assert store.status("double_descent", run_id) == "done"
        cluster = store.summary("double_descent", run_id)
        for key in ("train_loss", "test_error", "test_loss", "steps"):
            assert cluster[key] == local[key], (run_id, key)
        assert json.loads((runs_dir / "double_descent" / run_id / "status.json").read_text())["slurm_array_job_id"]
    st = repro("status", "double_descent", "--scale", "smoke", *ONE, *QUICK, "--runs-dir", str(runs_dir), env=slurm)
    assert "4 runs: done 4, running 0, pending 0, failed 0, diverged 0" in st.stdout
    again = repro("submit", "double_descent", "--scale", "smoke", *ONE, *QUICK, "--runs-dir", str(runs_dir), env=slurm)
    assert again.returncode == 0 and "nothing to submit" in again.stdout
    assert len(list((runs_dir / "double_descent" / "_slurm").iterdir())) == 1, "the second submit sent nothing"


def test_preempted_run_resumes_from_its_checkpoint_on_slurm(slurm, tmp_path):
    overrides = [*QUICK, "grid.model.width=[64]", "trainer.max_epochs=1500"]  # ~6000 steps: time to signal
    runs_dir = tmp_path / "runs"
    r = repro("submit", "double_descent", "--scale", "smoke", *ONE, *overrides, "--runs-dir", str(runs_dir), env=slurm)
    assert r.returncode == 0, r.stderr
    job = job_of(r)
    from experiments import RECIPES
    (run_id,) = [run.run_id for run in RECIPES.get("double_descent")().runs("smoke", overrides, seeds=1)]
    metrics = runs_dir / "double_descent" / run_id / "lightning" / "metrics.csv"
    deadline = time.time() + 300  # a loaded machine: the task may wait for the node, then for torch's import
    while not metrics.exists() and time.time() < deadline:  # first written at step 100
        time.sleep(0.2)
    queue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
    assert metrics.exists(), f"the task never reached step 100 in 300 s: {queue}"
    sent = subprocess.run(["scancel", "--signal=USR1", f"{job}_0"], capture_output=True, text=True)
    assert sent.returncode == 0, f"scancel: {sent.stderr}"  # SLURM's pre-timeout signal
    wait_for_queue(job, 60, until=lambda jobs: jobs and jobs[0][1] == "PENDING")
    status = json.loads((runs_dir / "double_descent" / run_id / "status.json").read_text())
    assert status["status"] == "pending" and status["preempted"] is True
    assert (runs_dir / "double_descent" / run_id / "checkpoint.ckpt").exists()
    # SLURM holds a requeued job ~2 minutes before it is eligible again; start it now
    subprocess.run(["scontrol", "update", f"jobid={job}_0", "StartTime=now"], check=True)
    t0 = time.time()
    wait_for_queue(job, 400)
    print(f"resumed job ran {time.time() - t0:.0f} s")
    store = RunStore(runs_dir)
    final = store.read_json("double_descent", run_id, "status.json")
    assert final["status"] == "done" and final["resumed_from"].endswith("checkpoint.ckpt")
    log = next((runs_dir / "double_descent" / "_slurm").glob("*/logs/*.out")).read_text()
    assert "restart 1" in log
    reference = local_summaries("double_descent", overrides, tmp_path)[run_id]
    resumed = store.summary("double_descent", run_id)
    for key in ("train_loss", "test_loss", "test_error", "steps", "grad_norm_first"):
        assert resumed[key] == reference[key], key


@pytest.mark.parametrize("step", [5, 15, 16, 33])  # mid-epoch, last batch of an epoch, first batch, last epoch
def test_resume_is_exact_wherever_the_signal_lands(step, tiny, tmp_path):
    cfg = tiny(trainer__max_epochs=5, model__dropout=0.2, schedule__name="cosine", data__n_samples=400)
    reference = train(cfg, RunStore(tmp_path / "ref"))
    store = RunStore(tmp_path / "run")
    with pytest.raises(Preempted):
        train(cfg, store, callbacks=[SignalAt(step)])
    assert store.status("test", config_hash(cfg)) == "pending"
    resumed = train(cfg, store)
    for key in ("train_loss", "val_loss", "test_acc", "steps", "grad_norm_first", "saturation_mean"):
        assert resumed[key] == reference[key], key
    import pandas as pd
    merged = store.read_frame("test", resumed["run_id"], "metrics.csv")
    pd.testing.assert_frame_equal(merged, RunStore(tmp_path / "ref").read_frame("test", resumed["run_id"],
                                                                                 "metrics.csv"))


def test_signal_on_the_final_step_lets_the_run_finish(tiny, tmp_path):
    cfg = tiny(trainer__max_epochs=5, data__n_samples=400)
    store = RunStore(tmp_path / "run")
    summary = train(cfg, store, callbacks=[SignalAt(39)])
    assert summary["status"] == "done" and summary["steps"] == 40
    assert not (store.run_dir("test", config_hash(cfg)) / "checkpoint.ckpt").exists()


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    """Same global batch (each of 2 gloo processes takes half of every batch of 50): the same training.
    Tolerance: |train loss difference| <= 1e-4 and equal test error (float sums in another order)."""
    args = ["run", "double_descent", "--scale", "smoke", *ONE, "grid.model.width=[32]", *QUICK, "--runs-dir",
            str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]
    single = repro(*args)
    ddp = repro(*args, "trainer.strategy=ddp", "trainer.devices=2")
    assert single.returncode == 0 and ddp.returncode == 0, ddp.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "double_descent").glob("*/summary.json")]
    assert len(summaries) == 2
    a, b = summaries
    assert abs(a["train_loss"] - b["train_loss"]) <= 1e-4 and a["test_error"] == b["test_error"]
    assert a["steps"] == b["steps"]


def test_submit_without_sbatch_is_a_clear_error(tmp_path):
    r = cli("submit", "double_descent", "--scale", "smoke", "--runs-dir", tmp_path / "runs", env={"PATH": str(tmp_path)})
    assert r.exit_code == 2 and "sbatch not found on PATH" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_unknown_profile_is_a_clear_error(tmp_path):
    r = cli("submit", "double_descent", "--profile", "gpus", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 2 and "unknown profile 'gpus'" in r.stderr and "did you mean 'gpu'" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_failed_submission_leaves_nothing_behind(slurm, tmp_path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("broken: {partition: no_such_partition}\n")
    r = repro("submit", "double_descent", "--scale", "smoke", "--profile", "broken", "--runs-dir",
              str(tmp_path / "runs"), env={**slurm, "REPRO_SLURM_PROFILES": str(profiles)})
    assert r.returncode == 2 and "sbatch failed" in r.stderr and "partition" in r.stderr.lower()
    leftovers = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()] if (tmp_path / "runs").exists() else []
    assert leftovers == []


@pytest.mark.slow  # 36 s (CI time); the submit tests run the script it prints on the local SLURM
def test_dry_run_prints_the_script(tmp_path):
    r = repro("submit", "vanishing_gradients", "--scale", "smoke", "--dry-run", "--fuse", "off", "--runs-dir",
              str(tmp_path / "r"))
    assert r.returncode == 0
    assert "#SBATCH --array=0-11%8" in r.stdout and "#SBATCH --signal=USR1@60" in r.stdout  # 6 configs x 2 seeds
    fused = repro("submit", "vanishing_gradients", "--scale", "smoke", "--dry-run", "--runs-dir", str(tmp_path / "r"))
    # a config's seeds fuse, and so do Xavier and He init (they differ only in initialisation): 5 groups, 5 tasks
    assert "#SBATCH --array=0-4%8" in fused.stdout
    assert "#SBATCH --requeue" in r.stdout and "srun" in r.stdout
    assert not (tmp_path / "r").exists()
    ddp = repro("submit", "double_descent", "--scale", "smoke", "--dry-run", "trainer.strategy=ddp",
                "trainer.devices=4", "trainer.num_nodes=2", "data.batch_size=64", "--profile", "gpu", "--runs-dir", str(tmp_path / "r"))
    assert "#SBATCH --ntasks-per-node=4" in ddp.stdout and "#SBATCH --nodes=2" in ddp.stdout
    assert "#SBATCH --gres=gpu:4" in ddp.stdout and "#SBATCH --partition=gpu" in ddp.stdout


def _hammer(path, n, tag):
    for i in range(n):
        atomic_write(Path(path), json.dumps({"writer": tag, "i": i, "pad": "x" * 5000}))


def test_concurrent_writers_never_leave_a_torn_file(tmp_path):
    path = tmp_path / "status.json"
    atomic_write(path, json.dumps({"writer": -1}))
    writers = [mp.Process(target=_hammer, args=(str(path), 300, k)) for k in range(4)]
    for w in writers:
        w.start()
    reads = 0
    while any(w.is_alive() for w in writers):
        json.loads(path.read_text())  # a torn write would not parse
        reads += 1
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert reads > 10 and not list(tmp_path.glob("*.tmp"))


def test_submit_from_a_folder_with_spaces_and_shell_syntax(slurm, tmp_path):
    """The working directory and the manifest path are quoted in the script: a space does not split them and
    `$(...)` in a folder name never runs."""
    where = tmp_path / "my runs $(touch pwned) 'q'"
    where.mkdir()
    r = repro("submit", "double_descent", "--scale", "smoke", *ONE, *QUICK, "grid.model.width=[4]", "--runs-dir",
              str(where / "runs"), env=slurm, cwd=where)
    assert r.returncode == 0, r.stderr
    wait_for_queue(job_of(r))
    (summary,) = list((where / "runs" / "double_descent").glob("*/summary.json"))
    assert json.loads(summary.read_text())["train_loss"] >= 0
    assert not list(tmp_path.rglob("pwned")) and not (ROOT / "pwned").exists()
    logs = list((where / "runs" / "double_descent" / "_slurm").glob("*/logs/*.out"))
    assert logs and "task 0 of job" in logs[0].read_text()


def test_a_second_submit_leaves_out_runs_pending_or_running_in_slurm(slurm, tmp_path):
    runs_dir = tmp_path / "runs"
    # the cluster's partition is down while both commands run: SLURM queues the first job and allocates nothing, so
    # however slowly the second command starts on a loaded machine, the first job's runs are still pending in SLURM
    # when it looks (`scontrol`, as an administrator would); then the partition comes up and the first job trains
    def partition(state):
        subprocess.run(["scontrol", "update", "PartitionName=local", f"State={state}"], check=True,
                       capture_output=True)
    partition("DOWN")
    try:
        first = repro("submit", "double_descent", "--scale", "smoke", *ONE, *QUICK, "--runs-dir", str(runs_dir),
                      env=slurm)
        assert first.returncode == 0 and "4 runs in 4 array tasks" in first.stdout, first.stderr
        second = repro("submit", "double_descent", "--scale", "smoke", *ONE, *QUICK, "--runs-dir", str(runs_dir),
                       env=slurm)
    finally:
        partition("UP")
    assert second.returncode == 0, second.stderr
    assert "nothing to submit" in second.stdout and "pending or running" in second.stdout, second.stdout
    assert len(list((runs_dir / "double_descent" / "_slurm").iterdir())) == 1
    wait_for_queue(job_of(first), 600)
    store = RunStore(runs_dir)
    for run_id in store.run_ids("double_descent"):
        status = store.status_record("double_descent", run_id)
        assert status["status"] == "done" and status["attempt"] == 1


def test_fused_groups_go_as_array_tasks(slurm, tmp_path):
    """Each fused group is one array task; the cluster's runs equal the same suite's runs trained here."""
    from experiments import RECIPES
    from framework.suite import run_suite
    runs_dir = tmp_path / "runs"
    r = repro("submit", "lr_scaling", "--scale", "smoke", *ONE, *QUICK, "--runs-dir", str(runs_dir), env=slurm)
    assert r.returncode == 0, r.stderr
    n_runs, n_tasks = map(int, re.search(r"(\d+) runs in (\d+) array tasks", r.stdout).groups())
    assert n_tasks < n_runs
    manifest = json.loads(next((runs_dir / "lr_scaling" / "_slurm").glob("*/manifest.json")).read_text())
    assert manifest["fuse"] == "auto" and max(len(t) for t in manifest["tasks"]) > 1
    wait_for_queue(job_of(r))
    local = RunStore(tmp_path / "local")
    run_suite(RECIPES.get("lr_scaling")(), "smoke", QUICK, local, tmp_path / "reports", seeds=1)
    store = RunStore(runs_dir)
    grouped = 0
    for run_id in local.run_ids("lr_scaling"):
        record = store.status_record("lr_scaling", run_id)
        assert record["status"] in ("done", "diverged") and record["slurm_array_job_id"]
        grouped += bool(record.get("group"))
        cluster, here = store.summary("lr_scaling", run_id), local.summary("lr_scaling", run_id)
        for key in ("train_loss", "test_error", "steps", "diverged_step"):
            assert cluster[key] == here[key], (run_id, key)
    assert grouped >= n_runs - n_tasks + 1


def _profiles(tmp_path, text: str) -> dict:
    path = tmp_path / "profiles.yaml"
    path.write_text(text)
    return {"REPRO_SLURM_PROFILES": str(path)}


def test_profile_directives_a_cluster_needs_are_written_and_checked(tmp_path):
    """qos, constraint, gres with its GPU type, exclude and any extra #SBATCH option, from the profile; a value sbatch
    would misread (a newline, '$', a quote) is refused with the key named, before anything is written."""
    env = _profiles(tmp_path, "site: {qos: high, constraint: 'a100&ib', gpus_per_task: 2, gpu_type: a100, "
                              "exclude: 'node[01-02]', account: lab, sbatch: ['--mail-type=END', '--comment=x y']}\n"
                              "bad: {qos: 'a$b'}\nworse: {sbatch: ['--comment=a\\nrm -rf /']}\n")
    r = cli("submit", "double_descent", "--scale", "smoke", "--dry-run", "--profile", "site", "--runs-dir",
            tmp_path / "r", env=env)
    assert r.exit_code == 0, r.output
    for line in ("#SBATCH --qos=high", "#SBATCH --constraint=a100&ib", "#SBATCH --gres=gpu:a100:2",
                 "#SBATCH --exclude=node[01-02]", "#SBATCH --account=lab", "#SBATCH --mail-type=END",
                 "#SBATCH --comment=x y"):
        assert line in r.stdout.splitlines(), line
    for name, key in (("bad", "qos"), ("worse", "sbatch")):
        r = cli("submit", "double_descent", "--scale", "smoke", "--dry-run", "--profile", name, "--runs-dir",
                tmp_path / "r", env=env)
        assert r.exit_code == 2 and f"profile {name}: {key}" in r.stderr, r.output
    assert not (tmp_path / "r").exists()


def test_profile_directives_reach_the_local_slurm(slurm, tmp_path):
    """On the real local SLURM: a qos and an extra option are accepted and the job carries them (scontrol);
    excluding the only node makes sbatch refuse the job, exit 2, nothing left behind."""
    env = {**slurm, **_profiles(tmp_path, "site: {qos: normal, sbatch: ['--comment=repro-directives']}\n"
                                          "nowhere: {exclude: vm}\n")}
    runs_dir = tmp_path / "runs"
    r = repro("submit", "double_descent", "--scale", "smoke", *ONE, *QUICK, "grid.model.width=[8]", "--profile",
              "site", "--runs-dir", str(runs_dir), env=env)
    assert r.returncode == 0, r.stderr
    job = next((runs_dir / "double_descent" / "_slurm").iterdir())
    job_id = (job / "job_id").read_text().strip()
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert "Comment=repro-directives" in shown, shown
    wait_for_queue(job_id)
    from experiments import RECIPES
    (run,) = RECIPES.get("double_descent")().runs("smoke", [*QUICK, "grid.model.width=[8]"], seeds=1)
    assert RunStore(runs_dir).status("double_descent", run.run_id) == "done"
    refused = repro("submit", "double_descent", "--scale", "smoke", *ONE, *QUICK, "--profile", "nowhere", "--runs-dir",
                    str(tmp_path / "none"), env=env)
    assert refused.returncode == 2 and "sbatch failed" in refused.stderr


def test_status_lists_failed_runs_with_their_one_line_reason(tmp_path):
    from experiments import RECIPES
    store = RunStore(tmp_path / "runs")
    run = RECIPES.get("double_descent")().runs("smoke", seeds=1)[1]
    folder = store.run_dir("double_descent", run.run_id)
    folder.mkdir(parents=True)
    atomic_write(folder / "status.json", json.dumps({"status": "failed", "error": "RuntimeError: CUDA out of "
                                                     "memory\n  a second line that is not the reason"}))
    r = cli("status", "double_descent", "--scale", "smoke", "--seeds", "1", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    assert "failed 1" in r.stdout
    assert f"failed {run.run_id} ({run.cfg.variant}, seed 0): RuntimeError: CUDA out of memory" in r.stdout
    assert "second line" not in r.stdout

"""SLURM: render the sbatch template for a suite's unfinished runs, submit one job array, read its status.

Submission never waits for the jobs: it prints the job id and the log folder and returns; status comes later
from the run store and squeue (sacct is often disabled on clusters). A job's manifest (the run configs per
array task) lives in runs/<experiment>/_slurm/<job folder>/, outside every run's own folder.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from string import Template

import yaml

from framework.config import config_hash, to_dict
from framework.files import atomic_write
from framework.grid import Run
from framework.locks import RunBusy, describe_owner
from framework.overrides import from_dict
from framework.planner import plan_suite
from framework.preemption import SIGNALS, Stop
from framework.registry import UserError, suggest
from framework.resources import resource_dir
from framework.runner import train_group
from framework.store import RunStore

SLURM_DIR = resource_dir("slurm")
PROFILE_KEYS = {"partition", "account", "time", "gpus_per_task", "cpus_per_task", "mem", "pack", "max_parallel",
                "signal_seconds", "setup", "qos", "constraint", "gpu_type", "exclude", "sbatch"}
# profile key -> sbatch option, each written as `#SBATCH --option=value` when the profile gives a value
DIRECTIVES = {"partition": "--partition", "account": "--account", "qos": "--qos", "constraint": "--constraint",
              "exclude": "--exclude"}
# what a directive's value may hold: sbatch reads `#SBATCH` lines itself (no shell), so a value is written as it
# is; a newline would start a line of the script and a quote or `$` would be read differently by sbatch and by eye
SAFE_VALUE = re.compile(r"[A-Za-z0-9_.,:;=@%+/\-\[\]&|!*() ]+")


def load_profile(name: str, path: Path | None = None) -> dict:
    path = path or Path(os.environ.get("REPRO_SLURM_PROFILES", SLURM_DIR / "profiles.yaml"))
    profiles = yaml.safe_load(path.read_text()) or {}
    if name not in profiles:
        raise UserError(f"unknown profile '{name}'{suggest(name, profiles)}; profiles in {path}: "
                        f"{', '.join(profiles)}")
    profile = profiles[name] or {}
    unknown = set(profile) - PROFILE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise UserError(f"profile {name}: unknown key '{key}'{suggest(key, PROFILE_KEYS)}; "
                        f"keys: {', '.join(sorted(PROFILE_KEYS))}")
    for key in [*DIRECTIVES, "gpu_type"]:
        value = str(profile.get(key) or "")
        if value and not SAFE_VALUE.fullmatch(value):
            raise UserError(f"profile {name}: {key} {value!r} holds a character sbatch would misread (a newline, "
                            f"quote, '$', '#' or '\\'); allowed: letters, digits, spaces and _ . , : ; = @ % + / - [ ] & | ! * ( )")
    extra = profile.get("sbatch") or []
    if not isinstance(extra, list) or not all(isinstance(x, str) and x.startswith("--") and SAFE_VALUE.fullmatch(x)
                                              for x in extra):
        raise UserError(f"profile {name}: sbatch: expected a list of extra options, each '--option=value' on one "
                        f"line without quotes, '$', '#' or '\\', got {extra!r}")
    return profile


def tasks_of(groups: list[list], pack: int) -> list[list]:
    """Array tasks: each fused group is one task; runs that train alone go `pack` to a task."""
    tasks, alone = [], []
    for group in groups:
        if len(group) > 1:
            tasks.append(group)
        else:
            alone += group
    return tasks + [alone[i:i + pack] for i in range(0, len(alone), pack)]


def render(tasks: list[list], experiment: str, profile: dict, job_dir: Path) -> str:
    """The sbatch script for these array tasks (lists of runs)."""
    trainer = tasks[0][0].cfg.trainer
    tasks_per_node = trainer.devices if trainer.strategy.startswith("ddp") else 1
    extra = [f"#SBATCH {flag}={profile[key]}" for key, flag in DIRECTIVES.items() if profile.get(key)]
    if int(profile.get("gpus_per_task", 0)) > 0:
        kind = f"{profile['gpu_type']}:" if profile.get("gpu_type") else ""
        extra.append(f"#SBATCH --gres=gpu:{kind}{int(profile['gpus_per_task']) * tasks_per_node}")
    extra += [f"#SBATCH {option}" for option in profile.get("sbatch") or []]
    template = Template((SLURM_DIR / "template.sbatch").read_text())
    return template.substitute(
        job_name=f"repro-{experiment}", last_task=len(tasks) - 1,
        max_parallel=profile.get("max_parallel", 8), log_dir=job_dir / "logs", time=profile.get("time", "01:00:00"),
        nodes=trainer.num_nodes, tasks_per_node=tasks_per_node, cpus_per_task=profile.get("cpus_per_task", 1),
        mem=profile.get("mem", "2G"), signal_seconds=profile.get("signal_seconds", 60),
        extra_directives="\n".join(extra), workdir=shlex.quote(str(Path.cwd())), setup=profile.get("setup", "") or "",
        python=shlex.quote(sys.executable), manifest=shlex.quote(str(job_dir / "manifest.json")))


def queued_runs(store: RunStore, experiment: str) -> set[str]:
    """Run ids of this experiment's earlier submissions whose array tasks are still pending or running in SLURM
    (from each job folder's manifest and job id, and squeue)."""
    jobs = {}
    base = store.slurm_dir(experiment)
    for job_dir in (base.iterdir() if base.exists() else []):
        if (job_dir / "job_id").exists() and (job_dir / "manifest.json").exists():
            jobs[(job_dir / "job_id").read_text().strip()] = job_dir
    if not jobs or shutil.which("squeue") is None:
        return set()
    # by job name, not by id: squeue rejects the whole query when one id has left the queue
    # %F: the array's job id (what job_id holds), %K: the task's index (%A is each running task's own id, %a the account)
    out = subprocess.run(["squeue", "-h", "-r", "-n", f"repro-{experiment}", "-o", "%F|%K|%T"], capture_output=True,
                         text=True, timeout=30)
    if out.returncode != 0:
        raise UserError(f"squeue failed ({out.returncode}): {(out.stderr or out.stdout).strip()[:200]}; cannot tell "
                        f"which runs of {experiment} are queued, so nothing was submitted")
    queued = set()
    for line in out.stdout.split():
        job, task, _state = line.split("|")
        if job in jobs and task.isdigit():
            tasks = json.loads((jobs[job] / "manifest.json").read_text())["tasks"]
            if int(task) < len(tasks):
                queued.update(config_hash(from_dict(c)) for c in tasks[int(task)])
    return queued


def submit(recipe, scale: str, overrides, store: RunStore, profile_name: str, dry_run: bool = False,
           console=None, fuse: str = "auto", fuse_max: int = 16, seeds: int | None = None, seed_base: int = 0) -> dict:
    """Submits the suite's runs that are not finished, not owned by a live process (their lock) and not
    pending or running in an earlier submission's array; each fused group (framework/planner.py) is one array
    task, and an array task trains its runs as the same groups."""
    all_runs = recipe.runs(scale, overrides, seeds, seed_base)
    queued = queued_runs(store, recipe.name)
    runs = [r for r in all_runs if store.unusable(r.cfg, r.run_id) is not None and r.run_id not in queued
            and store.owner(recipe.name, r.run_id) is None]
    profile = load_profile(profile_name)
    if not runs:
        busy = sum(1 for r in all_runs if store.unusable(r.cfg, r.run_id) is not None)
        why = f"{busy} are pending or running in SLURM or another process, the rest finished" if busy \
            else "every run is finished"
        return {"job_id": None, "runs": 0, "message": f"nothing to submit for {recipe.name} [{scale}]: {why}"}
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    job_dir = (store.slurm_dir(recipe.name) / stamp).resolve()
    pack = max(1, int(profile.get("pack", 1)))
    tasks = tasks_of(plan_suite(runs, store, fuse, fuse_max), pack)
    script = render(tasks, recipe.name, profile, job_dir)
    if dry_run:
        return {"job_id": None, "runs": len(runs), "script": script}
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError("sbatch not found on PATH: is this a SLURM login node? (slurm/local-cluster.sh start "
                        "runs a local one)")
    manifest = {"experiment": recipe.name, "scale": scale, "runs_dir": str(store.root.resolve()), "fuse": fuse,
                "fuse_max": fuse_max, "tasks": [[to_dict(r.cfg) for r in task] for task in tasks],
                "axes": [[r.axes for r in task] for task in tasks]}
    (job_dir / "logs").mkdir(parents=True, exist_ok=True)
    atomic_write(job_dir / "manifest.json", json.dumps(manifest))
    atomic_write(job_dir / "job.sbatch", script)
    # the log path goes on the command line, not in an #SBATCH line: a folder name with spaces or quotes
    # stays one argument
    result = subprocess.run([sbatch, "--parsable", f"--output={job_dir / 'logs'}/%A_%a.out",
                             str(job_dir / "job.sbatch")], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        shutil.rmtree(job_dir, ignore_errors=True)
        message = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"sbatch failed ({result.returncode}): {message[-1] if message else 'no message'}")
    job_id = result.stdout.strip().split(";")[0]
    atomic_write(job_dir / "job_id", job_id)
    return {"job_id": job_id, "runs": len(runs), "tasks": len(manifest["tasks"]), "logs": str(job_dir / "logs")}


def work(manifest_path: Path, task: int) -> int:
    """One array task: train its pack of runs in order (finished ones are skipped, ones another live process
    owns are left to it). Returns an exit code: 0, 1 when a run failed, 128 + signal when a signal stopped it
    (0 when SLURM requeues the task: the requeued task resumes from the checkpoint)."""
    manifest = json.loads(Path(manifest_path).read_text())
    store = RunStore(manifest["runs_dir"])
    axes = manifest.get("axes", [[{}] * len(t) for t in manifest["tasks"]])[task]
    runs = [Run(from_dict(c), a) for c, a in zip(manifest["tasks"][task], axes)]
    failed = 0
    with SIGNALS.owned():
        for group in plan_suite(runs, store, manifest.get("fuse", "off"), manifest.get("fuse_max", 16)):
            try:
                SIGNALS.check("between runs")
                results = train_group([r.cfg for r in group], store, scale=manifest["scale"], axes=[r.axes for r in group])
            except Stop as e:
                requeued = SIGNALS.requeue()  # already asked for when the signal was USR1 under SLURM
                print(f"stopped: {e}{' (requeued)' if requeued else ''}", flush=True)
                return 0 if requeued else 128 + e.signum
            except UserError as e:
                print(f"error: {e}", flush=True)
                failed += len(group)
                continue
            for summary in results:
                if isinstance(summary, RunBusy):
                    print(f"{summary.run_dir.name}: skipped, owned by {describe_owner(summary.owner)}", flush=True)
                    continue
                print(f"{summary.get('run_id')} {summary.get('variant')}: {summary.get('status')}"
                      f"{' (skipped: finished)' if summary.get('skipped') else ''}"
                      f"{': ' + str(summary.get('error')) if summary.get('status') == 'failed' else ''}", flush=True)
                failed += summary.get("status") == "failed"
    return 1 if failed else 0


def squeue(job_name: str) -> list[dict]:
    """Jobs of this name in the queue (empty when SLURM is not there)."""
    if shutil.which("squeue") is None:
        return []
    out = subprocess.run(["squeue", "-h", "-r", "-n", job_name, "-o", "%i|%T|%M|%R"], capture_output=True,
                         text=True, timeout=30)
    if out.returncode != 0:
        return []
    rows = [line.split("|") for line in out.stdout.strip().splitlines() if line]
    return [{"job": r[0], "state": r[1], "time": r[2], "reason": r[3]} for r in rows]


def status(recipe, scale: str, overrides, store: RunStore, seeds: int | None = None, seed_base: int = 0) -> dict:
    runs = recipe.runs(scale, overrides, seeds, seed_base)
    counts = {s: 0 for s in ("done", "running", "pending", "failed", "diverged")}
    failed = []
    for run in runs:
        state = store.status(recipe.name, run.run_id)
        counts[state] += 1
        if state == "failed":  # with the first line of its error: what a user acts on
            error = str(store.status_record(recipe.name, run.run_id).get("error") or "no error recorded")
            failed.append({"run_id": run.run_id, "variant": run.cfg.variant, "seed": run.cfg.seed,
                           "error": error.strip().splitlines()[0][:200] if error.strip() else "no error recorded"})
    return {"experiment": recipe.name, "scale": scale, "runs": len(runs), "counts": counts, "failed": failed,
            "queue": squeue(f"repro-{recipe.name}")}

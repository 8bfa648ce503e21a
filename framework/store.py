"""The local run store: runs/<experiment>/<config-hash>/ with config, metrics, diagnostics, status, summary.

This module owns every path in the store. Every file is written to a temporary name and renamed into place
(with the user's umask, so collaborators on shared storage can read it), so concurrent array tasks and killed
jobs never leave a half-written file; a file damaged anyway (a full disk, a copy cut short) is reported by name,
never read as if it were whole. A run is finished when its status is done or diverged.

A run has one owner at a time: the process holding `<run>/lock` (see RunLock).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pandas as pd
import yaml

from framework.config import (
    SAFE_NAME,  # the one rule for a name that becomes a folder (validate uses it too)
    flatten,
    in_identity_exempt,
    to_dict,
)
from framework.files import StoreError, _hint, atomic_write, read_csv_file, read_json_file, strict_json
from framework.locks import RunLock, read_lock
from framework.registry import UserError
from framework.results.measures import FINISHED

# What a finished run's folder holds besides status.json (written last of all, after these).
FINISHED_FILES = ("config.yaml", "summary.json", "metrics.csv")
STATUSES = ("pending", "running", "done", "diverged", "failed")
# What a fresh attempt of a run removes: the files an earlier attempt wrote (a resume keeps them).
ATTEMPT_FILES = ("metrics.csv", "diagnostics.csv", "summary.json", "lightning", "wandb", "checkpoint.tmp")


def _same_value(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _folder_name(name: str, what: str, root: Path) -> str:
    if not SAFE_NAME.fullmatch(name):
        raise StoreError(f"{what} {name!r} is not a folder name inside the store {root}")
    return name


class RunStore:
    def __init__(self, root: str | Path = "runs"):
        self.root = Path(root)

    # -- paths
    def experiment_dir(self, experiment: str) -> Path:
        """runs/<experiment>: a plain folder name (config.validate checks a typed one), so nothing of a suite can
        be written outside the store."""
        _folder_name(experiment, "experiment", self.root)
        return self.root / experiment

    def run_dir(self, experiment: str, run_id: str) -> Path:
        return self.experiment_dir(experiment) / _folder_name(run_id, "run", self.root)

    def checkpoint(self, experiment: str, run_id: str) -> Path:
        return self.run_dir(experiment, run_id) / "checkpoint.ckpt"

    def lightning_dir(self, experiment: str, run_id: str) -> Path:
        return self.run_dir(experiment, run_id) / "lightning"

    def slurm_dir(self, experiment: str) -> Path:
        return self.experiment_dir(experiment) / "_slurm"

    def group_dir(self, experiment: str, run_ids: list[str]) -> Path:
        """Where a fused group keeps its checkpoint and member list: named by its members, in order."""
        name = hashlib.sha256(",".join(run_ids).encode()).hexdigest()[:12]
        return self.experiment_dir(experiment) / "_groups" / name

    def group_checkpoint(self, experiment: str, run_ids: list[str]) -> Path:
        return self.group_dir(experiment, run_ids) / "checkpoint.ckpt"

    def saved_groups(self, experiment: str) -> list[list[str]]:
        """Member lists of the fused groups that left a checkpoint (a preempted group resumes as that group)."""
        groups = []
        for path in sorted((self.experiment_dir(experiment) / "_groups").glob("*/members.json")):
            try:
                members = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if (path.parent / "checkpoint.ckpt").exists() and isinstance(members, list):
                groups.append([str(m) for m in members])
        return groups

    def lock(self, experiment: str, run_id: str) -> RunLock:
        """Takes ownership of the run (raises RunBusy when another live process has it)."""
        return RunLock(self.run_dir(experiment, run_id) / "lock").acquire()

    def owner(self, experiment: str, run_id: str) -> dict | None:
        """The live owner of the run, or None when nobody (or only a stale lock) holds it."""
        path = self.run_dir(experiment, run_id) / "lock"
        if not path.exists():
            return None
        owner, stale = read_lock(path)
        return None if stale else owner

    # -- status
    def status_record(self, experiment: str, run_id: str) -> dict:
        path = self.run_dir(experiment, run_id) / "status.json"
        return read_json_file(path) if path.exists() else {}

    def status(self, experiment: str, run_id: str) -> str:
        record = self.status_record(experiment, run_id)
        status = record.get("status", "pending")
        if status not in STATUSES:
            raise StoreError(f"{self.run_dir(experiment, run_id) / 'status.json'} is damaged (status "
                             f"{status!r}): {_hint(self.run_dir(experiment, run_id) / 'status.json')}")
        return status

    def is_finished(self, experiment: str, run_id: str) -> bool:
        """Status done or diverged and every file a finished run writes in place (`missing_files`)."""
        return self.status(experiment, run_id) in FINISHED and not self.missing_files(experiment, run_id)

    def missing_files(self, experiment: str, run_id: str) -> list[str]:
        """The files a finished run writes (FINISHED_FILES) that its folder lacks. A copy or sync cut short leaves
        exactly this: status.json sorts first and arrives first, so a status alone never makes a run finished."""
        run_dir = self.run_dir(experiment, run_id)
        return [name for name in FINISHED_FILES if not (run_dir / name).is_file()]

    def unusable(self, cfg, run_id: str) -> str | None:
        """Why the stored run `run_id` cannot stand for `cfg` (None: it is finished and can). The one check every
        reader of the store makes (the runner before reusing a run, the runs frame of `run` and `report`):
        - a finished status with a missing file: not finished (the run trains again; `report` leaves it out);
        - cfg.trainer.fuse false and the run trained in a fused group: not the lone run asked for;
        - a stored config.yaml that differs from cfg under the same hash: UserError naming the run (a default
          changed, or the file was edited), never today's label on another config's numbers."""
        exp = cfg.experiment
        status = self.status(exp, run_id)
        if status not in FINISHED:
            return f"not finished (status {status})"
        missing = self.missing_files(exp, run_id)
        if missing:
            return f"its status is {status} but its {', '.join(missing)} missing (an interrupted copy?)"
        self.check_config(cfg, run_id)
        if not cfg.trainer.fuse and self.status_record(exp, run_id).get("group"):
            return "trained in a fused group, and trainer.fuse=false asks for the run trained alone"
        return None

    def check_config(self, cfg, run_id: str) -> None:
        """The config stored with a run is the config asked for today. Keys it did not store (options added
        since) are taken at their default; a key whose value differs means a default changed (or config.yaml was
        edited) under the same hash: stop, rather than label old numbers with today's config."""
        stored = flatten(self.stored_config(cfg.experiment, run_id))
        today = flatten(to_dict(cfg))
        diffs = [(k, stored[k], v) for k, v in today.items()
                 if k in stored and not in_identity_exempt(k) and not _same_value(stored[k], v)]
        if diffs:
            what = "; ".join(f"{k}: stored {a!r}, today {b!r}" for k, a, b in diffs)
            pins = " ".join(f"{k}={a}" for k, a, _ in diffs)
            raise UserError(f"run {cfg.experiment}/{run_id} ({cfg.variant}) was trained with another config under "
                            f"the same hash (a default changed, or its config.yaml was edited): {what}. Rerun it "
                            f"with --force, or pin the old value: {pins}")

    def set_status(self, experiment: str, run_id: str, status: str, **extra) -> None:
        assert status in STATUSES, status
        record = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
                  "pid": os.getpid(), **extra}
        for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
            if key in os.environ:
                record[key.lower()] = os.environ[key]
        atomic_write(self.run_dir(experiment, run_id) / "status.json", strict_json(record, indent=1))

    # -- attempts
    def start_fresh(self, experiment: str, run_id: str) -> None:
        """A new attempt starts from nothing: an earlier attempt's rows, summary and W&B files are removed, so
        they can never be merged into this one's (only a resume from a checkpoint continues an attempt)."""
        run_dir = self.run_dir(experiment, run_id)
        for name in (*ATTEMPT_FILES, "checkpoint.ckpt"):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def set_aside(self, path: Path) -> Path:
        """Moves a damaged file out of the way (kept, for a post-mortem), returns where it went."""
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        return aside

    # -- files
    def write_text(self, experiment: str, run_id: str, name: str, text: str) -> Path:
        path = self.run_dir(experiment, run_id) / name
        atomic_write(path, text)
        return path

    def write_json(self, experiment: str, run_id: str, name: str, data: dict) -> Path:
        return self.write_text(experiment, run_id, name, strict_json(data, indent=1, default=float))

    def write_frame(self, experiment: str, run_id: str, name: str, frame: pd.DataFrame) -> Path:
        return self.write_text(experiment, run_id, name, frame.to_csv(index=False))

    def read_json(self, experiment: str, run_id: str, name: str) -> dict:
        path = self.run_dir(experiment, run_id) / name
        return read_json_file(path) if path.exists() else {}

    def read_frame(self, experiment: str, run_id: str, name: str) -> pd.DataFrame:
        path = self.run_dir(experiment, run_id) / name
        return read_csv_file(path) if path.exists() and path.stat().st_size else pd.DataFrame()

    def summary(self, experiment: str, run_id: str) -> dict:
        return self.read_json(experiment, run_id, "summary.json")

    def stored_config(self, experiment: str, run_id: str) -> dict:
        path = self.run_dir(experiment, run_id) / "config.yaml"
        if not path.exists():
            return {}
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            data = None
        if not isinstance(data, dict):
            raise StoreError(f"{path} is damaged (not a config mapping): {_hint(path)}")
        return data

    def run_ids(self, experiment: str) -> list[str]:
        base = self.experiment_dir(experiment)
        return sorted(p.name for p in base.iterdir() if (p / "config.yaml").exists()) if base.exists() else []

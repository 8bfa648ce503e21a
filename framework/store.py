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
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pandas as pd

from framework.registry import UserError

FINISHED = ("done", "diverged")
STATUSES = ("pending", "running", "done", "diverged", "failed")
# What a fresh attempt of a run removes: the files an earlier attempt wrote (a resume keeps them).
ATTEMPT_FILES = ("metrics.csv", "diagnostics.csv", "summary.json", "lightning", "wandb", "checkpoint.tmp")


class StoreError(UserError):
    """A store file that cannot be read as written (truncated, not JSON/CSV): named, with what to do."""


class RunBusy(Exception):
    """Another live process owns the run (its lock is fresh)."""

    def __init__(self, run_dir: Path, owner: dict):
        self.run_dir, self.owner = run_dir, owner
        super().__init__(f"{run_dir} is owned by {describe_owner(owner)}")


def describe_owner(owner: dict) -> str:
    job = f", SLURM job {owner['slurm_job']}" if owner.get("slurm_job") else ""
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}{job}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600: give the file the mode open() would
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict_json(data, **kwargs) -> str:
    """JSON that every parser reads: NaN and infinities become null (json.dumps writes bare NaN otherwise)."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy / torch scalars
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v
    if kwargs.get("default") is not None:  # what `default` turns an object into is cleaned too
        default = kwargs.pop("default")
        kwargs["default"] = lambda o: clean(default(o))
    return json.dumps(clean(data), allow_nan=False, **kwargs)


def _hint(path: Path) -> str:
    return f"delete {path.name}, or rerun with --force to train the run again"


def read_json_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is damaged (not valid JSON: {e.msg if hasattr(e, 'msg') else e}): "
                         f"{_hint(path)}") from None


def read_csv_file(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is damaged ({str(e).strip().splitlines()[0]}): {_hint(path)}") from None


class RunLock:
    """Ownership of a run folder that holds on a shared cluster filesystem: an exclusive create of `lock`
    (O_CREAT | O_EXCL, atomic on local disks and NFSv3+; flock over NFS is not relied on) holding the owner's
    host, pid and SLURM job, and a heartbeat: a thread touches the file every HEARTBEAT_S seconds.

    A lock is stale, and may be taken over, when its owner is on this host and its pid is gone, or when its
    heartbeat is older than STALE_S (a crashed node, a killed job; default 120 s, $REPRO_LOCK_STALE_S).
    The owner checks on every heartbeat that the file is still its own; one that lost it (its heartbeat
    stopped for longer than STALE_S, e.g. a suspended process) must not write results: see `lost`.
    """
    HEARTBEAT_S = 10.0

    def __init__(self, path: Path):
        self.path = path
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def stale_after() -> float:
        return float(os.environ.get("REPRO_LOCK_STALE_S", 120))

    def owner_record(self) -> dict:
        from framework.preemption import slurm_job_id
        return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": slurm_job_id(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "token": self.token}

    def acquire(self) -> "RunLock":
        """Takes the lock, taking over a stale one; raises RunBusy when a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                owner, stale = read_lock(self.path)
                if not stale:
                    raise RunBusy(self.path.parent, owner) from None
                _break_stale(self.path, owner)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.owner_record()))
            self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat {self.path}")
            self._thread.start()
            return self
        owner, _ = read_lock(self.path)
        raise RunBusy(self.path.parent, owner)

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            if not self.owned():
                self.lost = True
                return
            try:
                os.utime(self.path)
            except OSError:
                self.lost = True
                return

    def owned(self) -> bool:
        try:
            return json.loads(self.path.read_text()).get("token") == self.token
        except (OSError, json.JSONDecodeError):
            return False

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.owned():
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def read_lock(path: Path) -> tuple[dict, bool]:
    """(owner record, stale?) of a lock file; ({}, False) for a lock being written right now."""
    try:
        age = time.time() - path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return {}, True
    try:
        owner = json.loads(text) if text else {}
    except json.JSONDecodeError:
        owner = {}
    if owner.get("host") == socket.gethostname() and owner.get("pid"):
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return owner, True
        except PermissionError:
            pass  # alive, another user's
    return owner, age > RunLock.stale_after()


def _break_stale(path: Path, owner: dict) -> None:
    """Moves a stale lock aside. A rename is atomic, so of several processes breaking it one wins; a winner that
    finds it moved a lock created since it looked (another token) puts that one back and gives way."""
    aside = path.with_name(f"lock.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        moved = json.loads(aside.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        moved = {}
    if owner and moved.get("token") != owner.get("token"):
        try:
            os.link(aside, path)  # atomic: fails if yet another lock exists
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


class RunStore:
    def __init__(self, root: str | Path = "runs"):
        self.root = Path(root)

    # -- paths
    def run_dir(self, experiment: str, run_id: str) -> Path:
        return self.root / experiment / run_id

    def checkpoint(self, experiment: str, run_id: str) -> Path:
        return self.run_dir(experiment, run_id) / "checkpoint.ckpt"

    def lightning_dir(self, experiment: str, run_id: str) -> Path:
        return self.run_dir(experiment, run_id) / "lightning"

    def slurm_dir(self, experiment: str) -> Path:
        return self.root / experiment / "_slurm"

    def group_dir(self, experiment: str, run_ids: list[str]) -> Path:
        """Where a fused group keeps its checkpoint and member list: named by its members, in order."""
        name = hashlib.sha256(",".join(run_ids).encode()).hexdigest()[:12]
        return self.root / experiment / "_groups" / name

    def group_checkpoint(self, experiment: str, run_ids: list[str]) -> Path:
        return self.group_dir(experiment, run_ids) / "checkpoint.ckpt"

    def saved_groups(self, experiment: str) -> list[list[str]]:
        """Member lists of the fused groups that left a checkpoint (a preempted group resumes as that group)."""
        groups = []
        for path in sorted((self.root / experiment / "_groups").glob("*/members.json")):
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
        return self.status(experiment, run_id) in FINISHED

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
        import yaml
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
        base = self.root / experiment
        return sorted(p.name for p in base.iterdir() if (p / "config.yaml").exists()) if base.exists() else []

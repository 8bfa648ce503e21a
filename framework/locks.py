"""Ownership of a run folder: one live process at a time holds `<run>/lock` (RunLock), on one machine or across a
cluster's shared filesystem; a lock whose owner is gone is stale and is broken (read_lock, _break_stale)."""
from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
import uuid
from pathlib import Path

from framework.files import StoreError
from framework.preemption import slurm_job_id


class RunBusy(Exception):
    """Another live process owns the run (its lock is fresh)."""

    def __init__(self, run_dir: Path, owner: dict):
        self.run_dir, self.owner = run_dir, owner
        super().__init__(f"{run_dir} is owned by {describe_owner(owner)}")


def describe_owner(owner: dict) -> str:
    job = f", SLURM job {owner['slurm_job']}" if owner.get("slurm_job") else ""
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}{job}"


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
        return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                "slurm_job": slurm_job_id(),
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
            record = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return False
        return isinstance(record, dict) and record.get("token") == self.token

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
    """(owner record, stale?) of a lock file; ({}, False) for a lock being written right now (empty).

    Stale: its owner is on this host and its pid is gone or is another process now (the pid's start time differs
    from the one recorded); its heartbeat is older than STALE_S; its mtime lies further in the future than STALE_S
    (no heartbeat makes that; a clock set back, a copied file); or it holds something this module never writes
    (not a JSON object, a pid that is no pid)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}, True
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path} is not a lock file (a {'folder' if stat.S_ISDIR(st.st_mode) else 'special file'}"
                         f"): remove it; a run's lock is a file this tool writes")
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, True
    except (OSError, UnicodeDecodeError):
        return {}, True  # unreadable: not one of ours
    if not text:
        return {}, False  # being written right now (created, then written)
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        return {}, True
    if not isinstance(owner, dict):
        return {}, True
    pid = owner.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2 ** 31:
        return owner, True
    age = time.time() - st.st_mtime
    if age < -RunLock.stale_after():
        return owner, True
    if owner.get("host") == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return owner, True
        except PermissionError:
            pass  # alive, another user's
        started = _process_start(pid)
        if owner.get("pid_start") is not None and started is not None and started != owner["pid_start"]:
            return owner, True  # the pid was reused by another process
    return owner, age > RunLock.stale_after()


def _process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux /proc; None elsewhere): with the pid, names one
    process, where a pid alone may since belong to another."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


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

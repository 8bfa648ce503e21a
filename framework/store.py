"""The local run store: runs/<experiment>/<config-hash>/ with config, metrics, diagnostics, status, summary.

Every file is written to a temporary name and renamed into place, so concurrent array tasks and killed jobs
never leave a half-written file. A run is finished when its status is done or diverged.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import pandas as pd

FINISHED = ("done", "diverged")
STATUSES = ("pending", "running", "done", "diverged", "failed")


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunStore:
    def __init__(self, root: str | Path = "runs"):
        self.root = Path(root)

    def run_dir(self, experiment: str, run_id: str) -> Path:
        return self.root / experiment / run_id

    def status(self, experiment: str, run_id: str) -> str:
        path = self.run_dir(experiment, run_id) / "status.json"
        if not path.exists():
            return "pending"
        return json.loads(path.read_text())["status"]

    def is_finished(self, experiment: str, run_id: str) -> bool:
        return self.status(experiment, run_id) in FINISHED

    def set_status(self, experiment: str, run_id: str, status: str, **extra) -> None:
        assert status in STATUSES, status
        record = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
                  "pid": os.getpid(), **extra}
        for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
            if key in os.environ:
                record[key.lower()] = os.environ[key]
        atomic_write(self.run_dir(experiment, run_id) / "status.json", json.dumps(record, indent=1))

    def write_text(self, experiment: str, run_id: str, name: str, text: str) -> Path:
        path = self.run_dir(experiment, run_id) / name
        atomic_write(path, text)
        return path

    def write_json(self, experiment: str, run_id: str, name: str, data: dict) -> Path:
        return self.write_text(experiment, run_id, name, json.dumps(data, indent=1, default=float))

    def write_frame(self, experiment: str, run_id: str, name: str, frame: pd.DataFrame) -> Path:
        return self.write_text(experiment, run_id, name, frame.to_csv(index=False))

    def read_json(self, experiment: str, run_id: str, name: str) -> dict:
        path = self.run_dir(experiment, run_id) / name
        return json.loads(path.read_text()) if path.exists() else {}

    def read_frame(self, experiment: str, run_id: str, name: str) -> pd.DataFrame:
        path = self.run_dir(experiment, run_id) / name
        return pd.read_csv(path) if path.exists() and path.stat().st_size else pd.DataFrame()

    def summary(self, experiment: str, run_id: str) -> dict:
        return self.read_json(experiment, run_id, "summary.json")

    def run_ids(self, experiment: str) -> list[str]:
        base = self.root / experiment
        return sorted(p.name for p in base.iterdir() if (p / "config.yaml").exists()) if base.exists() else []

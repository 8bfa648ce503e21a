"""`repro run all` with recipes side by side: each recipe's suite runs as its own `repro run NAME` process, at most
`workers` at once, longest first; this process forwards stop signals to them and gathers their verdict.json files.

A run trains on one thread (framework/runner.py, set_threads), so a machine with C cores fits C suites at once:
on this 2-core machine two suites side by side finish `run all` in about half the time of one after another
(reports/benchmarks.md). Each child is an ordinary `repro run`: the store's locks, resume after preemption and
W&B are theirs as for any run. By hand because the children are commands whose exit codes and signals matter
(concurrent.futures would hide both)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from framework.preemption import STOPS

# Wall seconds each recipe took at its cpu scale on the 2-core reference machine, two side by side (reports/
# benchmarks.md): only the order in which suites start (longest first keeps the workers evenly loaded); a recipe
# missing here starts last.
CPU_SECONDS = {"vanishing_gradients": 204, "double_descent": 158, "adam_vs_sgd": 118, "step_size": 98,
               "random_labels": 96, "regularisation": 90, "sgd_temperature": 85, "lr_scaling": 81, "gradient_noise": 77,
               "edge_of_stability": 62, "initialisation": 62}


def default_workers() -> int:
    """One suite per CPU this process may run on (its affinity: a SLURM allocation, not the whole node)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def run_side_by_side(names: list[str], child_args, log_dir: Path, workers: int, console) -> tuple[dict, int | None]:
    """Runs `repro run NAME <child_args(NAME)>` for every name, `workers` at a time; returns each name's exit code
    and the stop signal forwarded to the children (None if none came). Each child's output goes to
    log_dir/<name>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    queue = sorted(names, key=lambda n: -CPU_SECONDS.get(n, 0))
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    codes: dict[str, int] = {}
    stop: list[int] = []

    def forward(signum, frame):
        stop.append(signum)
        for proc, _, _ in running.values():
            if proc.poll() is None:
                proc.send_signal(signum)
    previous = {s: signal.signal(s, forward) for s in STOPS}
    try:
        while queue or running:
            while queue and len(running) < workers and not stop:
                name = queue.pop(0)
                log = open(log_dir / f"{name}.log", "w")
                # the child's own session: a Ctrl-C at the terminal reaches it once, through this process
                proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "run", name, *child_args(name)],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                running[name] = (proc, time.time(), log)
                console.print(f"started {name} (log: {log_dir / f'{name}.log'})")
            for name, (proc, started, log) in list(running.items()):
                if proc.poll() is not None:
                    log.close()
                    codes[name] = proc.returncode
                    del running[name]
                    console.print(f"finished {name} in {time.time() - started:.0f} s (exit status {proc.returncode})")
            if stop and not running:
                break
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return codes, (stop[0] if stop else None)


def read_verdict(path: Path, since: float) -> dict | None:
    """A child's verdict.json, if it wrote one after `since` (an older file is a previous command's)."""
    if not path.exists() or path.stat().st_mtime < since:
        return None
    return json.loads(path.read_text())

"""`repro run all` with recipes side by side: each recipe's suite runs as its own `repro run NAME` process, at most
`workers` at once, longest first; this process forwards stop signals to them and gathers their verdict.json files.

A run trains on one thread (framework/process.py, set_threads), so a machine with C cores fits C suites at once:
on this 2-core machine two suites side by side finish `run all` in about two thirds of the time of one after
another (reports/benchmarks.md). Each child is an ordinary `repro run NAME` (the same command function, forked
from this process once it has imported torch, Lightning and W&B, which cost a fresh interpreter about 10 s of CPU
each): the store's locks, resume after preemption and W&B are the child's as for any run. By hand because the
children are commands whose exit codes and signals matter (concurrent.futures would hide both, and its
processes would not be the command)."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from framework.files import read_json_file
from framework.preemption import STOPS
from framework.suite import PROGRESS_FILE

# Wall seconds each recipe took at its cpu scale on the 2-core reference machine, two side by side (reports/
# benchmarks.md): only the order in which suites start (longest first keeps the workers evenly loaded); a recipe
# missing here starts last.
CPU_SECONDS = {"vanishing_gradients": 204, "double_descent": 158, "adam_vs_sgd": 118, "step_size": 98,
               "random_labels": 96, "regularisation": 90, "sgd_temperature": 85, "lr_scaling": 81, "gradient_noise": 77,
               "edge_of_stability": 62, "initialisation": 62, "implicit_regularisation": 58}


def default_workers() -> int:
    """One suite per GPU on a node with several (each child is given its own: `gpu_of`), else one per CPU this
    process may run on (its affinity: a SLURM allocation, not the whole node)."""
    if len(visible_gpus()) > 1:
        return len(visible_gpus())
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES' list when it is set (a SLURM allocation sets it), else
    every device torch counts (torch.cuda.device_count reads NVML and creates no CUDA context, so children forked
    after it can still use the GPU)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_of(running_gpus: list[str], gpus: list[str]) -> str | None:
    """The GPU a new child is given: the one the fewest running children use (None without GPUs)."""
    if not gpus:
        return None
    return min(gpus, key=lambda g: (running_gpus.count(g), gpus.index(g)))


def progress_file(log_dir: Path, name: str) -> Path:
    """Where recipe `name`'s child writes its suite's progress (framework/suite.py), for the parent to show."""
    return log_dir / f"{name}.progress.json"


def run_side_by_side(names: list[str], child_args: list[str], log_dir: Path, workers: int,
                     console, command: Callable[[list[str]], None],
                     gpus: list[str] | None = None) -> tuple[dict, int | None]:
    """Runs `repro run NAME <child_args>` for every name (command(args): the CLI, called in a forked child),
    `workers` at a time; returns each name's exit code
    and the stop signal forwarded to the children (None if none came). Each child's output goes to
    log_dir/<name>.log. On GPUs (`gpus`, default: the visible ones) each child sees one, CUDA_VISIBLE_DEVICES set to
    the GPU the fewest running children use: on a node of several, one recipe per GPU."""
    log_dir.mkdir(parents=True, exist_ok=True)
    _import_once()
    gpus = visible_gpus() if gpus is None else gpus
    queue = sorted(names, key=lambda n: -CPU_SECONDS.get(n, 0))
    running: dict[int, tuple[str, float]] = {}
    on_gpu: dict[int, str] = {}
    codes: dict[str, int] = {}
    stop: list[int] = []

    def forward(signum, frame):
        stop.append(signum)
        for pid in running:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
    previous = {s: signal.signal(s, forward) for s in STOPS}
    shown = ChildProgress(console, log_dir)
    try:
        while queue or running:
            while queue and len(running) < workers and not stop:
                name = queue.pop(0)
                gpu = gpu_of(list(on_gpu.values()), gpus)
                pid = _fork_command(command, ["run", name, *child_args], log_dir / f"{name}.log",
                                    progress_file(log_dir, name), previous, gpu)
                running[pid] = (name, time.time())
                shown.start(name)
                if gpu is not None:
                    on_gpu[pid] = gpu
                console.print(f"started {name}{f' on GPU {gpu}' if gpu is not None else ''} "
                              f"(log: {log_dir / f'{name}.log'})")
            for pid, (name, started) in list(running.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[name] = os.waitstatus_to_exitcode(status)
                    del running[pid]
                    on_gpu.pop(pid, None)
                    shown.finish(name)
                    console.print(f"finished {name} in {time.time() - started:.0f} s (exit status {codes[name]})")
            if stop and not running:
                break
            shown.update([name for name, _ in running.values()])
            time.sleep(0.2)
    finally:
        shown.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return codes, (stop[0] if stop else None)


class ChildProgress:
    """Each running recipe's progress, from the file its child writes (framework/suite.py): a bar per recipe in a
    terminal, else a line every HEARTBEAT_S seconds naming each running recipe's runs done of its total."""

    def __init__(self, console, log_dir: Path):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from framework.suite import HEARTBEAT_S
        self.console, self.log_dir, self.every, self.last = console, log_dir, HEARTBEAT_S, time.time()
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), console=console) if console.is_terminal else None
        self.tasks: dict[str, int] = {}
        if self.bars is not None:
            self.bars.start()

    def _read(self, name: str) -> dict | None:
        try:
            return read_json_file(progress_file(self.log_dir, name))
        except Exception:  # not written yet, or mid-replace: the next poll reads it
            return None

    def start(self, name: str) -> None:
        progress_file(self.log_dir, name).unlink(missing_ok=True)  # a previous command's
        if self.bars is not None:
            self.tasks[name] = self.bars.add_task(name, total=None)

    def finish(self, name: str) -> None:
        if self.bars is not None and name in self.tasks:
            self.bars.remove_task(self.tasks.pop(name))

    def update(self, running: list[str]) -> None:
        now = time.time()
        if self.bars is None and now - self.last < self.every:
            return
        states = {name: self._read(name) for name in running}
        if self.bars is not None:
            for name, state in states.items():
                if state and name in self.tasks:
                    self.bars.update(self.tasks[name], total=state["total"], completed=state["done"])
            return
        self.last = now
        parts = [f"{name} {s['done']:.0f} of {s['total']:.0f} runs"
                 + (f" (about {s['eta_s']:.0f} s left)" if s.get("eta_s") else "") if s else f"{name} starting"
                 for name, s in states.items()]
        if parts:
            self.console.print("running: " + "; ".join(parts), highlight=False)

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()


def _import_once() -> None:
    """What every suite imports, imported here once so that each forked child starts with it."""
    import pytorch_lightning  # noqa: F401
    import wandb  # noqa: F401

    import experiments  # noqa: F401
    import framework.runner  # noqa: F401
    import framework.suite  # noqa: F401


def _fork_command(command: Callable[[list[str]], None], args: list[str], log: Path, progress: Path, handlers: dict,
                  gpu: str | None = None) -> int:
    """A child process running the CLI on args, its output in `log`, its suite's progress in `progress`, in its own
    session (a Ctrl-C at the terminal reaches it once, through this process), seeing only `gpu` when given; returns
    its pid. The child exits with the command's exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        os.environ[PROGRESS_FILE] = str(progress)
        for s, handler in handlers.items():  # the command installs its own on top
            signal.signal(s, handler)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        command(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - whatever ends the child, the parent reads its status
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def read_verdict(path: Path, since: float) -> dict | None:
    """A child's verdict.json, if it wrote one after `since` (an older file is a previous command's); a damaged one
    is named (StoreError)."""
    if not path.exists() or path.stat().st_mtime < since:
        return None
    return read_json_file(path)

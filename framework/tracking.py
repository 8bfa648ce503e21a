"""W&B tracking: online only when an API key and the network are both there, else offline; never waits."""
from __future__ import annotations

import functools
import netrc
import os
import socket
import subprocess
from pathlib import Path

from framework.config import RunConfig, to_dict
from framework.registry import UserError

WANDB_HOST = "api.wandb.ai"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_server() -> tuple[str, int]:
    """(host, port) of the W&B server: $WANDB_BASE_URL (a self-hosted server), else api.wandb.ai:443."""
    from urllib.parse import urlsplit
    url = urlsplit(os.environ.get("WANDB_BASE_URL") or f"https://{WANDB_HOST}")
    return url.hostname or WANDB_HOST, url.port or (80 if url.scheme == "http" else 443)


def _reachable(timeout: float = 1.5) -> bool:
    return _connects(*wandb_server(), timeout)


@functools.lru_cache(maxsize=4)
def _connects(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(cfg: RunConfig) -> str:
    """'online', 'offline' or 'disabled'. WANDB_MODE in the environment wins over the config."""
    env = os.environ.get("WANDB_MODE", "").lower()
    mode = env if env in ("online", "offline", "disabled") else cfg.tracking.mode
    if mode == "dryrun":
        mode = "offline"
    if mode == "auto":
        mode = "online" if _has_api_key() and _reachable() else "offline"
    elif mode == "online" and not (_has_api_key() and _reachable()):
        # asked for online and it cannot be: say so once, before any run starts (W&B itself waits init_timeout,
        # 60 s, per run, then fails each with an error naming another run)
        why = "no W&B API key (run `wandb login` or set WANDB_API_KEY)" if not _has_api_key() else \
            "the W&B server {}:{} cannot be reached from this machine".format(*wandb_server())
        raise UserError(f"tracking.mode=online: {why}; use tracking.mode=offline and `repro sync` later, or "
                        f"tracking.mode=auto (online when it can be, else offline)")
    return mode


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The git SHA of the framework's checkout, with a dirty flag; empty outside a repository."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"git_sha": sha, "git_dirty": str(bool(dirty)).lower()} if sha else {}


def _read_requirements_once() -> None:
    """W&B enumerates every installed distribution for each run's requirements list: 0.14 s a run (measured),
    K times for a fused group of K runs. The environment does not change within a process, so the list is read
    once; W&B still records it for every run. (A patch of wandb.util.working_set, which W&B imports at each run
    start; where a W&B version lacks it, nothing is patched.)"""
    import wandb.util
    original = getattr(wandb.util, "working_set", None)
    if original is None or getattr(original, "read_once", False):
        return
    cached = functools.cache(lambda: list(original()))

    def working_set():
        return iter(cached())
    working_set.read_once = True
    wandb.util.working_set = working_set


def wandb_group(experiment: str, scale: str = "") -> str:
    """A suite's W&B group, its training runs' and its verdict run's: the experiment at its scale (a smoke and a cpu
    run of one variant are not averaged together)."""
    return f"{experiment}-{scale}" if scale else experiment


def wandb_id(run_id: str, attempt: int) -> str:
    """The W&B run of an attempt: the config hash for the first, so a resume from the checkpoint (a requeue,
    a relaunch) continues the same W&B run; a fresh attempt (`--force`, a retry after a failure) starts its own
    W&B run, `<hash>-<attempt>`, instead of appending its history to the old one's."""
    return run_id if attempt <= 1 else f"{run_id}-{attempt}"


def make_wandb_logger(cfg: RunConfig, run_id: str, save_dir: Path, scale: str = "", several: bool = False,
                      attempt: int = 1, axes: dict | None = None):
    """A WandbLogger for this attempt of the run (its id: `wandb_id`). several: one of the W&B runs of a fused
    group, open side by side in this process. axes: the run's grid point, in the config as `grid` (a dashboard
    groups and filters by `grid.<axis>`; a named variant's label is its value)."""
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb
    from pytorch_lightning.loggers import WandbLogger
    _read_requirements_once()

    # group: wandb_group; job_type: the variant; tags: experiment, scale and seed, so a seed's runs can be filtered
    tags = list(dict.fromkeys([cfg.experiment, *([scale] if scale else []), f"seed:{cfg.seed}", *cfg.tracking.tags]))
    save_dir.mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(
        project=cfg.tracking.project, entity=cfg.tracking.entity or None,
        group=wandb_group(cfg.experiment, scale),
        job_type=cfg.variant[:64], name=f"{cfg.variant}-{run_id}"[:128], tags=tags, id=wandb_id(run_id, attempt),
        resume="allow", mode=mode, save_dir=str(save_dir),
        config={**to_dict(cfg), "run_id": run_id, "attempt": attempt, "grid": dict(axes or {}), "code": code_version()},
        settings=wandb.Settings(init_timeout=60, console="off", x_disable_stats=True, x_disable_meta=False),
        **({"reinit": "create_new"} if several else {}),
    )
    # Lightning always passes `anonymous`, which wandb now only warns about.
    logger._wandb_init.pop("anonymous", None)
    return logger


def finish_run(run, timeout: float = 30.0) -> None:
    """Finishes a W&B run and waits until its transaction log (the .wandb file `repro sync` uploads) holds the
    exit record: wandb's service closes that file after `finish()` returns, so a file read or a process killed
    right after could otherwise see a run with none of its records."""
    import time

    from framework.wandb_files import is_complete
    path = Path(getattr(run.settings, "sync_file", "") or "")
    run.finish()
    deadline = time.monotonic() + timeout
    while path.is_file():
        try:
            if is_complete(path):
                return
        except Exception:  # a record half-written at this instant: read again
            pass
        if time.monotonic() > deadline:
            print(f"warning: the W&B record {path} is still incomplete {timeout:.0f} s after its run finished",
                  flush=True)
            return
        time.sleep(0.05)

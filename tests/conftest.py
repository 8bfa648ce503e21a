import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]

# A tiny but real run: Gaussian classes, a 2-hidden-layer MLP, a couple of epochs, CPU, no W&B.
TINY = {
    "experiment": "test", "data.name": "gaussian", "data.n_samples": 240, "data.n_features": 6,
    "data.n_classes": 3, "data.batch_size": 32, "model.depth": 2, "model.width": 8,
    "trainer.max_epochs": 2, "trainer.accelerator": "cpu", "tracking.mode": "disabled",
    "diagnostics.every_n_steps": 2, "trainer.log_every_n_steps": 1,
}


@pytest.fixture
def tiny():
    from framework.config import RunConfig, apply
    return lambda **overrides: apply(RunConfig(), {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}})


@pytest.fixture
def store(tmp_path):
    from framework.store import RunStore
    return RunStore(tmp_path / "runs")


def repro(*args, env=None, cwd=None, timeout=600):
    """Runs the real CLI in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run([sys.executable, "-m", "framework.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=timeout)

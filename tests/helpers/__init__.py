"""What several test modules share (test modules never import each other): the repository root, the real CLI in
a subprocess, the shared MNIST files, CIFAR-shaped files, and the tiny run config of tests/conftest.py's fixtures."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A tiny but real run: Gaussian classes, a 2-hidden-layer MLP, a couple of epochs, CPU, no W&B.
TINY = {
    "experiment": "test", "data.name": "gaussian", "data.n_samples": 240, "data.n_features": 6,
    "data.n_classes": 3, "data.batch_size": 32, "model.depth": 2, "model.width": 8,
    "trainer.max_epochs": 2, "trainer.accelerator": "cpu", "tracking.mode": "disabled",
    "diagnostics.every_n_steps": 2, "trainer.log_every_n_steps": 1,
}


def repro(*args, env=None, cwd=None, timeout=600):
    """Runs the real CLI in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run([sys.executable, "-m", "framework.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=timeout)


# Real MNIST / Fashion-MNIST in torchvision's layout (.gz only), where the machine has them; never committed.
SHARED_DATA = Path(os.environ.get("REPRO_TEST_DATA", ROOT.parent / "shared" / "data"))
# where unpacked MNIST files go: one per test session, not the user's ~/.cache
os.environ.setdefault("REPRO_CACHE", tempfile.mkdtemp(prefix="repro-cache-"))


def shared_data(folder: str) -> Path:
    """The shared data root when it holds `folder` (e.g. 'MNIST'); skips the test, with the reason, when not."""
    if not (SHARED_DATA / folder / "raw" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"no real {folder} files under {SHARED_DATA} (set REPRO_TEST_DATA to torchvision's layout)")
    return SHARED_DATA


def write_cifar(root: Path, name: str = "cifar10", n_train: int = 100, n_test: int = 40, seed: int = 0) -> Path:
    """Small CIFAR-shaped data in the dataset's own on-disk format (python pickles, uint8 rows of 3x32x32), with
    a class-dependent colour so it is learnable; no CIFAR copy is available offline. Load with data.verify=false
    (the MD5s are not the real ones)."""
    import pickle

    import numpy as np
    rng = np.random.default_rng(seed)
    n_classes, folder = (10, "cifar-10-batches-py") if name == "cifar10" else (100, "cifar-100-python")
    key = "labels" if name == "cifar10" else "fine_labels"

    def batch(n):
        labels = rng.integers(0, n_classes, n)
        data = rng.integers(0, 120, (n, 3, 32, 32)) + (labels * 97 % 136)[:, None, None, None]
        return {"data": data.astype(np.uint8).reshape(n, -1), key: labels.tolist()}

    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    files = ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta", "label_names") \
        if name == "cifar10" else (["train"], "test", "meta", "fine_label_names")
    for f in files[0]:
        (out / f).write_bytes(pickle.dumps(batch(n_train // len(files[0]))))
    (out / files[1]).write_bytes(pickle.dumps(batch(n_test)))
    (out / files[2]).write_bytes(pickle.dumps({files[3]: [f"class_{i}" for i in range(n_classes)]}))
    return root


def cli(*args, env=None):
    """The CLI in this process (typer's runner: no interpreter start, ~12 s a case on 2 cores saved), for bad-input
    cases; the result has exit_code, stdout and stderr. Each exit code also runs once as a real process (`repro`)."""
    from typer.testing import CliRunner

    from framework.cli import app
    return CliRunner().invoke(app, [str(a) for a in args], env={"WANDB_MODE": "offline", **(env or {})})

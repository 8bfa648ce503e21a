"""Fixtures every test module may ask for: a tiny run config, a scratch store, CIFAR-shaped files."""
import os
import subprocess

import pytest

from tests.helpers import ROOT, TINY, write_cifar

os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def tiny():
    from framework.config import RunConfig
    from framework.overrides import apply
    return lambda **overrides: apply(RunConfig(), {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}})


@pytest.fixture
def store(tmp_path):
    from framework.store import RunStore
    return RunStore(tmp_path / "runs")


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, "cifar10")
    write_cifar(root, "cifar100", n_train=200)
    return root


@pytest.fixture(scope="session")
def slurm():
    """The local SLURM (slurm/local-cluster.sh), started once per test worker; tests using it share one worker
    (pytest.mark.xdist_group("slurm")). Skips where it cannot start (not root)."""
    if os.geteuid() != 0:
        pytest.skip("starting the local SLURM needs root (CI runs as root)")
    out = subprocess.run([str(ROOT / "slurm" / "local-cluster.sh"), "start"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    conf = out.stdout.strip().split("=", 1)[1]
    os.environ["SLURM_CONF"] = conf
    return {"SLURM_CONF": conf}

"""Fixtures every test module may ask for: a tiny run config, a scratch store, CIFAR-shaped files."""
import os

import pytest

from tests.helpers import TINY, write_cifar

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

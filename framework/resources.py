"""Where the recipes' YAML (configs/) and the cluster files (slurm/) are, in a checkout and in an install.

A checkout (and an editable install) reads them in place; a plain `pip install .` copies them into the package
as framework/configs and framework/slurm (pyproject.toml maps them), so every command works from any directory.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent


def resource_dir(name: str) -> Path:
    """configs or slurm: the installed copy when there is one, else the checkout's top-level folder."""
    installed = PACKAGE / name
    return installed if installed.is_dir() else CHECKOUT / name

"""Store files written whole or not at all, and read back or named as damaged: atomic writes with the user's umask,
JSON every parser reads, and the store's errors (a damaged file, a full disk)."""
from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path

import pandas as pd

from framework.registry import UserError


class StoreError(UserError):
    """A store file that cannot be read as written (truncated, not JSON/CSV): named, with what to do."""


class StoreFull(Exception):
    """The store's disk is full: what was finished is stored, the rest trains again on the next launch."""


def disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600: give the file the mode open() would
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict_json(data, **kwargs) -> str:
    """JSON that every parser reads: NaN and infinities become null (json.dumps writes bare NaN otherwise)."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy / torch scalars
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v
    if kwargs.get("default") is not None:  # what `default` turns an object into is cleaned too
        default = kwargs.pop("default")
        kwargs["default"] = lambda o: clean(default(o))
    return json.dumps(clean(data), allow_nan=False, **kwargs)


def _hint(path: Path) -> str:
    return f"delete {path.name}, or rerun with --force to train the run again"


def read_json_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is damaged (not valid JSON: {e.msg if hasattr(e, 'msg') else e}): "
                         f"{_hint(path)}") from None


def read_csv_file(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is damaged ({str(e).strip().splitlines()[0]}): {_hint(path)}") from None

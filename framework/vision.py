"""Image datasets through torchvision: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 as whole uint8 tensors.

torchvision finds, checks (MD5) and downloads the files in its own layout under `data.root`; this module only
turns them into (N, C, H, W) tensors with the official train/test split, and says which files it expected
when they are neither there nor downloadable. MNIST's raw files are looked for gzipped too: a copy of
torchvision's download that kept only the .gz files is unpacked once into the cache, never into data.root.
"""
from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from framework.registry import UserError


@dataclass(frozen=True)
class Source:
    cls: str                 # torchvision.datasets class
    folder: str              # where torchvision keeps it under the root
    files: tuple[str, ...]   # what it expects there
    n_classes: int
    shape: tuple[int, int, int]  # (C, H, W) of an image


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
SOURCES = {
    "mnist": Source("MNIST", "MNIST/raw", _MNIST_FILES, 10, (1, 28, 28)),
    "fashion_mnist": Source("FashionMNIST", "FashionMNIST/raw", _MNIST_FILES, 10, (1, 28, 28)),
    "cifar10": Source("CIFAR10", "cifar-10-batches-py",
                      tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"), 10, (3, 32, 32)),
    "cifar100": Source("CIFAR100", "cifar-100-python", ("train", "test", "meta"), 100, (3, 32, 32)),
}


def cache_dir() -> Path:
    return Path(os.environ.get("REPRO_CACHE", Path.home() / ".cache" / "repro"))


def data_root(root: str) -> Path:
    """data.root, else $REPRO_DATA, else ~/.cache/repro/data."""
    return Path(root or os.environ.get("REPRO_DATA", "") or cache_dir() / "data").expanduser()


def _writable(path: Path) -> bool:
    while not path.exists():
        path = path.parent
    return os.access(path, os.W_OK)


def _unpack_mnist(root: Path, source: Source) -> Path:
    """torchvision's MNIST wants the raw files uncompressed; a root that holds only the .gz files (a shared,
    read-only copy of the download) is unpacked once into the cache, which then serves as the root."""
    raw = root / source.folder
    missing = [f for f in source.files if not (raw / f).exists()]
    if not missing or not all((raw / f"{f}.gz").exists() for f in source.files):
        return root
    target = cache_dir() / "data" / source.folder
    target.mkdir(parents=True, exist_ok=True)
    for f in source.files:
        if not (target / f).exists():
            tmp = target / f"{f}.tmp{os.getpid()}"
            with gzip.open(raw / f"{f}.gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target / f)  # atomic: concurrent array tasks may unpack the same file
    return cache_dir() / "data"


def _torchvision_class(source: Source, verify: bool):
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise UserError(f"the image datasets need torchvision ({e}); install it beside your torch build, e.g. "
                        f"pip install 'repro[vision]'") from e
    cls = getattr(tvd, source.cls)
    if verify or not hasattr(cls, "_check_integrity"):
        return cls

    class Unverified(cls):  # data.verify=false: a re-packed mirror or a small stand-in, same format, other MD5s
        def _check_integrity(self):
            return all((Path(self.root) / self.base_folder / name).exists()
                       for name, _ in self.train_list + self.test_list)

        def _load_meta(self):
            import pickle
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Unverified


@lru_cache(maxsize=4)
def load(name: str, root: str, download: bool, verify: bool):
    """-> (x_train, y_train, x_test, y_test, n_classes), x as uint8 (N, C, H, W). Cached per process: a suite's
    runs share one copy."""
    source = SOURCES[name]
    base = data_root(root)
    if source.cls.endswith("MNIST"):
        base = _unpack_mnist(base, source)
    cls = _torchvision_class(source, verify)
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(base), train=train, download=download and _writable(base))
        except (RuntimeError, OSError) as e:
            where = data_root(root) / source.folder
            if all((where / f).exists() for f in source.files):
                raise UserError(f"data.name={name}: the files under {where} are there but fail torchvision's "
                                f"MD5 check (a partial or re-packed copy); replace them, or set data.verify=false "
                                f"to use them as they are") from e
            how = ("downloading failed" if download else "data.download=false") if _writable(base) \
                else f"{base} is read-only"
            raise UserError(
                f"data.name={name}: dataset not found under {where} (expected torchvision's files "
                f"{', '.join(source.files)}{' (or .gz)' if source.cls.endswith('MNIST') else ''}); {how}: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Set data.root (or $REPRO_DATA) to a "
                f"folder that holds them, or run where the network reaches the dataset's host.") from e
        x = ds.data
        x = torch.as_tensor(np.asarray(x))
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # MNIST: N,H,W; CIFAR: N,H,W,C
        splits += [x.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)]
    return (*splits, source.n_classes)

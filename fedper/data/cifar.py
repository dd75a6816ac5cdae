"""CIFAR-10 and CIFAR-100: torchvision downloads them; the python pickle batches are read here."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from fedper.errors import DatasetNotFoundError

# name -> (folder inside datasets/<name>/, train batch files, test batch files, label key)
LAYOUTS = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch: rows of 3072 bytes (R, G, B planes of 32x32) -> uint8 NHWC."""
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(batch[label_key.encode()], dtype=np.int64)


def download(name: str, root: Path) -> None:
    """Fetch the archive through torchvision into `root` (datasets/<name>/)."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    cls(root=str(root), train=True, download=True)


def locate_batches(name: str, root: Path, allow_download: bool) -> list[Path]:
    """The batch files of `name` under `root`, downloaded first when missing and allowed."""
    folder, train_files, test_files, _ = LAYOUTS[name]
    files = [root / folder / f for f in train_files + test_files]
    reason = ""
    if not all(f.is_file() for f in files) and allow_download:
        try:
            download(name, root)
        except Exception as error:  # no network, a proxy, a full disk: all end the same way
            reason = f" (download failed: {type(error).__name__})"
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{name} not found: expected the python batches in {root / folder}/ "
            f"(missing {missing[0].name}){reason}; download the python version of {name} "
            f"and extract it into {root}/, or run offline with dataset=digits"
        )
    return files


def read_cifar(name: str, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Train and test merged, as the paper partitions the union (60,000 images)."""
    parts = [read_batch(f, LAYOUTS[name][3]) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

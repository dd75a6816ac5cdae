"""CIFAR-10 and CIFAR-100: torchvision downloads them; the python pickle batches are read here,
with an unpickler that builds only what the real files contain."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from fedper.data.cache import PoolCache, dataset_root, from_images
from fedper.data.federated_dataset import FederatedDataset, federate_pool
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
ROW_BYTES = 3 * 32 * 32
# the archives of the python versions, as their authors publish them
ARCHIVE_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR batch refers to: how numpy pickles a uint8 array.

    The files were written by Python 2's numpy (`numpy.core.multiarray`); numpy 2 writes
    `numpy._core.multiarray`. Both names map to the same function, looked up here rather
    than imported by name from the file.
    """
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct

    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that a CIFAR batch never refers to."""


class BatchUnpickler(pickle.Unpickler):
    """Dicts, lists, bytes, strings and numbers as pickle makes them, plus numpy arrays;
    any other global (os.system, builtins.eval, ...) is refused before it is looked up."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise ForbiddenGlobal("a persistent id")


class NotACifarBatch(DatasetNotFoundError):
    """A file where a CIFAR batch should be is not one (damaged, replaced or crafted)."""


def read_batch(
    path: Path, label_key: str, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch: rows of 3072 bytes (R, G, B planes of 32x32) -> uint8 NHWC; with
    `num_classes`, every label in 0..num_classes-1."""

    def refuse(reason: str) -> NotACifarBatch:
        return NotACifarBatch(
            f"{path} is not a CIFAR batch ({reason}); it was not used: replace it with the "
            f"file from the original archive, or delete {path.parent}/ to download it again"
        )

    try:
        with open(path, "rb") as handle:
            batch = BatchUnpickler(handle, encoding="bytes").load()
    except ForbiddenGlobal as error:
        raise refuse(f"it refers to {error}, which a CIFAR file never contains") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as error:  # fmt: skip
        raise refuse(f"unreadable pickle: {type(error).__name__}") from None
    if not isinstance(batch, dict):
        raise refuse(f"it holds a {type(batch).__name__}, not a dict")
    data, labels = batch.get(b"data"), batch.get(label_key.encode())
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise refuse("no uint8 'data' table")
    if data.shape[1] != ROW_BYTES:
        raise refuse(f"rows of {data.shape[1]} bytes, not {ROW_BYTES}")
    if not (isinstance(labels, (list, np.ndarray)) and len(labels) == len(data)):
        raise refuse(f"'{label_key}' does not give one label per image")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise refuse(f"'{label_key}' holds {labels.dtype} values, not whole numbers")
    if num_classes is not None:
        outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if len(outside):
            first = outside[0]
            raise refuse(
                f"image {first} has the label {labels[first]}, outside 0-{num_classes - 1}"
            )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


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
            f"(missing {missing[0].name}){reason}; download {ARCHIVE_URLS[name]} and extract "
            f"it into {root}/, or run offline with dataset=digits"
        )
    return files


def read_cifar(name: str, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Train and test merged, as the paper partitions the union (60,000 images)."""
    classes = {"cifar10": 10, "cifar100": 100}[name]
    parts = [read_batch(f, LAYOUTS[name][3], classes) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def build_cifar(cfg: DictConfig, data_dir: Path) -> FederatedDataset:
    """CIFAR-10 or CIFAR-100 (by `dataset.name`), train and test merged, partitioned."""
    name = cfg.dataset.name
    root = dataset_root(cfg, data_dir)
    files = locate_batches(name, root, cfg.dataset.get("download", True))
    # the cache key follows the source files, so replacing them rebuilds the cache
    stamp = sum(f.stat().st_size for f in files)
    cache = PoolCache(root / "cache", f"pool_{stamp}", from_images(lambda: read_cifar(name, files)))
    return federate_pool(cfg, cache, cache.ensure())

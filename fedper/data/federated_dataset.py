"""The federated dataset: one uint8 image pool on disk and every client's rows and labels."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from fedper.data.cache import (
    CachedPool,
    CacheError,
    PoolCache,
    discard_cache,
    first_damaged_row,
)
from fedper.data.partition import PartitionSettings, partition_labels
from fedper.data.shift import ClientShift, ShiftSettings, client_shifts
from fedper.errors import ConfigError, FedPerError

if TYPE_CHECKING:  # torch is imported where tensors are made: preparing a dataset needs none
    import torch

log = logging.getLogger("fedper")

SPLITS = ("train", "val", "test")
EMPTY = np.empty(0, dtype=np.int64)


@dataclass
class ClientSplit:
    """One client's train, validation and test examples: rows of the pool and their labels.

    Labels live with the client, not the pool: on FLICKR-AES two raters give one photo
    different scores. Validation is carved from the training share (empty when
    `dataset.val_fraction` is 0, the paper's two-way split).
    """

    train_indices: np.ndarray
    train_labels: np.ndarray
    test_indices: np.ndarray
    test_labels: np.ndarray
    val_indices: np.ndarray = field(default_factory=lambda: EMPTY)
    val_labels: np.ndarray = field(default_factory=lambda: EMPTY)
    info: dict = field(default_factory=dict)
    shift: ClientShift | None = None  # shift=feature|concept (fedper/data/shift.py)

    def summary(self, cid: int) -> dict:
        """What results.json records about this client."""
        return {
            "cid": cid,
            **self.info,
            **({"shift": self.shift.summary()} if self.shift is not None else {}),
            "num_train": int(len(self.train_indices)),
            "num_val": int(len(self.val_indices)),
            "num_test": int(len(self.test_indices)),
        }


@dataclass
class FederatedDataset:
    """Everything a client needs to find its data: the pool file, its rows, the statistics.

    `repair` rebuilds the pool's cache from its source (the builders set it) and is called
    when a row fails its checksum.
    """

    name: str
    pool_path: Path
    total_classes: int
    mean: list[float]
    std: list[float]
    clients: list[ClientSplit]
    repair: Callable[[], object] | None = field(default=None, repr=False, compare=False)

    def summary(self) -> list[dict]:
        return [client.summary(cid) for cid, client in enumerate(self.clients)]

    def fingerprint(self) -> str:
        """sha256 over the name, classes, statistics and every client's indices and labels:
        equal on two machines exactly when they would train and test on the same data."""
        digest = hashlib.sha256()
        head = [self.name, int(self.total_classes), [float(v) for v in self.mean]]
        digest.update(json.dumps([*head, [float(v) for v in self.std]]).encode())
        for client in self.clients:
            if client.shift is not None:  # absent under shift=none: those fingerprints stay
                digest.update(json.dumps(client.shift.summary()).encode())
            for split in SPLITS:
                for kind in ("indices", "labels"):
                    values = np.asarray(getattr(client, f"{split}_{kind}"), dtype="<i8")
                    digest.update(f"{split}_{kind}:{len(values)}:".encode())
                    digest.update(values.tobytes())
        return digest.hexdigest()


def federate_pool(cfg: DictConfig, cache: PoolCache, cached: CachedPool) -> FederatedDataset:
    """Partition a labelled pool with the configured partitioner and split every client.

    Normalization statistics not set in the config are measured on the training rows only
    (never validation or test rows), before any shift. Under a concept shift the labels
    stored for a client are the ones its group uses.
    """
    ds, labels = cfg.dataset, cached.labels
    check_labels_fit(labels, cfg)
    parts = partition_labels(labels, PartitionSettings.from_config(cfg))
    shifts = client_shifts(ShiftSettings.from_config(cfg), len(parts), int(ds.total_classes))
    clients = [
        ClientSplit(
            **{f"{s}_indices": p[f"{s}_indices"] for s in SPLITS},
            **{f"{s}_labels": shifted_labels(labels[p[f"{s}_indices"]], shift) for s in SPLITS},
            info={"classes": p["classes"]},
            shift=shift,
        )
        for p, shift in zip(parts, shifts, strict=True)
    ]
    mean, std = configured_or_measured(ds, cached, clients)
    return FederatedDataset(
        ds.name, cached.path, ds.total_classes, mean, std, clients, repair=cache.rebuild
    )


def shifted_labels(labels: np.ndarray, shift: ClientShift | None) -> np.ndarray:
    return labels if shift is None else shift.labels(labels)


def check_labels_fit(labels: np.ndarray, cfg: DictConfig) -> None:
    """Once labels are read: none at or above total_classes reaches a client (the paper's
    split draws from classes below it; the other schemes hand every label out)."""
    ds, scheme = cfg.dataset, (cfg.get("partition") or {}).get("name", "pathological")
    top = int(labels.max()) if len(labels) else -1
    if scheme != "pathological" and top >= ds.total_classes:
        raise ConfigError(
            f"dataset.total_classes={ds.total_classes} is below the labels of {ds.name}, which "
            f"go up to {top}, all of which partition={scheme} gives to clients: use "
            f"dataset.total_classes={top + 1}"
        )


def configured_or_measured(ds: DictConfig, cached: CachedPool, clients: list[ClientSplit]):
    """`dataset.mean`/`std` when set, else the statistics of every client's training rows."""
    if ds.get("mean") is not None and ds.get("std") is not None:
        return [float(v) for v in ds.mean], [float(v) for v in ds.std]
    return cached.stats(np.concatenate([EMPTY, *(c.train_indices for c in clients)]))


@dataclass
class ClientData:
    """A client's images as uint8 NHWC tensors (on its device) with int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None


def load_client_data(
    dataset: FederatedDataset, cid: int, device: torch.device | str = "cpu"
) -> ClientData:
    """Read one client's rows from the pool, each checked against its stored crc32.

    Only that client's rows are read, so the cost follows the client's size, not the
    dataset's (the public baseline rebuilt the whole dataset as float32 for every client).
    A damaged row is never used: the cache is rebuilt (with a warning) and read again.
    A feature shift transforms the rows here, once, for every split.
    """
    import torch

    split = dataset.clients[cid]
    arrays = {s: verified_rows(dataset, getattr(split, f"{s}_indices")) for s in SPLITS}
    if split.shift is not None:
        arrays = {s: split.shift.images(rows) for s, rows in arrays.items()}

    def labels(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(values, dtype=np.int64)).to(device)

    tensors = {}
    for s in SPLITS:
        tensors[f"{s}_images"] = torch.from_numpy(arrays[s]).to(device)
        tensors[f"{s}_labels"] = labels(getattr(split, f"{s}_labels"))
    return ClientData(**tensors)


def verified_rows(dataset: FederatedDataset, indices: np.ndarray) -> np.ndarray:
    """`read_rows`, checked row by row; on damage, repaired once through `dataset.repair`."""
    images, bad = checked_read(dataset.pool_path, indices)
    if bad is not None and dataset.repair is not None:
        log.warning(
            "dataset cache %s: row %d fails its checksum: rebuilding the cache",
            dataset.pool_path, bad,
        )  # fmt: skip
        try:
            dataset.repair()
        except FedPerError as error:
            raise CacheError(
                f"dataset cache {dataset.pool_path} is damaged (row {bad}) and cannot be "
                f"rebuilt from its source: {error}"
            ) from None
        images, bad = checked_read(dataset.pool_path, indices)
    if bad is None:
        return images
    # no way to rebuild it from here (or the rebuild did not help): never use it again
    discard_cache(dataset.pool_path)
    raise CacheError(
        f"dataset cache {dataset.pool_path} is damaged (row {bad} fails its checksum) and was "
        "set aside: start the run again (resume=<run dir> continues it) to rebuild it"
    )


def checked_read(pool_path: Path, indices: np.ndarray) -> tuple[np.ndarray | None, int | None]:
    """The rows and the first damaged one among them (None when all match their crc32)."""
    try:
        images = read_rows(pool_path, indices)
    except (OSError, ValueError):  # cut short, or an unreadable header
        return None, int(indices[0]) if len(indices) else 0
    return images, first_damaged_row(pool_path, indices, images)


def read_rows(pool_path: str | Path, indices: np.ndarray) -> np.ndarray:
    """Rows of a .npy pool, in the order given, with one read per run of consecutive rows.

    Picking rows out of a memory map costs a page fault per 64 KB block touched, so 1,000
    scattered rows took 3x as long from a 60,000-image pool as from a 6,000-image one;
    reads cost per row, whatever the pool's size. When the pool is not in the page cache,
    announcing every run first lets the disk fetch them together instead of one by one
    (a 1,000-row client from a 60,000-image pool: 70 ms -> 15 ms).
    """
    pool = np.load(pool_path, mmap_mode="r")
    if not (pool.flags.c_contiguous and hasattr(os, "preadv")):
        return np.ascontiguousarray(pool[indices])
    indices = np.asarray(indices, dtype=np.int64)
    wanted, order = np.unique(indices, return_inverse=True)
    out = np.empty((len(wanted), *pool.shape[1:]), dtype=pool.dtype)
    if out.size == 0:
        return out[order.reshape(-1)]
    row_bytes = out[0].nbytes
    buffer = memoryview(out).cast("B")
    firsts = [0, *(np.flatnonzero(np.diff(wanted) != 1) + 1).tolist()]
    ends = [*firsts[1:], len(wanted)]
    # each run of consecutive rows: its slice of `out` and its byte offset in the file
    runs = [
        (first, end, pool.offset + int(wanted[first]) * row_bytes)
        for first, end in zip(firsts, ends, strict=True)
    ]
    fd = os.open(pool_path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            for first, end, start in runs:
                os.posix_fadvise(fd, start, (end - first) * row_bytes, os.POSIX_FADV_WILLNEED)
        for first, end, start in runs:
            target = buffer[first * row_bytes : end * row_bytes]
            done = 0
            while done < len(target):  # a read may return less than asked
                got = os.preadv(fd, [target[done:]], start + done)
                if got <= 0:
                    raise OSError(f"{pool_path} ended before row {wanted[end - 1]}")
                done += got
    finally:
        os.close(fd)
    same_order = len(wanted) == len(indices) and bool(np.all(wanted == indices))
    return out if same_order else out[order.reshape(-1)]

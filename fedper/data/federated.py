"""The federated dataset: one uint8 image pool on disk and every client's rows and labels."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

PARTITION_FILE = "partition.npz"


@dataclass
class ClientSplit:
    """One client's train and test examples: rows of the image pool and their labels.

    Labels live with the client, not the pool: on FLICKR-AES two raters give one photo
    different scores.
    """

    train_indices: np.ndarray
    train_labels: np.ndarray
    test_indices: np.ndarray
    test_labels: np.ndarray
    info: dict = field(default_factory=dict)

    def summary(self, cid: int) -> dict:
        """What results.json records about this client."""
        return {
            "cid": cid,
            **self.info,
            "num_train": int(len(self.train_indices)),
            "num_test": int(len(self.test_indices)),
        }


@dataclass
class FederatedDataset:
    """Everything a client needs to find its data: the pool file, its rows, the statistics."""

    name: str
    pool_path: Path
    total_classes: int
    mean: list[float]
    std: list[float]
    clients: list[ClientSplit]

    def summary(self) -> list[dict]:
        return [client.summary(cid) for cid, client in enumerate(self.clients)]

    def save(self, directory: str | Path) -> Path:
        """Write the partition next to a run's results (atomically), so clients can read it."""
        path = Path(directory) / PARTITION_FILE
        arrays: dict[str, np.ndarray] = {}
        for cid, client in enumerate(self.clients):
            arrays[f"train_indices_{cid}"] = client.train_indices
            arrays[f"train_labels_{cid}"] = client.train_labels
            arrays[f"test_indices_{cid}"] = client.test_indices
            arrays[f"test_labels_{cid}"] = client.test_labels
        meta = {
            "name": self.name,
            "pool_path": str(Path(self.pool_path).resolve()),
            "total_classes": self.total_classes,
            "mean": list(map(float, self.mean)),
            "std": list(map(float, self.std)),
            "info": [client.info for client in self.clients],
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> FederatedDataset:
        with np.load(Path(directory) / PARTITION_FILE) as arrays:
            meta = json.loads(arrays["meta"].tobytes().decode())
            clients = [
                ClientSplit(
                    train_indices=arrays[f"train_indices_{cid}"],
                    train_labels=arrays[f"train_labels_{cid}"],
                    test_indices=arrays[f"test_indices_{cid}"],
                    test_labels=arrays[f"test_labels_{cid}"],
                    info=info,
                )
                for cid, info in enumerate(meta["info"])
            ]
        return cls(
            name=meta["name"],
            pool_path=Path(meta["pool_path"]),
            total_classes=meta["total_classes"],
            mean=meta["mean"],
            std=meta["std"],
            clients=clients,
        )


@dataclass
class ClientData:
    """A client's images as uint8 NHWC tensors (on its device) with int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_client_data(
    dataset: FederatedDataset, cid: int, device: torch.device | str = "cpu"
) -> ClientData:
    """Read one client's rows from the memory-mapped pool.

    Only that client's rows are read, so the cost follows the client's size, not the
    dataset's (the public baseline rebuilt the whole dataset as float32 for every client).
    """
    pool = np.load(dataset.pool_path, mmap_mode="r")
    split = dataset.clients[cid]

    def rows(indices: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(pool[indices])).to(device)

    def labels(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values.astype(np.int64)).to(device)

    return ClientData(
        train_images=rows(split.train_indices),
        train_labels=labels(split.train_labels),
        test_images=rows(split.test_indices),
        test_labels=labels(split.test_labels),
    )


def channel_stats(pool: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a uint8 NHWC pool, on the 0-1 scale.

    Computed from a histogram of the 256 pixel values, read in chunks: a float64 copy of a
    60,000-image pool would take 1.5 GB (3-4 GB with the std's temporaries) on every run.
    """
    channels = pool.shape[-1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(pool), 4096):
        chunk = np.asarray(pool[start : start + 4096]).reshape(-1, channels)
        for c in range(channels):
            counts[c] += np.bincount(chunk[:, c], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(axis=1)
    mean = (counts * values).sum(axis=1) / total
    var = (counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    return mean.tolist(), np.sqrt(var).tolist()


def save_pool(images: np.ndarray, path: Path) -> Path:
    """Store a uint8 NHWC image pool atomically as .npy (read later with mmap)."""
    assert images.dtype == np.uint8 and images.ndim == 4, "pool must be uint8 NHWC"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, images)
    os.replace(tmp, path)
    return path

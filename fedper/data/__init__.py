"""Datasets: each builder turns the config into a FederatedDataset with a cached uint8 pool."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fedper.data.federated import (
    ClientData,
    ClientSplit,
    FederatedDataset,
    channel_stats,
    load_client_data,
    save_pool,
)
from fedper.data.partition import partition_by_classes

__all__ = [
    "DATASETS",
    "ClientData",
    "ClientSplit",
    "FederatedDataset",
    "load_client_data",
    "prepare_dataset",
    "register_dataset",
]

DATASETS: dict[str, Callable[[DictConfig], FederatedDataset]] = {}


def register_dataset(name: str):
    """Decorator: make a builder available as `dataset=<name>`."""

    def add(builder: Callable[[DictConfig], FederatedDataset]):
        DATASETS[name] = builder
        return builder

    return add


def prepare_dataset(cfg: DictConfig, data_dir: str | Path | None = None) -> FederatedDataset:
    """Build (or read from cache) the configured dataset under `data_dir`, and partition it."""
    if data_dir is not None and str(data_dir) != str(cfg.data_dir):
        cfg = OmegaConf.merge(cfg, {"data_dir": str(data_dir)})
    return DATASETS[cfg.dataset.name](cfg)


def dataset_root(cfg: DictConfig) -> Path:
    return Path(cfg.data_dir) / cfg.dataset.name


def federate_by_classes(
    cfg: DictConfig, pool_path: Path, labels: np.ndarray, pool: np.ndarray | None = None
) -> FederatedDataset:
    """Partition a labelled pool with the paper's k-classes-per-client rule."""
    ds = cfg.dataset
    parts = partition_by_classes(
        labels,
        num_clients=cfg.num_clients,
        classes_per_client=ds.num_classes,
        train_fraction=ds.fraction,
        seed=ds.seed,
        total_classes=ds.total_classes,
    )
    if ds.mean is None or ds.std is None:
        mean, std = channel_stats(pool if pool is not None else np.load(pool_path, mmap_mode="r"))
    else:
        mean, std = list(ds.mean), list(ds.std)
    clients = [
        ClientSplit(
            train_indices=p["train_indices"],
            train_labels=labels[p["train_indices"]],
            test_indices=p["test_indices"],
            test_labels=labels[p["test_indices"]],
            info={"classes": p["classes"]},
        )
        for p in parts
    ]
    return FederatedDataset(ds.name, pool_path, ds.total_classes, mean, std, clients)


def cached_pool(
    cache_dir: Path, key: str, make: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[Path, np.ndarray, np.ndarray | None]:
    """Pixels are decoded once into `<cache_dir>/<key>.npy` (uint8) with labels beside it."""
    pool_path = cache_dir / f"{key}.npy"
    labels_path = cache_dir / f"{key}.labels.npy"
    if pool_path.is_file() and labels_path.is_file():
        return pool_path, np.load(labels_path), None
    images, labels = make()
    save_pool(images, pool_path)
    save_pool_labels(labels, labels_path)
    return pool_path, labels, images


def save_pool_labels(labels: np.ndarray, path: Path) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, labels.astype(np.int64))
    tmp.replace(path)


@register_dataset("digits")
def build_digits(cfg: DictConfig) -> FederatedDataset:
    from fedper.data.digits import load_digits_images

    size = int(cfg.dataset.image_size)
    pool_path, labels, pool = cached_pool(
        dataset_root(cfg) / "cache", f"digits_{size}px", lambda: load_digits_images(size)
    )
    return federate_by_classes(cfg, pool_path, labels, pool)


def _build_cifar(cfg: DictConfig) -> FederatedDataset:
    from fedper.data.cifar import locate_batches, read_cifar

    root = dataset_root(cfg)
    files = locate_batches(cfg.dataset.name, root, cfg.dataset.get("download", True))
    # the cache key follows the source files, so replacing them rebuilds the cache
    stamp = sum(f.stat().st_size for f in files)
    pool_path, labels, pool = cached_pool(
        root / "cache", f"pool_{stamp}", lambda: read_cifar(cfg.dataset.name, files)
    )
    return federate_by_classes(cfg, pool_path, labels, pool)


register_dataset("cifar10")(_build_cifar)
register_dataset("cifar100")(_build_cifar)

import fedper.data.flickr  # noqa: E402, F401  (registers dataset=flickr)
from fedper.data import synthetic  # noqa: E402, F401  (registers dataset=synthetic)

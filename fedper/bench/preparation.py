"""How long preparing one client's data takes (`load_client_data`), from a large and a
small pool, with the pool in the OS page cache (as during a run) and read from disk."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from fedper.bench.settings import BenchSettings
from fedper.data import ClientSplit, FederatedDataset, dataset_root, load_client_data
from fedper.data.synthetic import synthetic_pool
from fedper.errors import ConfigError


def evict_from_page_cache(path: Path) -> bool:
    """Drop this one file's pages from the OS cache, so the next read comes from disk."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def time_client_preparation(cfg: DictConfig, settings: BenchSettings) -> dict:
    """Milliseconds of `load_client_data` for one client of the same size, per pool size:
    the median of repeats with the pool in the OS page cache (as during a run), and the
    median of three with that file dropped from the cache first (a first read from disk).
    """
    classes, pixels = 10, settings.prep_image_size
    cache = dataset_root(cfg).parent / "synthetic" / "cache"
    datasets = {}
    for size in settings.prep_pool_sizes:
        if size < settings.prep_client_size:
            raise ConfigError(
                f"bench.prep_pool_sizes has {size}, smaller than bench.prep_client_size="
                f"{settings.prep_client_size}: use pools at least as large as the client"
            )
        pool_path, labels, _ = synthetic_pool(cache, size, classes, pixels, cfg.seed)
        rng = np.random.default_rng([cfg.seed, size])
        rows = np.sort(rng.choice(size, settings.prep_client_size, replace=False))
        test = rng.random(len(rows)) >= 0.83
        client = ClientSplit(
            train_indices=rows[~test], train_labels=labels[rows[~test]],
            test_indices=rows[test], test_labels=labels[rows[test]],
        )  # fmt: skip
        datasets[size] = FederatedDataset(
            "synthetic", pool_path, classes, [0.5] * 3, [0.25] * 3, [client]
        )

    def milliseconds(dataset: FederatedDataset, cold: bool) -> float:
        if cold and not evict_from_page_cache(dataset.pool_path):
            return float("nan")
        started = time.perf_counter()
        load_client_data(dataset, 0)
        return (time.perf_counter() - started) * 1e3

    for dataset in datasets.values():
        milliseconds(dataset, cold=False)  # the first call in a process pays for imports
    out = {}
    for size, dataset in datasets.items():
        warm = [milliseconds(dataset, cold=False) for _ in range(settings.prep_repeats)]
        cold = [milliseconds(dataset, cold=True) for _ in range(3)]
        milliseconds(dataset, cold=False)  # leave the pool cached, as it was
        out[str(size)] = {
            "pool_images": size,
            "client_images": settings.prep_client_size,
            "pool_megabytes": dataset.pool_path.stat().st_size / 1e6,
            "median_ms": statistics.median(warm),
            "cold_median_ms": statistics.median(cold),
            "repeats": settings.prep_repeats,
        }
    return out

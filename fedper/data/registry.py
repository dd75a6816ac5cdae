"""The datasets fedper knows: name -> builder, display labels, and `prepare_dataset`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from fedper.data.checks import check_capacity, check_dataset_settings
from fedper.data.cifar import build_cifar
from fedper.data.digits import build_digits
from fedper.data.federated_dataset import FederatedDataset
from fedper.data.flickr import build_flickr
from fedper.data.synthetic import build_synthetic
from fedper.errors import ConfigError

# a builder reads (or makes, then caches) its pool under the data directory and partitions it
Builder = Callable[[DictConfig, Path], FederatedDataset]

DATASETS: dict[str, Builder] = {
    "cifar10": build_cifar,
    "cifar100": build_cifar,
    "flickr": build_flickr,
    "digits": build_digits,
    "synthetic": build_synthetic,
}
DATASET_LABELS: dict[str, str] = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "flickr": "FLICKR-AES",
    "digits": "digits",
    "synthetic": "synthetic",
}


def prepare_dataset(cfg: DictConfig, data_dir: str | Path | None = None) -> FederatedDataset:
    """Build (or read from the cache under `data_dir`, default `cfg.data_dir`) the configured
    dataset and partition it with the seed: a pure function of the local files and settings."""
    name = cfg.dataset.name
    if name not in DATASETS:
        raise ConfigError(f"dataset={name} is unknown: use one of {', '.join(sorted(DATASETS))}")
    check_dataset_settings(cfg)
    dataset = DATASETS[name](cfg, Path(cfg.data_dir if data_dir is None else data_dir))
    check_capacity(dataset, cfg)
    return dataset

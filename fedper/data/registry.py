"""The datasets fedper knows (`dataset=<name>`), and `prepare_dataset`.

`DATASETS.add(Dataset(...))` registers another (docs/extending.md): a builder that reads (or
makes, then caches) its pool under the data directory and partitions it, a display name, and
the checks of the settings only it reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from fedper.data.checks import check_capacity, check_fits_the_data, check_normalization
from fedper.data.cifar import build_cifar
from fedper.data.digits import build_digits
from fedper.data.federated_dataset import FederatedDataset
from fedper.data.flickr import build_flickr, check_flickr
from fedper.data.partition import PartitionSettings
from fedper.data.shift import ShiftSettings
from fedper.data.synthetic import build_synthetic, check_synthetic
from fedper.registry import Registry

Builder = Callable[[DictConfig, Path], FederatedDataset]


@dataclass(frozen=True)
class Dataset:
    """A dataset: how to build it, what figures call it, and its own settings' checks."""

    name: str
    label: str  # display name in figures and tables
    build: Builder
    checks: Callable[[DictConfig], None] | None = None
    num_labels: int | None = None  # classes in its files, when known before reading them
    num_examples: int | None = None  # images in its files, when known before reading them

    def check(self, cfg: DictConfig) -> None:
        check_fits_the_data(cfg, self.num_labels, self.num_examples)
        if self.checks is not None:
            self.checks(cfg)


# in alphabetical order, as the error for an unknown name lists them
DATASETS: Registry[Dataset] = Registry("dataset")
DATASETS.add(Dataset("cifar10", "CIFAR-10", build_cifar, None, 10, 60000))
DATASETS.add(Dataset("cifar100", "CIFAR-100", build_cifar, None, 100, 60000))
DATASETS.add(Dataset("digits", "digits", build_digits, None, 10, 1797))
DATASETS.add(Dataset("flickr", "FLICKR-AES", build_flickr, check_flickr))
DATASETS.add(Dataset("synthetic", "synthetic", build_synthetic, check_synthetic))


def check_dataset_settings(cfg: DictConfig) -> PartitionSettings:
    """One-line ConfigErrors for the dataset and partition keys; returns the partition settings."""
    check_normalization(cfg.dataset)
    settings = PartitionSettings.from_config(cfg)
    DATASETS.pick(cfg.dataset.name).check(cfg)
    ShiftSettings.from_config(cfg)
    return settings


def prepare_dataset(cfg: DictConfig, data_dir: str | Path | None = None) -> FederatedDataset:
    """Build (or read from the cache under `data_dir`, default `cfg.data_dir`) the configured
    dataset and partition it with the seed: a pure function of the local files and settings."""
    dataset = DATASETS.pick(cfg.dataset.name)
    check_dataset_settings(cfg)
    built = dataset.build(cfg, Path(cfg.data_dir if data_dir is None else data_dir))
    check_capacity(built, cfg)
    return built

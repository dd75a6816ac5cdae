"""Datasets: cached uint8 pools under data_dir, partitioned into per-client train/val/test."""

from fedper.data.cache import CacheError, dataset_root
from fedper.data.checks import check_capacity
from fedper.data.federated_dataset import (
    ClientData,
    ClientSplit,
    FederatedDataset,
    load_client_data,
)
from fedper.data.registry import DATASETS, Dataset, check_dataset_settings, prepare_dataset

__all__ = [
    "DATASETS",
    "Dataset",
    "CacheError",
    "ClientData",
    "ClientSplit",
    "FederatedDataset",
    "check_capacity",
    "check_dataset_settings",
    "dataset_root",
    "load_client_data",
    "prepare_dataset",
]

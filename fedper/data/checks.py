"""The data settings every dataset has, checked before any data is read, and the partition's
capacity after."""

from __future__ import annotations

from omegaconf import DictConfig

from fedper.data.federated_dataset import FederatedDataset
from fedper.data.partition import is_number
from fedper.errors import ConfigError

CHANNELS = 3
# A client must be able to take one optimizer step: a batch of a single image fails in
# BatchNorm ("Expected more than 1 value per channel"), two are enough. Fewer than
# batch_size is fine: such a client trains on one shorter batch per epoch.
MIN_TRAIN_EXAMPLES = 2
MIN_TEST_EXAMPLES = 1


def check_normalization(ds: DictConfig) -> None:
    """`dataset.mean` and `dataset.std`: both null (measured) or one number per channel each."""
    mean, std = ds.get("mean"), ds.get("std")
    if (mean is None) != (std is None):
        missing = "dataset.mean" if mean is None else "dataset.std"
        raise ConfigError(
            f"{missing} is null but the other is set: set both (one value per channel) or "
            "both null to measure them on the training images"
        )
    for key, values in (("dataset.mean", mean), ("dataset.std", std)):
        if values is None:
            continue
        numbers = list(values) if not isinstance(values, (str, int, float)) else None
        if not (numbers is not None and len(numbers) == CHANNELS and all(map(is_number, numbers))):
            raise ConfigError(
                f"{key}={values} must be {CHANNELS} numbers, one per channel (R, G, B), "
                "or null to measure it on the training images"
            )
    if std is not None and min(std) <= 0:
        raise ConfigError(f"dataset.std={list(std)} must be > 0 for every channel")


def check_fits_the_data(cfg: DictConfig, num_labels: int | None, num_examples: int | None) -> None:
    """What a dataset's known size and labels rule out, before any of its files is read:
    fewer classes than the labels its partition gives to clients, more clients than it can
    feed the examples each needs."""
    ds, scheme = cfg.dataset, (cfg.get("partition") or {}).get("name", "pathological")
    total = ds.total_classes
    if num_labels is not None and scheme != "pathological" and total < num_labels:
        raise ConfigError(
            f"dataset.total_classes={total} is below the {num_labels} classes of {ds.name}, all "
            f"of which partition={scheme} gives to clients: use dataset.total_classes="
            f"{num_labels} (partition=pathological draws from classes 0-{total - 1} only)"
        )
    check_clients_fit(cfg, num_examples)


def check_clients_fit(cfg: DictConfig, num_examples: int | None) -> None:
    """No more clients than `num_examples` gives the examples each needs (None: not known)."""
    each = MIN_TRAIN_EXAMPLES + MIN_TEST_EXAMPLES
    if num_examples is not None and cfg.num_clients * each > num_examples:
        most = num_examples // each
        raise ConfigError(
            f"num_clients={cfg.num_clients} is more than {cfg.dataset.name} can feed: its "
            f"{num_examples} images give at most {most} clients the {each} each needs "
            f"({MIN_TRAIN_EXAMPLES} to train, {MIN_TEST_EXAMPLES} to test): use "
            f"num_clients<={most}"
        )


def check_capacity(dataset: FederatedDataset, cfg: DictConfig) -> None:
    """Every client needs at least one training batch (2 examples) and one test example."""
    short = [
        (cid, len(c.train_indices), len(c.test_indices))
        for cid, c in enumerate(dataset.clients)
        if len(c.train_indices) < MIN_TRAIN_EXAMPLES or len(c.test_indices) < MIN_TEST_EXAMPLES
    ]
    if not short:
        return
    cid, train, test = short[0]
    raise ConfigError(
        f"num_clients={cfg.num_clients} is more than {dataset.name} can feed: {len(short)} "
        f"client(s) lack data (client {cid} gets {train} training and {test} test examples; "
        f"each needs >= {MIN_TRAIN_EXAMPLES} and >= {MIN_TEST_EXAMPLES}): use fewer "
        f"num_clients or change {', '.join(keys_to_change(cfg))}"
    )


def keys_to_change(cfg: DictConfig) -> list[str]:
    """The settings besides num_clients that give each client more data."""
    ds, scheme = cfg.dataset, (cfg.get("partition") or {}).get("name", "pathological")
    keys = []
    if ds.name == "flickr":
        keys.append("dataset.min_images")
    elif scheme == "pathological":
        keys.append("dataset.num_classes")
    elif scheme == "dirichlet":
        keys += ["partition.min_size", "partition.alpha"]
    if ds.name == "synthetic":
        keys.append("dataset.size")
    keys.append("dataset.fraction")
    if ds.get("val_fraction"):
        keys.append("dataset.val_fraction")
    return keys

"""Partitioning: which client holds which examples, as pure functions of labels, settings, seed.

`partition=pathological` is the paper's split, `dirichlet` and `iid` come from flwr-datasets.
Every scheme feeds the same per-client split: test first, then validation from training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from fedper.data.split import split_train_test, validation_masks
from fedper.errors import ConfigError
from fedper.registry import Registry

# each client's rows, the classes it holds, and the generator the train/test split continues with
Shares = tuple[list[np.ndarray], list[list[int]], np.random.Generator]


@dataclass(frozen=True)
class PartitionSettings:
    """What a partition depends on besides the labels, read and checked once from the config."""

    scheme: str
    num_clients: int
    total_classes: int
    train_fraction: float
    val_fraction: float
    seed: int
    classes_per_client: int | None = None  # pathological only
    alpha: float | None = None  # dirichlet only
    min_size: int | None = None  # dirichlet only

    @classmethod
    def from_config(cls, cfg: DictConfig) -> PartitionSettings:
        """The settings of `cfg`, or a one-line ConfigError naming the key that is wrong."""
        part, ds = cfg.get("partition") or {}, cfg.dataset
        scheme = part.get("name", "pathological")
        PARTITIONS.pick(scheme).check(cfg)
        alpha, min_size = (
            (part.get("alpha"), part.get("min_size")) if scheme == "dirichlet" else (None, None)
        )
        # configs written before validation existed (e.g. a resumed run) mean the two-way split
        val_fraction = ds.get("val_fraction", 0.0)
        if not (is_number(val_fraction) and 0 <= val_fraction < 1):
            raise ConfigError(
                f"dataset.val_fraction={val_fraction} must be a number in [0, 1): the share "
                "of each client's training examples held out for validation (0 = none)"
            )
        fraction = ds.get("fraction")
        if not (is_number(fraction) and 0 < fraction < 1):
            raise ConfigError(f"dataset.fraction={fraction} must lie strictly between 0 and 1")
        return cls(
            scheme=scheme,
            num_clients=int(cfg.num_clients),
            total_classes=int(ds.total_classes),
            train_fraction=float(fraction),
            val_fraction=float(val_fraction),
            seed=int(ds.seed),
            classes_per_client=ds.get("num_classes"),
            alpha=None if alpha is None else float(alpha),
            min_size=min_size,
        )


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def draw_client_classes(
    num_clients: int, total_classes: int, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    """Each client draws `classes_per_client` distinct classes at random."""
    rng = np.random.default_rng(seed)
    return [
        np.sort(rng.choice(total_classes, size=classes_per_client, replace=False))
        for _ in range(num_clients)
    ]


def pathological_shares(
    labels: np.ndarray, settings: PartitionSettings
) -> tuple[list[np.ndarray], list[list[int]], np.random.Generator]:
    """The paper's split: each client draws k classes; every class is shuffled and divided
    evenly among the clients that drew it (a class nobody drew is unused).

    Returns each client's examples, its drawn classes and the generator the train/test split
    continues with.

    flwr-datasets' PathologicalPartitioner (mode "random") draws the same classes from the
    same seed, but does not give the same examples: it divides each class as it lies in the
    file (owner 1 gets the first run of rows, owner 2 the next), where the paper and fedper
    give each owner a random share. In the merged CIFAR pool that hands the last owner of a
    class mostly CIFAR's original test images, and on digits mostly the same few writers.
    It also draws only among the classes present in the labels. So this split stays ours,
    unchanged, and every seed keeps the partition it had.
    """
    k = settings.classes_per_client
    if not (isinstance(k, int) and 1 <= k <= settings.total_classes):
        raise ConfigError(
            f"dataset.num_classes={k} (classes per client) must be a whole number in "
            f"1-{settings.total_classes} for partition=pathological"
        )
    chosen = draw_client_classes(settings.num_clients, settings.total_classes, k, settings.seed)
    rng = np.random.default_rng([settings.seed, 1])
    owned: list[list[np.ndarray]] = [[] for _ in range(settings.num_clients)]
    for label in range(settings.total_classes):
        owners = [cid for cid, classes in enumerate(chosen) if label in classes]
        if not owners:
            continue
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        for cid, share in zip(owners, np.array_split(members, len(owners)), strict=True):
            owned[cid].append(share)
    shares = [np.concatenate(o) if o else np.empty(0, np.int64) for o in owned]
    return shares, [c.tolist() for c in chosen], rng


def label_column(labels: np.ndarray, seed: int):
    """The labels as an in-memory Hugging Face dataset, rows shuffled, each with its pool row.

    flwr-datasets' partitioners cut each class (Dirichlet) or the whole column (IID) into
    contiguous runs; shuffling first makes every run a random sample, not a stretch of the
    file (CIFAR's merged pool is ordered train batches, then test).
    """
    from datasets import Dataset  # imported here: clients of the paper's split never need it

    order = np.random.default_rng([seed, 3]).permutation(len(labels))
    return Dataset.from_dict({"label": labels[order], "row": order})


def rows_of(partitioner, num_clients: int) -> list[np.ndarray]:
    return [
        np.sort(np.asarray(partitioner.load_partition(cid)["row"], dtype=np.int64))
        for cid in range(num_clients)
    ]


def dirichlet_shares(labels: np.ndarray, settings: PartitionSettings) -> list[np.ndarray]:
    """Per class, proportions over clients drawn from Dirichlet(alpha), redrawn (up to 10
    times, by flwr-datasets) until every client holds at least `min_size` examples."""
    from flwr_datasets.partitioner import DirichletPartitioner

    n, size = settings.num_clients, settings.min_size
    if n * size > len(labels):
        raise ConfigError(
            f"partition.min_size={size} cannot be met: {n} clients x {size} is more than the "
            f"{len(labels)} examples; lower partition.min_size or num_clients"
        )
    partitioner = DirichletPartitioner(
        num_partitions=n,
        partition_by="label",
        alpha=settings.alpha,
        min_partition_size=size,
        self_balancing=False,
        seed=settings.seed,
    )
    partitioner.dataset = label_column(labels, settings.seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per redraw; the error below says it
            return rows_of(partitioner, n)
    except ValueError:
        raise ConfigError(
            f"partition.min_size={size} was not reached in 10 Dirichlet draws with "
            f"partition.alpha={settings.alpha} for num_clients={n}: lower partition.min_size "
            "or raise partition.alpha"
        ) from None


def iid_shares(labels: np.ndarray, settings: PartitionSettings) -> list[np.ndarray]:
    """Equal random shares (sizes differ by at most one)."""
    from flwr_datasets.partitioner import IidPartitioner

    partitioner = IidPartitioner(num_partitions=settings.num_clients)
    partitioner.dataset = label_column(labels, settings.seed)
    return rows_of(partitioner, settings.num_clients)


def partition_labels(labels: np.ndarray, settings: PartitionSettings) -> list[dict]:
    """Every client's train, validation and test indices (sorted) and the classes it holds.

    Test is split off first with the paper's stratified rule (for `pathological`, from the
    very generator that divided the classes, as the two-way split always did); validation
    is then carved from the training share with its own generator, so train + validation
    and test are exactly the paper's train and test for the same seed.
    """
    labels = np.asarray(labels)
    shares, classes, rng = PARTITIONS[settings.scheme].divide(labels, settings)
    splits = [split_train_test(s, labels[s], settings.train_fraction, rng) for s in shares]
    trains = [train for train, _ in splits]
    held = validation_masks(
        trains,
        [labels[t] for t in trains],
        settings.val_fraction,
        np.random.default_rng([settings.seed, 2]),
    )
    return [
        {
            "classes": drawn,
            "train_indices": train[~val].astype(np.int64),
            "val_indices": train[val].astype(np.int64),
            "test_indices": test.astype(np.int64),
        }
        for drawn, (train, test), val in zip(classes, splits, held, strict=True)
    ]


def classes_held(
    shares: Callable[[np.ndarray, PartitionSettings], list[np.ndarray]],
) -> Callable[[np.ndarray, PartitionSettings], Shares]:
    """A scheme that only divides rows, with the classes each client ended up holding and the
    generator the train/test split continues with."""

    def divide(labels: np.ndarray, settings: PartitionSettings) -> Shares:
        rows = shares(labels, settings)
        classes = [np.unique(labels[share]).tolist() for share in rows]
        return rows, classes, np.random.default_rng([settings.seed, 1])

    return divide


def check_dirichlet(cfg: DictConfig) -> None:
    """`partition.alpha` > 0 and `partition.min_size` a whole number >= 0."""
    alpha, min_size = cfg.partition.get("alpha"), cfg.partition.get("min_size")
    if not (is_number(alpha) and alpha > 0):
        raise ConfigError(
            f"partition.alpha={alpha} must be a number > 0 (0.1 = strong label skew, "
            "100 = close to IID)"
        )
    if not (isinstance(min_size, int) and not isinstance(min_size, bool) and min_size >= 0):
        raise ConfigError(f"partition.min_size={min_size} must be a whole number >= 0")


@dataclass(frozen=True)
class Partition:
    """A way to divide a pool's rows among clients, picked by `partition=<name>`."""

    name: str
    label: str  # display name in figures and tables
    divide: Callable[[np.ndarray, PartitionSettings], Shares]
    checks: Callable[[DictConfig], None] | None = None  # its own `partition.*` keys

    def check(self, cfg: DictConfig) -> None:
        if self.checks is not None:
            self.checks(cfg)


PARTITIONS: Registry[Partition] = Registry("partition")
PARTITIONS.add(Partition("pathological", "pathological (k classes each)", pathological_shares))
PARTITIONS.add(Partition("dirichlet", "Dirichlet", classes_held(dirichlet_shares), check_dirichlet))
PARTITIONS.add(Partition("iid", "IID", classes_held(iid_shares)))

"""Partitioning: pure functions of labels, parameters and a seed."""

from __future__ import annotations

import numpy as np


def draw_client_classes(
    num_clients: int, total_classes: int, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    """Each client draws `classes_per_client` distinct classes at random."""
    rng = np.random.default_rng(seed)
    return [
        np.sort(rng.choice(total_classes, size=classes_per_client, replace=False))
        for _ in range(num_clients)
    ]


def split_train_test(
    indices: np.ndarray, labels: np.ndarray, train_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's examples into train and test, stratified by label.

    The public baseline splits each client's examples at random; splitting every class
    separately keeps each client's test split on the same class mix as its training split.
    """
    train, test = [], []
    for label in np.unique(labels):
        members = indices[labels == label]
        members = members[rng.permutation(len(members))]
        num_train = int(round(train_fraction * len(members)))
        if len(members) > 1:
            # keep at least one example of each class on each side when there are two
            num_train = min(max(num_train, 1), len(members) - 1)
        train.append(members[:num_train])
        test.append(members[num_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def partition_by_classes(
    labels: np.ndarray,
    num_clients: int,
    classes_per_client: int,
    train_fraction: float,
    seed: int,
    total_classes: int | None = None,
) -> list[dict]:
    """The paper's non-IID split of a merged dataset.

    Each client draws `classes_per_client` classes; the examples of every class are
    shuffled and divided evenly among the clients that drew it (a class nobody drew is
    unused); then each client's examples are split into train and test.
    Returns one dict per client: classes, train_indices, test_indices.
    """
    labels = np.asarray(labels)
    total_classes = int(labels.max()) + 1 if total_classes is None else total_classes
    client_classes = draw_client_classes(num_clients, total_classes, classes_per_client, seed)
    rng = np.random.default_rng([seed, 1])
    owned: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in range(total_classes):
        owners = [cid for cid, classes in enumerate(client_classes) if label in classes]
        if not owners:
            continue
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        for cid, share in zip(owners, np.array_split(members, len(owners)), strict=True):
            owned[cid].append(share)

    clients = []
    for cid in range(num_clients):
        indices = np.concatenate(owned[cid]) if owned[cid] else np.empty(0, np.int64)
        train, test = split_train_test(indices, labels[indices], train_fraction, rng)
        clients.append(
            {
                "classes": client_classes[cid].tolist(),
                "train_indices": train.astype(np.int64),
                "test_indices": test.astype(np.int64),
            }
        )
    return clients

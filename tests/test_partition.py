"""The paper's k-classes-per-client partition: invariants and determinism."""

import numpy as np
import pytest

from fedper.data.partition import partition_by_classes

LABELS = np.repeat(np.arange(10), 60)  # 600 examples, 60 per class


def split(seed=42, k=4, clients=10, fraction=0.83):
    return partition_by_classes(LABELS, clients, k, fraction, seed, total_classes=10)


@pytest.mark.parametrize("k", [1, 4, 8, 10])
def test_each_client_gets_exactly_k_classes(k):
    for client in split(k=k):
        indices = np.concatenate([client["train_indices"], client["test_indices"]])
        assert sorted(set(LABELS[indices].tolist())) == client["classes"]
        assert len(client["classes"]) == k


def test_clients_are_disjoint_and_cover_every_drawn_class():
    clients = split()
    everything = np.concatenate(
        [np.concatenate([c["train_indices"], c["test_indices"]]) for c in clients]
    )
    assert len(everything) == len(set(everything.tolist())), "an example went to two clients"
    drawn = {label for c in clients for label in c["classes"]}
    assert set(LABELS[everything].tolist()) == drawn
    # every example of a drawn class is used
    assert len(everything) == sum(60 for _ in drawn)


def test_each_class_is_split_evenly_among_its_owners():
    clients = split()
    for label in range(10):
        shares = [
            int(np.sum(LABELS[np.concatenate([c["train_indices"], c["test_indices"]])] == label))
            for c in clients
            if label in c["classes"]
        ]
        if shares:
            assert max(shares) - min(shares) <= 1, (label, shares)


def test_train_test_split_is_disjoint_stratified_and_near_fraction():
    for client in split(fraction=0.8):
        train, test = client["train_indices"], client["test_indices"]
        assert not set(train.tolist()) & set(test.tolist())
        assert abs(len(train) / (len(train) + len(test)) - 0.8) < 0.05
        # stratified: every class the client holds appears on both sides
        assert set(LABELS[train].tolist()) == set(LABELS[test].tolist()) == set(client["classes"])


def test_same_seed_same_partition_other_seed_other_partition():
    a, b, c = split(seed=7), split(seed=7), split(seed=8)
    for x, y in zip(a, b, strict=True):
        assert x["classes"] == y["classes"]
        np.testing.assert_array_equal(x["train_indices"], y["train_indices"])
        np.testing.assert_array_equal(x["test_indices"], y["test_indices"])
    assert [x["classes"] for x in a] != [x["classes"] for x in c]


def test_global_random_state_does_not_matter():
    import random

    np.random.seed(0)
    random.seed(0)
    first = split(seed=3)
    np.random.seed(1)
    random.seed(1)
    second = split(seed=3)
    assert all(
        np.array_equal(x["train_indices"], y["train_indices"])
        for x, y in zip(first, second, strict=True)
    )

"""Partitioners (pathological, dirichlet, iid) and the per-client train/validation/test split."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_config

from fedper.data import prepare_dataset
from fedper.data.partition import PartitionSettings, partition_labels
from fedper.data.split import split_shared, validation_counts
from fedper.errors import ConfigError

LABELS = np.repeat(np.arange(10), 60)  # 600 examples, 60 per class


def paper_split_before_validation(labels, num_clients, k, fraction, seed, total_classes):
    """The two-way split exactly as fedper computed it before validation existed (commit
    836d9c6, fedper/data/partition.py), kept here as the reference the new code must match."""
    draw = np.random.default_rng(seed)
    client_classes = [
        np.sort(draw.choice(total_classes, size=k, replace=False)) for _ in range(num_clients)
    ]
    rng = np.random.default_rng([seed, 1])
    owned = [[] for _ in range(num_clients)]
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
        indices = np.concatenate(owned[cid])
        train, test = [], []
        for label in np.unique(labels[indices]):
            members = indices[labels[indices] == label]
            members = members[rng.permutation(len(members))]
            num_train = int(round(fraction * len(members)))
            if len(members) > 1:
                num_train = min(max(num_train, 1), len(members) - 1)
            train.append(members[:num_train])
            test.append(members[num_train:])
        clients.append(
            (
                client_classes[cid].tolist(),
                np.sort(np.concatenate(train)),
                np.sort(np.concatenate(test)),
            )
        )
    return clients


def settings(scheme="pathological", seed=42, k=4, clients=10, fraction=0.83, val=0.1, **extra):
    return PartitionSettings(
        scheme=scheme, num_clients=clients, total_classes=10, train_fraction=fraction,
        val_fraction=val, seed=seed, classes_per_client=k, **extra,
    )  # fmt: skip


@pytest.mark.parametrize("seed, k, clients", [(42, 4, 10), (7, 8, 6), (3, 1, 12), (0, 10, 5)])
def test_pathological_is_the_paper_split_and_validation_comes_only_from_train(seed, k, clients):
    reference = paper_split_before_validation(LABELS, clients, k, 0.83, seed, 10)
    two_way = partition_labels(LABELS, settings(seed=seed, k=k, clients=clients, val=0.0))
    three_way = partition_labels(LABELS, settings(seed=seed, k=k, clients=clients, val=0.1))
    for (classes, train, test), old, new in zip(reference, two_way, three_way, strict=True):
        assert old["classes"] == new["classes"] == classes
        np.testing.assert_array_equal(old["train_indices"], train)
        np.testing.assert_array_equal(old["test_indices"], test)
        assert len(old["val_indices"]) == 0
        np.testing.assert_array_equal(new["test_indices"], test)
        np.testing.assert_array_equal(
            np.sort(np.concatenate([new["train_indices"], new["val_indices"]])), train
        )
        assert not set(new["train_indices"].tolist()) & set(new["val_indices"].tolist())


def test_prepared_digits_match_the_reference_split(tmp_path):
    cfg = make_config(["dataset=digits", f"data_dir={tmp_path}", "num_clients=6", "seed=5"])
    dataset = prepare_dataset(cfg)
    labels = np.load(dataset.pool_path.with_suffix(".labels.npy"))
    reference = paper_split_before_validation(labels, 6, 4, 0.83, 5, 10)
    for client, (classes, train, test) in zip(dataset.clients, reference, strict=True):
        assert client.info["classes"] == classes
        np.testing.assert_array_equal(client.test_indices, test)
        np.testing.assert_array_equal(
            np.sort(np.concatenate([client.train_indices, client.val_indices])), train
        )
        np.testing.assert_array_equal(client.val_labels, labels[client.val_indices])
    summary = dataset.summary()
    assert [s["num_val"] for s in summary] == [len(c.val_indices) for c in dataset.clients]
    assert all(s["num_val"] > 0 for s in summary)


def test_validation_counts_by_largest_remainder():
    # 18 training examples, 10% -> 2 for validation: class 0 (10 x 0.1 = 1.0) takes 1, the
    # largest remainder (class 1: 5 x 0.1 = 0.5) the other; class 2 (0.3) none
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3)
    assert validation_counts(labels, 0.1) == {0: 1, 1: 1, 2: 0}
    assert validation_counts(labels, 0.5) == {0: 5, 1: 3, 2: 1}  # 9: 5 + 2.5 + 1.5, ties by size
    assert validation_counts(np.array([4] * 5), 0.1) == {4: 1}  # at least one when possible
    assert validation_counts(np.array([1, 2]), 0.5) == {1: 0, 2: 0}  # each class keeps one
    assert validation_counts(labels, 0.0) == {0: 0, 1: 0, 2: 0}


def test_validation_is_stratified_deterministic_and_its_own_stream():
    a = partition_labels(LABELS, settings(seed=11, val=0.2))
    b = partition_labels(LABELS, settings(seed=11, val=0.2))
    c = partition_labels(LABELS, settings(seed=12, val=0.2))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["val_indices"], y["val_indices"])
    assert any(
        not np.array_equal(x["val_indices"], z["val_indices"]) for x, z in zip(a, c, strict=True)
    )
    for client in a:
        train_plus_val = np.concatenate([client["train_indices"], client["val_indices"]])
        for label in client["classes"]:
            in_val = int(np.sum(LABELS[client["val_indices"]] == label))
            held = int(np.sum(LABELS[train_plus_val] == label))
            assert abs(in_val - 0.2 * held) <= 1, (label, in_val, held)


def test_each_class_is_split_evenly_among_its_owners():
    for label in range(10):
        shares = [
            int(np.sum(LABELS[np.concatenate(list(c.values())[1:])] == label))
            for c in partition_labels(LABELS, settings())
            if label in c["classes"]
        ]
        if shares:
            assert max(shares) - min(shares) <= 1, (label, shares)


def covered(parts) -> np.ndarray:
    return np.concatenate(
        [np.concatenate([p["train_indices"], p["val_indices"], p["test_indices"]]) for p in parts]
    )


def test_dirichlet_covers_everything_once_meets_min_size_and_follows_alpha():
    skewed = partition_labels(LABELS, settings("dirichlet", alpha=0.1, min_size=10))
    flat = partition_labels(LABELS, settings("dirichlet", alpha=1000.0, min_size=10))
    for parts in (skewed, flat):
        everything = covered(parts)
        assert sorted(everything.tolist()) == list(range(600))  # disjoint and complete
        assert min(len(covered([p])) for p in parts) >= 10
    assert all(len(p["classes"]) == 10 for p in flat)
    assert np.mean([len(p["classes"]) for p in skewed]) < 6
    again = partition_labels(LABELS, settings("dirichlet", alpha=0.1, min_size=10))
    assert all(
        np.array_equal(x["test_indices"], y["test_indices"])
        for x, y in zip(skewed, again, strict=True)
    )


def test_iid_gives_equal_shares_of_every_class():
    parts = partition_labels(LABELS, settings("iid", clients=6))
    assert sorted(covered(parts).tolist()) == list(range(600))
    assert [len(covered([p])) for p in parts] == [100] * 6
    assert all(len(p["classes"]) == 10 for p in parts)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["partition.name=shards"],
            "partition=shards is unknown: use one of pathological, dirichlet, iid",
        ),
        (["partition=dirichlet", "partition.alpha=0"], "partition.alpha=0 must be a number > 0"),
        (
            ["partition=dirichlet", "partition.alpha=abc"],
            "partition.alpha=abc must be a number > 0",
        ),
        (
            ["partition=dirichlet", "partition.min_size=-1"],
            "partition.min_size=-1 must be a whole number >= 0",
        ),
        (
            ["partition=dirichlet", "partition.min_size=500"],
            "partition.min_size=500 cannot be met: 4 clients x 500",
        ),
        (
            ["partition=dirichlet", "partition.alpha=0.01", "partition.min_size=400"],
            "partition.min_size=400 was not reached in 10 Dirichlet draws with partition.alpha=0.01",
        ),
        (["dataset.val_fraction=1.0"], "dataset.val_fraction=1.0 must be a number in [0, 1)"),
        (["dataset.fraction=1.5"], "dataset.fraction=1.5 must lie strictly between 0 and 1"),
        (["dataset.num_classes=11"], "dataset.num_classes=11 (classes per client) must be"),
        (
            ["dataset.mean=[0.5,0.5]", "dataset.std=[0.2,0.2,0.2]"],
            "dataset.mean=[0.5, 0.5] must be 3 numbers",
        ),
        (
            ["dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.2,0,0.2]"],
            "dataset.std=[0.2, 0, 0.2] must be > 0",
        ),
        (["dataset.mean=[0.5,0.5,0.5]"], "dataset.std is null but the other is set"),
        (
            ["num_clients=400"],
            "num_clients=400 is more than digits can feed: ",
        ),
    ],
)
def test_bad_settings_are_one_line_config_errors(tmp_path, overrides, message):
    cfg = make_config(["dataset=digits", f"data_dir={tmp_path}", "num_clients=4", *overrides])
    with pytest.raises(ConfigError) as error:
        prepare_dataset(cfg)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_capacity_error_names_the_keys_to_change(tmp_path):
    cfg = make_config(["dataset=digits", f"data_dir={tmp_path}", "num_clients=400"])
    with pytest.raises(ConfigError) as error:
        prepare_dataset(cfg)
    text = str(error.value)
    assert "each needs >= 2 and >= 1" in text
    assert "use fewer num_clients or change dataset.num_classes, dataset.fraction" in text


def test_shared_items_go_to_one_side_for_every_holder():
    # items 0-3 held by both clients; items 10-14 only by client 0, 20-21 only by client 1
    members = [np.array([0, 1, 2, 3, 10, 11, 12, 13, 14]), np.array([0, 1, 2, 3, 20, 21])]
    labels = [np.zeros(9, np.int64), np.zeros(6, np.int64)]
    rng = np.random.default_rng(0)
    masks = split_shared(members, labels, [{0: 0}, {0: 0}], rng)  # nobody holds out
    assert not masks[0].any() and not masks[1].any()
    masks = split_shared(members, labels, [{0: 9}, {0: 6}], rng)  # both hold out everything
    assert masks[0].all() and masks[1].all()
    for seed in range(20):
        masks = split_shared(members, labels, [{0: 3}, {0: 0}], np.random.default_rng(seed))
        np.testing.assert_array_equal(masks[0][:4], masks[1][:4])  # one side for both
        shared_out = int(masks[0][:4].sum())
        # exclusive items fill exactly what each client still needs
        assert masks[0][4:].sum() == max(0, 3 - shared_out)
        assert not masks[1][4:].any()


def test_flwr_datasets_pathological_partitioner_draws_our_classes_but_not_our_examples():
    """Why `pathological` stays ours: flwr-datasets' PathologicalPartitioner (mode "random")
    draws the same classes from the same seed, but gives each owner a contiguous run of
    the class's rows in file order instead of a random share."""
    import warnings

    from datasets import Dataset
    from flwr_datasets.partitioner import PathologicalPartitioner

    theirs = PathologicalPartitioner(
        num_partitions=10, partition_by="label", num_classes_per_partition=4, seed=42
    )
    theirs.dataset = Dataset.from_dict({"label": LABELS, "row": np.arange(len(LABELS))})
    ours = partition_labels(LABELS, settings(val=0.0))
    for cid, mine in enumerate(ours):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = np.sort(np.asarray(theirs.load_partition(cid)["row"]))
        assert sorted(set(LABELS[rows].tolist())) == mine["classes"]
        assert not np.array_equal(rows, np.sort(covered([mine])))
        for label in mine["classes"]:
            share = rows[LABELS[rows] == label]
            assert share[-1] - share[0] + 1 == len(share)  # one contiguous run (LABELS is sorted)

"""dataset=synthetic: seeded, CIFAR-shaped, class-structured, partitioned k classes per client."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_config

from fedper.data import prepare_dataset
from fedper.data.synthetic import make_synthetic
from fedper.errors import ConfigError


def synthetic_config(tmp_path, *overrides: str):
    return make_config(
        ["dataset=synthetic", "dataset.size=600", f"data_dir={tmp_path}", *overrides]
    )


def test_same_seed_same_images_and_other_seed_other_images():
    images, labels = make_synthetic(200, 10, 32, seed=3)
    again, again_labels = make_synthetic(200, 10, 32, seed=3)
    other, _ = make_synthetic(200, 10, 32, seed=4)
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)
    assert not np.array_equal(images, other)


def test_shape_dtype_and_balanced_labels():
    images, labels = make_synthetic(250, 10, 24, seed=0)
    assert images.shape == (250, 24, 24, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == [25] * 10
    # the pixels use the range without piling up at its ends
    assert 100 < images.mean() < 155 and images.std() > 20
    assert (images == 0).mean() < 0.05 and (images == 255).mean() < 0.05


def spectrum(images: np.ndarray) -> np.ndarray:
    """Magnitudes of the lowest spatial frequencies, per channel: blind to shifts."""
    x = images.astype(np.float32) / 255.0
    magnitudes = np.abs(np.fft.fft2(x - x.mean(axis=(1, 2), keepdims=True), axes=(1, 2)))
    return magnitudes[:, :4, :4, :].reshape(len(images), -1)


def test_classes_are_learnable_but_not_from_single_pixels():
    images, labels = make_synthetic(1000, 10, 32, seed=1)
    train, test = slice(0, 800), slice(800, None)

    def nearest_centroid_accuracy(features: np.ndarray) -> float:
        centroids = np.stack([features[train][labels[train] == c].mean(0) for c in range(10)])
        distances = ((features[test][:, None, :] - centroids[None]) ** 2).sum(-1)
        return float((distances.argmin(1) == labels[test]).mean())

    # shift-invariant features separate the classes; the raw pixels' class means do not,
    # because every image is shifted at random
    assert nearest_centroid_accuracy(spectrum(images)) > 0.6
    assert nearest_centroid_accuracy(images.reshape(1000, -1).astype(np.float32)) < 0.4


def test_each_client_holds_exactly_its_k_classes(tmp_path):
    cfg = synthetic_config(tmp_path, "num_clients=5", "dataset.num_classes=3")
    dataset = prepare_dataset(cfg)
    pool = np.load(dataset.pool_path, mmap_mode="r")
    assert pool.shape == (600, 32, 32, 3) and pool.dtype == np.uint8
    assert len(dataset.clients) == 5
    for client in dataset.clients:
        classes = client.info["classes"]
        assert len(classes) == 3
        assert set(np.unique(client.train_labels)) == set(classes)
        assert set(np.unique(client.test_labels)) == set(classes)
        assert not set(client.train_indices) & set(client.test_indices)


def test_pool_is_cached_and_partition_is_stable(tmp_path):
    cfg = synthetic_config(tmp_path, "num_clients=4")
    first = prepare_dataset(cfg)
    mtime = first.pool_path.stat().st_mtime_ns
    second = prepare_dataset(cfg)
    assert second.pool_path == first.pool_path
    assert second.pool_path.stat().st_mtime_ns == mtime
    assert second.mean == pytest.approx(first.mean) and second.std == pytest.approx(first.std)
    for a, b in zip(first.clients, second.clients, strict=True):
        assert np.array_equal(a.train_indices, b.train_indices)
        assert np.array_equal(a.test_labels, b.test_labels)
    # another size is another pool
    bigger = prepare_dataset(synthetic_config(tmp_path, "num_clients=4", "dataset.size=700"))
    assert bigger.pool_path != first.pool_path


def test_too_small_a_dataset_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="dataset.size"):
        prepare_dataset(synthetic_config(tmp_path, "dataset.size=5"))


def test_client_rows_are_read_exactly_in_any_order(tmp_path):
    from fedper.data.federated_dataset import read_rows

    dataset = prepare_dataset(synthetic_config(tmp_path, "num_clients=4"))
    pool = np.load(dataset.pool_path, mmap_mode="r")
    rng = np.random.default_rng(0)
    for rows in (
        dataset.clients[0].train_indices,  # sorted, as partitions are
        rng.integers(0, len(pool), 50),  # unsorted, with repeats
        np.arange(10, 40),  # one run
        np.array([len(pool) - 1, 0]),
        np.array([], dtype=np.int64),
    ):
        got = read_rows(dataset.pool_path, rows)
        assert got.dtype == np.uint8 and got.flags.c_contiguous
        assert np.array_equal(got, pool[rows])

"""The CIFAR-10 loader on a small dataset written in CIFAR-10's python pickle format."""

import pickle

import numpy as np
import pytest
from conftest import make_config

from fedper.data import load_client_data, prepare_dataset
from fedper.errors import DatasetNotFoundError

PER_BATCH = 20  # images per batch file: 6 files -> 120 images, 12 per class


def write_cifar10(root):
    """data_batch_1..5 and test_batch as CIFAR-10 stores them: 3072 bytes per row, R, G, B planes."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        hwc = rng.integers(0, 256, size=(PER_BATCH, 32, 32, 3), dtype=np.uint8)
        batch_labels = [i % 10 for i in range(PER_BATCH)]
        rows = hwc.transpose(0, 3, 1, 2).reshape(PER_BATCH, 3072)
        with open(folder / name, "wb") as handle:
            pickle.dump(
                {b"data": rows, b"labels": batch_labels, b"batch_label": name.encode()}, handle
            )
        images.append(hwc)
        labels += batch_labels
    return np.concatenate(images), np.array(labels)


def cifar_config(tmp_path, *extra):
    return make_config(
        ["dataset=cifar10", f"data_dir={tmp_path}", "dataset.download=false", *extra]
    )


def test_loader_reads_batches_merges_train_and_test_and_partitions(tmp_path):
    images, labels = write_cifar10(tmp_path)
    dataset = prepare_dataset(cifar_config(tmp_path, "dataset.num_classes=4"))
    pool = np.load(dataset.pool_path)
    assert pool.shape == (6 * PER_BATCH, 32, 32, 3) and pool.dtype == np.uint8
    np.testing.assert_array_equal(pool, images)  # channels land in HWC order, nothing lost
    assert dataset.total_classes == 10 and len(dataset.clients) == 10
    for client in dataset.clients:
        assert len(set(client.train_labels.tolist())) == 4
        np.testing.assert_array_equal(client.train_labels, labels[client.train_indices])
    data = load_client_data(dataset, 3)
    np.testing.assert_array_equal(
        data.train_images.numpy(), images[dataset.clients[3].train_indices]
    )


def test_pool_is_cached_and_reused(tmp_path):
    write_cifar10(tmp_path)
    first = prepare_dataset(cifar_config(tmp_path))
    stamp = first.pool_path.stat().st_mtime_ns
    second = prepare_dataset(cifar_config(tmp_path))
    assert second.pool_path == first.pool_path
    assert second.pool_path.stat().st_mtime_ns == stamp


def test_missing_cifar_says_where_to_put_it_and_names_digits(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        prepare_dataset(cifar_config(tmp_path))
    message = str(error.value)
    assert "cifar-10-batches-py" in message and "dataset=digits" in message
    assert "\n" not in message

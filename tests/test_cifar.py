"""The CIFAR-10 loader on a small dataset written in CIFAR-10's python pickle format."""

import os

import numpy as np
import pytest
from helpers import make_config
from helpers.datasets import PER_BATCH, python2_pickle, write_cifar10

from fedper.data import load_client_data, prepare_dataset
from fedper.data.cifar import read_batch
from fedper.errors import DatasetNotFoundError


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


def test_real_format_uses_python2_strings_and_numpy_core(tmp_path):
    write_cifar10(tmp_path)
    raw = (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"_codecs" not in raw and b"U\x04data" in raw  # byte strings, as Python 2 wrote
    images, labels = read_batch(
        tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_1", "labels"
    )
    assert images.shape == (PER_BATCH, 32, 32, 3) and labels.tolist() == [i % 10 for i in range(20)]


class RunsACommand:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/nonexistent"  # set per test below


@pytest.mark.parametrize(
    "payload, reason",
    [
        ("os_system", "it refers to posix.system, which a CIFAR file never contains"),
        ("eval", "it refers to builtins.eval, which a CIFAR file never contains"),
        ("list", "it holds a list, not a dict"),
        ("no_data", "no uint8 'data' table"),
        ("short_labels", "'labels' does not give one label per image"),
        ("truncated", "unreadable pickle"),
        ("empty", "unreadable pickle: EOFError"),
        ("label_out_of_range", "image 3 has the label 12, outside 0-9"),
        ("negative_label", "image 0 has the label -1, outside 0-9"),
    ],
)
def test_anything_but_a_cifar_batch_is_refused_in_one_line(tmp_path, payload, reason):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    _, labels = write_cifar10(tmp_path)
    target = tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    rows = np.zeros((PER_BATCH, 3072), np.uint8)
    content = {
        "os_system": lambda: python2_pickle({b"data": RunsACommand()}),
        # builtins.eval("1+1"), written by hand: GLOBAL, a string argument, REDUCE
        "eval": lambda: b"\x80\x02cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R.",
        "list": lambda: python2_pickle([rows]),
        "no_data": lambda: python2_pickle({b"labels": [0] * PER_BATCH}),
        "short_labels": lambda: python2_pickle({b"data": rows, b"labels": [0, 1]}),
        "truncated": lambda: target.read_bytes()[:500],
        "empty": lambda: b"",
        "label_out_of_range": lambda: python2_pickle(
            {b"data": rows, b"labels": [0, 1, 2, 12] + [0] * (PER_BATCH - 4)}
        ),
        "negative_label": lambda: python2_pickle({b"data": rows, b"labels": [-1] * PER_BATCH}),
    }[payload]()
    target.write_bytes(content)
    with pytest.raises(DatasetNotFoundError) as error:
        prepare_dataset(cifar_config(tmp_path))
    message = str(error.value)
    assert message.startswith(f"{target} is not a CIFAR batch ({reason}")
    assert "\n" not in message and "it was not used" in message
    assert not os.path.exists(MARKER)
    assert not (tmp_path / "cifar10" / "cache").exists() or not list(
        (tmp_path / "cifar10" / "cache").glob("*.json")
    )

"""Verified caches, statistics from training rows, fingerprints, and the cheap cached path."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, make_config

from fedper.atomic import write_file_atomic as write_atomic
from fedper.data import (
    DATASETS,
    CacheError,
    FederatedDataset,
    load_client_data,
    prepare_dataset,
)
from fedper.data.cache import PoolCache, from_images, pixel_stats, row_table
from fedper.errors import DatasetNotFoundError, StorageError


def digits_config(data_dir: Path, *extra: str):
    return make_config(["dataset=digits", f"data_dir={data_dir}", "num_clients=4", *extra])


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def cache_files(dataset: FederatedDataset) -> dict[str, Path]:
    pool = Path(dataset.pool_path)
    return {
        "pool": pool,
        "rows": pool.with_suffix(".rows.npy"),
        "labels": pool.with_suffix(".labels.npy"),
        "manifest": pool.with_suffix(".json"),
    }


def test_cache_files_are_written_once_and_leave_no_temp_files(tmp_path):
    first = prepare_dataset(digits_config(tmp_path))
    files = cache_files(first)
    assert all(path.is_file() for path in files.values())
    assert sorted(p.name for p in files["pool"].parent.iterdir()) == sorted(
        p.name for p in files.values()
    )
    stamps = {k: p.stat().st_mtime_ns for k, p in files.items()}
    second = prepare_dataset(digits_config(tmp_path))
    assert {k: p.stat().st_mtime_ns for k, p in files.items()} == stamps
    assert second.fingerprint() == first.fingerprint()


def test_zeroed_pixels_are_caught_per_row_and_the_cache_rebuilt(tmp_path, caplog):
    dataset = prepare_dataset(digits_config(tmp_path))
    expected = np.load(dataset.pool_path)
    row = int(dataset.clients[1].train_indices[3])
    pool = np.load(dataset.pool_path, mmap_mode="r+")
    pool[row, 8:24] = 0  # damage after the cache was written and checked
    pool.flush()
    del pool
    again = prepare_dataset(digits_config(tmp_path))  # the file's size and header still pass
    with caplog.at_level(logging.WARNING, logger="fedper"):
        data = load_client_data(again, 1)
    (warning,) = warnings_in(caplog)
    assert f"{dataset.pool_path}: row {row} fails its checksum: rebuilding" in warning
    np.testing.assert_array_equal(
        data.train_images.numpy(), expected[dataset.clients[1].train_indices]
    )
    np.testing.assert_array_equal(np.load(dataset.pool_path), expected)


@pytest.mark.parametrize(
    "damage, file, reason",
    [
        ("labels_cut", "labels", "checksum mismatch"),
        ("pool_cut", "pool", "bytes, expected"),
        ("rows_garbled", "rows", "checksum mismatch"),
        ("manifest_cut", "manifest", "unreadable or altered manifest"),
        ("manifest_edited", "manifest", "unreadable or altered manifest"),
        ("labels_gone", "labels", "missing"),
    ],
)
def test_damaged_cache_files_are_never_used(tmp_path, caplog, damage, file, reason):
    first = prepare_dataset(digits_config(tmp_path))
    files = cache_files(first)
    path = files[file]
    data = path.read_bytes()
    if damage.endswith("_cut"):
        path.write_bytes(data[: len(data) - 40])
    elif damage == "rows_garbled":
        path.write_bytes(data[:-8] + b"\x00" * 8)
    elif damage == "manifest_edited":  # valid JSON, one label's checksum changed
        record = json.loads(data)
        record["body"]["labels_sha256"] = "0" * 64
        path.write_text(json.dumps(record))
    else:
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="fedper"):
        again = prepare_dataset(digits_config(tmp_path))
    (warning,) = warnings_in(caplog)
    assert warning == f"dataset cache {path} cannot be used ({warning.split('(')[1]}"
    assert reason in warning and "rebuilding it" in warning and "\n" not in warning
    assert again.fingerprint() == first.fingerprint()
    assert all(p.is_file() for p in cache_files(again).values())
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_damaged_cache_whose_source_is_gone_is_a_one_line_error(tmp_path):
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    PoolCache(tmp_path, "pool", from_images(lambda: (images, np.array([0, 1])))).ensure()
    (tmp_path / "pool.labels.npy").write_bytes(b"short")

    def gone():
        raise DatasetNotFoundError("source.bin not found: put it back")

    with pytest.raises(CacheError) as error:
        PoolCache(tmp_path, "pool", from_images(gone)).ensure()
    assert str(error.value) == (
        f"dataset cache {tmp_path / 'pool.labels.npy'} is damaged (checksum mismatch) and "
        "cannot be rebuilt from its source: source.bin not found: put it back"
    )


def test_a_client_without_a_way_to_rebuild_refuses_damage_and_sets_the_cache_aside(tmp_path):
    dataset = prepare_dataset(digits_config(tmp_path))
    loaded = dataclasses.replace(dataset, repair=None)  # no source to rebuild from
    row = int(dataset.clients[0].test_indices[0])
    pool = np.load(dataset.pool_path, mmap_mode="r+")
    pool[row] = 255 - pool[row]
    pool.flush()
    del pool
    with pytest.raises(CacheError) as error:
        load_client_data(loaded, 0)
    assert str(error.value).startswith(
        f"dataset cache {dataset.pool_path} is damaged (row {row} fails its checksum) and was set aside"
    )
    assert not cache_files(dataset)["manifest"].exists()
    rebuilt = prepare_dataset(digits_config(tmp_path))  # the next start builds it again
    assert load_client_data(rebuilt, 0).test_images.shape[0] == len(dataset.clients[0].test_indices)


def test_a_failed_write_leaves_nothing_and_temp_names_are_unique(tmp_path):
    names = []

    def fails(tmp: Path):
        names.append(tmp.name)
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    for _ in range(2):  # one line naming the file, as every write of fedper's says it
        with pytest.raises(StorageError, match=f"cannot write {tmp_path / 'x.npy'}: disk full"):
            write_atomic(tmp_path / "x.npy", fails)
    assert len(set(names)) == 2 and all(n.startswith(".x.npy.") for n in names)
    assert list(tmp_path.iterdir()) == []

    def fill_fails(pool):
        pool[0] = 1
        raise OSError("disk full")

    with pytest.raises(StorageError):
        PoolCache(tmp_path, "pool", lambda: ((3, 2, 2, 3), fill_fails)).ensure()
    assert list(tmp_path.iterdir()) == []


def test_statistics_from_the_row_table_equal_numpy_on_those_rows():
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(50, 6, 5, 3), dtype=np.uint8)
    rows = np.array([3, 7, 7, 20, 41])  # a repeat counts once
    mean, std = pixel_stats(row_table(pool), rows, 6 * 5)
    pixels = pool[np.unique(rows)].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-9)


def test_digits_statistics_come_from_training_rows_only(tmp_path):
    dataset = prepare_dataset(digits_config(tmp_path))
    pool = np.load(dataset.pool_path).astype(np.float64) / 255.0
    train = np.unique(np.concatenate([c.train_indices for c in dataset.clients]))
    np.testing.assert_allclose(dataset.mean, pool[train].reshape(-1, 3).mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(dataset.std, pool[train].reshape(-1, 3).std(axis=0), rtol=1e-9)
    assert not np.allclose(dataset.mean, pool.reshape(-1, 3).mean(axis=0), rtol=1e-6)


def test_configured_statistics_are_used_as_given(tmp_path):
    cfg = digits_config(tmp_path, "dataset.mean=[0.1,0.2,0.3]", "dataset.std=[0.4,0.5,0.6]")
    dataset = prepare_dataset(cfg)
    assert (dataset.mean, dataset.std) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])


def test_fingerprint_changes_with_any_part_and_not_across_processes(tmp_path):
    dataset = prepare_dataset(digits_config(tmp_path))
    base = dataset.fingerprint()
    script = (
        "import sys; from helpers import make_config; from fedper.data import prepare_dataset;"
        f"print(prepare_dataset(make_config(['dataset=digits', 'data_dir={tmp_path}', "
        "'num_clients=4'])).fingerprint())"
    )
    env = {
        **os.environ,
        "PYTHONHASHSEED": "123",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
    }
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == base, out.stderr[-2000:]

    client = dataset.clients[2]
    changes = [
        lambda: setattr(dataset, "name", "digits2"),
        lambda: setattr(dataset, "total_classes", 11),
        lambda: setattr(dataset, "mean", [dataset.mean[0] + 1e-12, *dataset.mean[1:]]),
        lambda: setattr(dataset, "std", [2 * v for v in dataset.std]),
        lambda: client.test_labels.__setitem__(0, (client.test_labels[0] + 1) % 10),
        # one example moved from validation to training: the same rows, another split
        lambda: (
            setattr(
                client,
                "train_indices",
                np.sort(np.append(client.train_indices, client.val_indices[0])),
            ),
            setattr(client, "val_indices", client.val_indices[1:]),
        ),
    ]
    seen = {base}
    for change in changes:
        change()
        seen.add(dataset.fingerprint())
    assert len(seen) == len(changes) + 1


def test_the_cached_path_is_cheap_and_imports_no_heavy_library(tmp_path):
    prepare_dataset(digits_config(tmp_path))  # builds the cache
    script = f"""
import sys, time
from hydra import compose, initialize_config_dir
from fedper import CONF_DIR
with initialize_config_dir(str(CONF_DIR), version_base=None):
    cfg = compose("base", ['dataset=digits', 'data_dir={tmp_path}', 'num_clients=10'])
from fedper.data import prepare_dataset
prepare_dataset(cfg)
heavy = sorted(m for m in ('sklearn', 'pandas', 'PIL', 'datasets', 'flwr_datasets')
               if m in sys.modules)
print(heavy)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


@pytest.mark.parametrize(
    "module",
    [
        "registry",
        "federated_dataset",
        "cache",
        "partition",
        "split",
        "checks",
        "digits",
        "cifar",
        "flickr",
        "synthetic",
    ],
)
def test_every_module_imports_on_its_own(module):
    """No import cycle: each module can be the first one imported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = f"import fedper.data.{module}"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_registry_has_every_dataset_with_a_label():
    assert (
        set(DATASETS)
        == {name for name, dataset in DATASETS.items() if dataset.label}
        == {"cifar10", "cifar100", "flickr", "digits", "synthetic"}
    )
    assert DATASETS["cifar10"].label == "CIFAR-10" and DATASETS["flickr"].label == "FLICKR-AES"

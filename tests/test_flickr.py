"""FLICKR-AES on a miniature copy written in the real layout: workers, seeds, splits, errors, a run."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from helpers import make_config, read_results, run_main
from helpers.datasets import MINI_BOUNDS, write_mini_flickr

from fedper.data import prepare_dataset
from fedper.data.flickr import (
    IMAGE_DIR,
    RATINGS_FILE,
    SCORES_FILE,
    eligible_workers,
    read_ratings,
)
from fedper.data.split import split_train_test, stratified_test_counts
from fedper.errors import ConfigError, DatasetNotFoundError
from fedper.validation import validate_config


def eligible_truth(ratings: dict[str, dict[str, int]]) -> list[str]:
    return sorted(w for w, given in ratings.items() if 8 < len(given) < 15)


def mini_config(data_dir: Path, num_clients: int = 5, seed: int = 1, extra: list[str] = ()):
    return make_config(
        [
            f"data_dir={data_dir}",
            f"num_clients={num_clients}",
            f"clients_per_round={num_clients}",
            f"seed={seed}",
            "dataset.image_size=16",
            *MINI_BOUNDS,
            "dataset.val_fraction=0.1",  # the preset has none; the three-way split is tested
            *extra,
        ],
        config_name="flickr",
    )


@pytest.fixture
def mini(tmp_path: Path) -> tuple[Path, dict[str, dict[str, int]]]:
    data_dir = tmp_path / "datasets"
    return data_dir, write_mini_flickr(data_dir)


def splits(dataset) -> list[tuple]:
    return [
        (c.info["worker"], c.train_indices.tolist(), c.test_indices.tolist())
        for c in dataset.clients
    ]


def test_preset_keeps_the_paper_settings_and_command_line_overrides():
    cfg = make_config([], config_name="flickr")
    validate_config(cfg)
    assert cfg.dataset.name == "flickr" and cfg.dataset.total_classes == 5
    assert "num_classes" not in cfg.dataset
    assert (cfg.num_clients, cfg.clients_per_round, cfg.batch_size, cfg.num_rounds) == (
        30,
        30,
        4,
        35,
    )
    assert (cfg.dataset.min_images, cfg.dataset.max_images, cfg.dataset.min_per_score) == (
        60,
        290,
        0,
    )
    assert make_config(["batch_size=8"], config_name="flickr").batch_size == 8


def test_workers_are_chosen_by_exclusive_bounds_and_optional_score_filter(mini):
    data_dir, truth = mini
    ratings = read_ratings(data_dir / "flickr" / RATINGS_FILE)
    assert len(ratings) == sum(len(g) for g in truth.values())
    assert eligible_workers(ratings, 8, 15, 0) == eligible_truth(truth)
    every_score_twice = sorted(
        w
        for w in eligible_truth(truth)
        if all(list(truth[w].values()).count(s) >= 2 for s in range(1, 6))
    )
    assert every_score_twice and every_score_twice != eligible_truth(truth)
    assert eligible_workers(ratings, 8, 15, 2) == every_score_twice


def test_draw_and_splits_follow_the_seed(mini):
    data_dir, truth = mini
    first = prepare_dataset(mini_config(data_dir, seed=1))  # decodes the pool
    again = prepare_dataset(mini_config(data_dir, seed=1))  # reads it from the cache
    other = prepare_dataset(mini_config(data_dir, seed=2))
    assert splits(first) == splits(again)
    for a, b in zip(first.clients, again.clients, strict=True):
        assert np.array_equal(a.train_labels, b.train_labels)
    workers = [c.info["worker"] for c in first.clients]
    assert len(set(workers)) == 5 and set(workers) <= set(eligible_truth(truth))
    assert workers != [c.info["worker"] for c in other.clients]
    # every seed draws from the same eligible workers, so all share one decoded pool
    assert first.pool_path == other.pool_path
    assert len(list((data_dir / "flickr" / "cache").glob("*.json"))) == 1


def test_each_client_has_its_own_scores_and_disjoint_stratified_splits(mini):
    data_dir, truth = mini
    dataset = prepare_dataset(mini_config(data_dir, num_clients=8))
    names = sorted({p for w in eligible_truth(truth) for p in truth[w]})
    pool = np.load(dataset.pool_path, mmap_mode="r")
    assert pool.shape == (len(names), 16, 16, 3) and pool.dtype == np.uint8
    for client in dataset.clients:
        given = truth[client.info["worker"]]
        sides = [set(getattr(client, f"{s}_indices").tolist()) for s in ("train", "val", "test")]
        assert sum(map(len, sides)) == len(set.union(*sides)) == len(given)  # disjoint
        assert {names[row] for row in set.union(*sides)} == set(given)
        for split in ("train", "val", "test"):
            rows, labels = getattr(client, f"{split}_indices"), getattr(client, f"{split}_labels")
            assert [given[names[r]] - 1 for r in rows] == labels.tolist()
        histogram = np.bincount(list(given.values()), minlength=6)[1:].tolist()
        assert client.info["score_histogram"] == histogram
    summary = dataset.summary()
    keys = {"worker", "score_histogram", "num_train", "num_val", "num_test"}
    assert all(keys | {"test_photos_in_training"} <= set(s) for s in summary)


def photo_sides(dataset) -> dict[int, set[str]]:
    """photo row -> the splits it is in, over every client."""
    sides: dict[int, set[str]] = {}
    for client in dataset.clients:
        for split in ("train", "val", "test"):
            for row in getattr(client, f"{split}_indices").tolist():
                sides.setdefault(row, set()).add(split)
    return sides


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_photos_not_ratings_are_split_so_no_test_photo_is_trained_on(mini, seed):
    data_dir, truth = mini
    dataset = prepare_dataset(mini_config(data_dir, num_clients=8, seed=seed))
    holders: dict[int, int] = {}
    for client in dataset.clients:
        for row in np.concatenate([client.train_indices, client.val_indices, client.test_indices]):
            holders[int(row)] = holders.get(int(row), 0) + 1
    shared = {row for row, count in holders.items() if count > 1}
    sides = photo_sides(dataset)
    # the miniature has photos rated by several chosen workers, also in test
    assert len(shared) >= 10 and any(sides[row] == {"test"} for row in shared)
    for row, where in sides.items():
        assert len(where) == 1, (row, where)  # one split for every worker who rated it
    assert [c.info["test_photos_in_training"] for c in dataset.clients] == [0] * 8
    assert [c.info["val_photos_in_training"] for c in dataset.clients] == [0] * 8
    # the per-rating split fedper used before puts some of these photos on both sides
    old = np.random.default_rng([seed, 1])
    old_train, old_test = set(), set()
    for client in dataset.clients:
        rows = np.concatenate([client.train_indices, client.val_indices, client.test_indices])
        labels = np.concatenate([client.train_labels, client.val_labels, client.test_labels])
        order = np.argsort(rows)
        train, test = split_train_test(rows[order], labels[order], 0.8, old)
        old_train |= set(train.tolist())
        old_test |= set(test.tolist())
    assert old_train & old_test


def test_each_worker_is_stratified_as_far_as_shared_photos_allow(mini):
    data_dir, _ = mini
    dataset = prepare_dataset(mini_config(data_dir, num_clients=8))
    counts: dict[int, int] = {}
    for client in dataset.clients:
        for row in np.concatenate([client.train_indices, client.val_indices, client.test_indices]):
            counts[int(row)] = counts.get(int(row), 0) + 1
    exact = 0
    for client in dataset.clients:
        rows = np.concatenate([client.train_indices, client.val_indices, client.test_indices])
        labels = np.concatenate([client.train_labels, client.val_labels, client.test_labels])
        targets = stratified_test_counts(labels, 0.8)  # the paper's per-score rule for this worker
        for score, target in targets.items():
            mine = rows[labels == score]
            num_shared = sum(counts[int(r)] > 1 for r in mine)
            held = int(np.sum(client.test_labels == score))
            # off the target by at most the photos of that score other workers also rated
            assert abs(held - target) <= num_shared, (client.info["worker"], score)
            exact += num_shared == 0
    assert exact > 0  # scores with no shared photo meet the target exactly (checked above)


def test_damaged_photo_index_is_rebuilt_with_a_warning(mini, caplog):
    data_dir, _ = mini
    first = prepare_dataset(mini_config(data_dir, num_clients=8))
    (manifest,) = (data_dir / "flickr" / "cache").glob("*.json")
    manifest.write_text(manifest.read_text()[:100])  # an index cut short
    with caplog.at_level(logging.WARNING, logger="fedper"):
        again = prepare_dataset(mini_config(data_dir, num_clients=8))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(manifest) in warnings[0] and "rebuilding" in warnings[0]
    assert again.fingerprint() == first.fingerprint()


def test_measured_statistics_come_from_training_photos_only(mini):
    data_dir, _ = mini
    dataset = prepare_dataset(
        mini_config(data_dir, num_clients=8, extra=["dataset.mean=null", "dataset.std=null"])
    )
    pool = np.load(dataset.pool_path).astype(np.float64) / 255.0
    rows = np.unique(np.concatenate([c.train_indices for c in dataset.clients]))
    pixels = pool[rows].reshape(-1, 3)
    np.testing.assert_allclose(dataset.mean, pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(dataset.std, pixels.std(axis=0), rtol=1e-9)
    everything = pool.reshape(-1, 3)
    assert not np.allclose(dataset.mean, everything.mean(axis=0), rtol=1e-6)


def test_unreadable_and_missing_photos_are_skipped_and_reported_once(mini, caplog):
    data_dir, truth = mini
    eligible = eligible_truth(truth)
    rated = sorted({p for w in eligible for p in truth[w]})
    corrupt, missing = rated[3], rated[10]
    (data_dir / "flickr" / IMAGE_DIR / corrupt).write_bytes(b"not a jpeg at all" * 20)
    (data_dir / "flickr" / IMAGE_DIR / missing).unlink()

    for _ in range(2):  # the second build reads the cache and must report the same
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fedper"):
            dataset = prepare_dataset(mini_config(data_dir, num_clients=8))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "skipped 2 unreadable or missing photos" in warnings[0]
        assert corrupt in warnings[0] or missing in warnings[0]
        for client in dataset.clients:
            given = truth[client.info["worker"]]
            readable = [p for p in given if p not in (corrupt, missing)]
            sizes = (len(client.train_indices), len(client.val_indices), len(client.test_indices))
            assert sum(sizes) == len(readable)
            assert sum(client.info["score_histogram"]) == len(readable)


@pytest.mark.parametrize("missing", [IMAGE_DIR, RATINGS_FILE, SCORES_FILE])
def test_missing_files_say_what_to_download_and_where(mini, missing):
    data_dir, _ = mini
    path = data_dir / "flickr" / missing
    if path.is_dir():
        for photo in path.iterdir():
            photo.unlink()
        path.rmdir()
    else:
        path.unlink()
    with pytest.raises(DatasetNotFoundError) as error:
        prepare_dataset(mini_config(data_dir))
    message = str(error.value)
    assert missing in message
    for hint in ("FLICKR-AES-001.zip", "github.com/alanspike", "dataset=digits"):
        assert hint in message
    assert not (data_dir / "flickr" / "cache").exists()  # nothing decoded before the check


def test_missing_dataset_stops_the_run_before_ray(tmp_path: Path):
    result = run_main(
        tmp_path, ["--config-name", "flickr", f"data_dir={tmp_path / 'nowhere'}"], timeout=120
    )
    assert result.returncode == 2
    assert "FLICKR-AES not found" in result.stderr and "dataset=digits" in result.stderr


def test_too_few_eligible_workers_names_both_numbers(mini):
    data_dir, _ = mini
    with pytest.raises(ConfigError, match=r"num_clients=9 but only 8 FLICKR-AES workers"):
        prepare_dataset(mini_config(data_dir, num_clients=9))
    with pytest.raises(ConfigError, match=r"dataset.min_images=20"):
        prepare_dataset(mini_config(data_dir, extra=["dataset.min_images=20"]))


@pytest.mark.slow
def test_two_rounds_through_ray(mini, tmp_path: Path):
    data_dir, truth = mini
    run_dir = tmp_path / "run"
    result = run_main(
        tmp_path,
        [
            "--config-name",
            "flickr",
            f"data_dir={data_dir}",
            f"state_dir={tmp_path / 'client_states'}",
            "num_rounds=2",
            "num_epochs=1",
            "num_clients=4",
            "clients_per_round=4",
            "model.width_multiplier=0.25",
            "dataset.image_size=32",
            *MINI_BOUNDS,
            "dataset.val_fraction=0.1",  # the preset has none; the three-way split is tested
        ],
        run_dir=run_dir,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(run_dir)
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results["rounds"])
    partition = results["partition"]
    assert len(partition) == 4
    for client in partition:
        assert client["worker"] in eligible_truth(truth)
        total = client["num_train"] + client["num_val"] + client["num_test"]
        assert sum(client["score_histogram"]) == total and client["test_photos_in_training"] == 0
    assert results["config"]["batch_size"] == 4 and results["config"]["dataset"]["name"] == "flickr"

"""FLICKR-AES (Ren et al. 2017): each client is one rater ("worker") predicting its own scores.

Layout under `<data_dir>/flickr/`, as the public baseline's README tells users to place it:
`40K/<photo>.jpg` (FLICKR-AES-001.zip unzipped), `FLICKR-AES_image_labeled_by_each_worker.csv`
and `FLICKR-AES_image_score.txt`. Photos are decoded once into a uint8 pool indexed by photo;
labels live with the clients, since two workers give one photo different scores.

Photos, not ratings, are split: a photo rated by several chosen workers is in training for
all of them or in test for all of them (the public baseline split each worker's ratings on
their own, so the shared base trained on photos that other clients were tested on).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from fedper.data.cache import CachedPool, PoolCache, dataset_root
from fedper.data.federated_dataset import ClientSplit, FederatedDataset, configured_or_measured
from fedper.data.flickr_ratings import IMAGE_DIR, NUM_SCORES, SOURCE_URL, read_ratings
from fedper.data.split import split_with_shared_items
from fedper.errors import ConfigError, DatasetNotFoundError

if TYPE_CHECKING:  # pandas and PIL are imported inside the functions: clients never need them
    import pandas as pd

log = logging.getLogger("fedper")

RATINGS_FILE = "FLICKR-AES_image_labeled_by_each_worker.csv"
SCORES_FILE = "FLICKR-AES_image_score.txt"


def locate_files(root: Path) -> tuple[Path, Path]:
    """The photo folder and the ratings file under `root`, or one error naming all that is missing.

    The mean-score file is not read (labels are each worker's own scores), but it is part of
    the published layout, so its absence means the dataset was not placed as documented.
    """
    image_dir, ratings, scores = root / IMAGE_DIR, root / RATINGS_FILE, root / SCORES_FILE
    missing = [] if image_dir.is_dir() else [f"the folder {IMAGE_DIR}/"]
    missing += [path.name for path in (ratings, scores) if not path.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"FLICKR-AES not found: {root}/ lacks {', '.join(missing)}; download "
            f"FLICKR-AES-001.zip, {RATINGS_FILE} and {SCORES_FILE} through the link on the "
            f"Personalized Image Aesthetics (Ren et al. 2017) GitHub page {SOURCE_URL}, unzip "
            f"the archive into {root}/ (photos in {root}/{IMAGE_DIR}/) and put the two files "
            f"beside {IMAGE_DIR}/, or run offline with dataset=digits"
        )
    return image_dir, ratings


def check_worker_settings(ds: DictConfig) -> tuple[int, int, int]:
    """The worker bounds and the per-score filter, checked before any data is read."""
    low, high, per_score = ds.min_images, ds.max_images, ds.min_per_score
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low < high):
        raise ConfigError(
            f"dataset.min_images={low} and dataset.max_images={high} must be whole numbers "
            "with 0 <= min_images < max_images (the paper uses 60 and 290, both exclusive)"
        )
    if not (isinstance(per_score, int) and per_score >= 0):
        raise ConfigError(
            f"dataset.min_per_score={per_score} must be a whole number >= 0 (0 = off; the "
            "public baseline used 4)"
        )
    return low, high, per_score


def eligible_workers(
    ratings: pd.DataFrame, min_images: int, max_images: int, min_per_score: int
) -> list[str]:
    """Workers with more than `min_images` and fewer than `max_images` rated photos, sorted.

    With `min_per_score` > 0, also every score 1-5 given at least that many times (the public
    baseline's extra filter with 4; not in the paper).
    """
    counts = ratings.groupby("worker").size()
    keep = (counts > min_images) & (counts < max_images)
    if min_per_score > 0:
        per_score = ratings.groupby(["worker", "score"]).size().unstack(fill_value=0)
        per_score = per_score.reindex(columns=range(1, NUM_SCORES + 1), fill_value=0)
        keep &= (per_score >= min_per_score).all(axis=1).reindex(counts.index, fill_value=False)
    # sorted, so the seeded draw does not depend on the order of rows in the file
    return sorted(str(worker) for worker in counts.index[keep])


def draw_workers(eligible: list[str], num_clients: int, seed: int) -> list[str]:
    """`num_clients` distinct workers drawn with the run's seed, in worker-id order."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(eligible), size=num_clients, replace=False)
    return [eligible[i] for i in np.sort(picks)]


def decode_photo(path: Path, image_size: int) -> np.ndarray:
    """One photo as a uint8 RGB array of image_size x image_size pixels.

    Squashed, not cropped (as the public baseline's Resize((224, 224))), so the whole
    composition, which a rater judged, stays in view.
    """
    from PIL import Image

    with Image.open(path) as photo:
        # JPEG decoders can skip most of the work when the photo is far larger than needed
        photo.draft("RGB", (image_size, image_size))
        rgb = photo.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def decode_photos(pool: np.ndarray, image_dir: Path, names: list[str]) -> list[str]:
    """Decode `names` into the rows of `pool` (row i = names[i]); returns the unreadable ones.

    The pool is a memory map, so thousands of 224 px photos never sit in memory at once.
    An unreadable or missing photo keeps a black row that no client uses.
    """
    from PIL import Image

    unreadable = []
    for row, name in enumerate(names):
        try:
            pool[row] = decode_photo(image_dir / name, pool.shape[1])
        # PIL reports a garbled, truncated or absent file as OSError (or ValueError)
        except (OSError, ValueError, Image.DecompressionBombError):
            unreadable.append(name)
    return unreadable


def photo_cache(root: Path, image_dir: Path, names: list[str], image_size: int) -> PoolCache:
    """The pool of `names` at `image_size` with its index (photo names, unreadable ones).

    The key covers the size and the set of photos, so every seed (which draws from the same
    eligible workers) reuses one pool, and rounds never decode a JPEG again.
    """
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:12]
    key = f"pool_{image_size}px_{digest}"

    def make():
        log.info("FLICKR-AES: decoding %d photos at %d px once into %s", len(names), image_size,
                 root / "cache" / f"{key}.npy")  # fmt: skip

        def fill(pool: np.ndarray):
            unreadable = decode_photos(pool, image_dir, names)
            return None, {"images": names, "unreadable": unreadable}

        return (len(names), image_size, image_size, 3), fill

    return PoolCache(root / "cache", key, make)


def leak_counts(clients: list[ClientSplit]) -> list[dict[str, int]]:
    """Per client, how many of its test (validation) photos are in anyone's training split."""
    trained = np.concatenate([c.train_indices for c in clients])
    held = np.concatenate([trained, *(c.val_indices for c in clients)])
    return [
        {
            "test_photos_in_training": int(np.isin(c.test_indices, held).sum()),
            "val_photos_in_training": int(np.isin(c.val_indices, trained).sum()),
        }
        for c in clients
    ]


def check_flickr(cfg: DictConfig) -> None:
    """FLICKR-AES's clients are its raters: only the paper's split applies, and every rater
    gives every score, so there is a class per score."""
    scheme = (cfg.get("partition") or {}).get("name", "pathological")
    if scheme != "pathological":
        raise ConfigError(
            f"partition={scheme} does not apply to dataset=flickr, whose clients are "
            "its raters: use partition=pathological (the paper's split)"
        )
    total = cfg.dataset.total_classes
    if total < NUM_SCORES:
        raise ConfigError(
            f"dataset.total_classes={total} is below FLICKR-AES's {NUM_SCORES} scores (1-"
            f"{NUM_SCORES}, each a class): use dataset.total_classes={NUM_SCORES}"
        )


def workers_rows(
    ratings: pd.DataFrame, chosen: list[str], names: list[str], cached: CachedPool, image_dir: Path
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each chosen worker's pool rows (sorted) and scores (0-based), without the photos that
    could not be read; a worker left with fewer than 2 photos stops the run."""
    unreadable = set(cached.extra["unreadable"])
    row_of = {name: row for row, name in enumerate(names)}

    by_worker = dict(tuple(ratings[ratings["worker"].isin(chosen)].groupby("worker")))
    rows, scores, skipped = [], [], set()
    for worker in chosen:
        mine = by_worker[worker]
        broken = mine["image"].isin(unreadable).to_numpy()
        skipped.update(mine["image"][broken])
        mine = mine[~broken]
        if len(mine) < 2:
            raise DatasetNotFoundError(
                f"FLICKR-AES worker {worker} has {len(mine)} readable photos in {image_dir}/ "
                f"after skipping unreadable ones; check that FLICKR-AES-001.zip was fully "
                f"unzipped there (delete {cached.path.parent}/ to decode the photos again)"
            )
        worker_rows = mine["image"].map(row_of).to_numpy(np.int64)
        order = np.argsort(worker_rows)
        rows.append(worker_rows[order])
        scores.append(mine["score"].to_numpy(np.int64)[order] - 1)
    if skipped:
        log.warning(
            "FLICKR-AES: skipped %d unreadable or missing photos (e.g. %s), removed from every "
            "chosen worker who rated them; delete %s/ to decode them again",
            len(skipped), image_dir / min(skipped), cached.path.parent,
        )  # fmt: skip

    return rows, scores


def build_flickr(cfg: DictConfig, data_dir: Path) -> FederatedDataset:
    """Clients = a seeded draw of eligible workers; labels = their own scores; one photo pool."""
    ds = cfg.dataset
    min_images, max_images, min_per_score = check_worker_settings(ds)
    root = dataset_root(cfg, data_dir)
    image_dir, ratings_path = locate_files(root)
    ratings = read_ratings(ratings_path)

    eligible = eligible_workers(ratings, min_images, max_images, min_per_score)
    if len(eligible) < cfg.num_clients:
        filter_note = f" and every score at least {min_per_score} times" if min_per_score else ""
        raise ConfigError(
            f"num_clients={cfg.num_clients} but only {len(eligible)} FLICKR-AES workers have "
            f"more than {min_images} and fewer than {max_images} rated photos{filter_note}: "
            f"use num_clients<={len(eligible)} or widen dataset.min_images/dataset.max_images"
        )
    chosen = draw_workers(eligible, cfg.num_clients, ds.seed)

    # the pool holds every eligible worker's photos, not only this draw's, so runs with
    # other seeds find it in the cache
    names = sorted(ratings[ratings["worker"].isin(eligible)]["image"].unique())
    cache = photo_cache(root, image_dir, names, int(ds.image_size))
    cached = cache.ensure()
    rows, scores = workers_rows(ratings, chosen, names, cached, image_dir)
    splits = split_with_shared_items(
        rows, scores, ds.fraction, ds.get("val_fraction", 0.0), ds.seed
    )
    clients = [
        ClientSplit(
            **{f"{s}_indices": r[masks[s]] for s in ("train", "val", "test")},
            **{f"{s}_labels": k[masks[s]] for s in ("train", "val", "test")},
            info={
                "worker": worker,
                "score_histogram": np.bincount(k, minlength=NUM_SCORES).tolist(),
            },
        )
        for worker, r, k, masks in zip(chosen, rows, scores, splits, strict=True)
    ]
    for client, leaks in zip(clients, leak_counts(clients), strict=True):
        client.info.update(leaks)
    mean, std = configured_or_measured(ds, cached, clients)
    return FederatedDataset(
        ds.name, cached.path, ds.total_classes, mean, std, clients, repair=cache.rebuild
    )

"""Verified dataset caches under data_dir: a uint8 pool, per-row checksums, labels, a manifest.

A pool with key K in a cache folder is four files, written atomically and committed by the
manifest, which is written last:

- `K.npy`: the uint8 NHWC images, read by clients through a memory map;
- `K.rows.npy`: int64 (rows, 1 + 2 x channels): each row's crc32, then its per-channel pixel
  sums and sums of squares (so a client verifies exactly the rows it reads, and normalization
  statistics over any set of rows are a sum of this table instead of a pass over the pixels);
- `K.labels.npy`: int64 labels (labelled pools only);
- `K.json`: shapes, sha256 of the sidecar and the labels, the pool's size in bytes, extra
  data such as FLICKR-AES's photo index, and a sha256 of all that.

Caches are derived data: damage is reported in one line and the cache is built again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedper.atomic import storage_error, write_file_atomic
from fedper.errors import FedPerError

log = logging.getLogger("fedper")

CACHE_FORMAT = 1
CHUNK_ROWS = 1024  # rows summed at once: bounds the int64 temporaries (~100 MB at 224 px)


class CacheError(FedPerError):
    """A dataset cache is damaged and cannot be rebuilt here."""


def dataset_root(cfg, data_dir: str | Path | None = None) -> Path:
    """`<data_dir>/<dataset name>`: where a dataset's files and its cache folder live."""
    return Path(cfg.data_dir if data_dir is None else data_dir) / cfg.dataset.name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def row_table(pool: np.ndarray) -> np.ndarray:
    """Each row's crc32 and per-channel pixel sums and sums of squares (exact int64)."""
    channels = pool.shape[-1]
    table = np.empty((len(pool), 1 + 2 * channels), dtype=np.int64)
    for start in range(0, len(pool), CHUNK_ROWS):
        chunk = np.ascontiguousarray(pool[start : start + CHUNK_ROWS])
        flat = chunk.reshape(len(chunk), -1, channels).astype(np.int64)
        table[start : start + len(chunk), 0] = [zlib.crc32(row) for row in chunk]
        table[start : start + len(chunk), 1 : 1 + channels] = flat.sum(axis=1)
        table[start : start + len(chunk), 1 + channels :] = (flat * flat).sum(axis=1)
    return table


def rows_path_of(pool_path: Path) -> Path:
    return Path(pool_path).with_suffix(".rows.npy")


def discard_cache(pool_path: Path) -> None:
    """Forget a cache (remove its manifest), so the next start builds it again."""
    Path(pool_path).with_suffix(".json").unlink(missing_ok=True)


def first_damaged_row(pool_path: Path, indices: np.ndarray, images: np.ndarray) -> int | None:
    """The first of `indices` whose pixels in `images` do not match its stored crc32, if any.

    A missing or short checksum file counts as damage of the first row: nothing unverified
    is ever used.
    """
    if len(indices) == 0:
        return None
    try:
        table = np.load(rows_path_of(pool_path), mmap_mode="r")
        stored = np.asarray(table[np.asarray(indices), 0])
    except (OSError, ValueError, IndexError):
        return int(indices[0])
    for row, image, crc in zip(indices, images, stored, strict=True):
        if zlib.crc32(np.ascontiguousarray(image)) != crc:
            return int(row)
    return None


def pixel_stats(table: np.ndarray, rows: np.ndarray, pixels_per_row: int):
    """Per-channel mean and std on the 0-1 scale of `rows`, from their sums in the row table."""
    channels = (table.shape[1] - 1) // 2
    picked = table[np.unique(rows)]
    count = len(picked) * pixels_per_row * 255.0
    mean = picked[:, 1 : 1 + channels].sum(axis=0) / count
    mean_square = picked[:, 1 + channels :].sum(axis=0) / (count * 255.0)
    std = np.sqrt(np.maximum(mean_square - mean * mean, 0.0))
    return mean.tolist(), std.tolist()


@dataclass
class CachedPool:
    """A verified pool: its file, its row table, labels (or None) and extra data."""

    path: Path
    shape: tuple[int, ...]
    rows: np.ndarray
    labels: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def stats(self, rows: np.ndarray) -> tuple[list[float], list[float]]:
        """Normalization statistics of `rows` (the training rows, never test rows)."""
        return pixel_stats(self.rows, rows, int(np.prod(self.shape[1:-1])))


# fill(pool) writes every row of the open memory map and returns (labels or None, extra)
Fill = Callable[[np.ndarray], tuple[np.ndarray | None, dict]]
# make() says what to build: the pool's shape and the function that fills it
Make = Callable[[], tuple[tuple[int, ...], Fill]]


class PoolCache:
    """The files of one cached pool: read verified, or (re)built with `make`."""

    def __init__(self, directory: str | Path, key: str, make: Make) -> None:
        self.pool = Path(directory) / f"{key}.npy"
        self.rows = rows_path_of(self.pool)
        self.labels = self.pool.with_suffix(".labels.npy")
        self.manifest = self.pool.with_suffix(".json")
        self.make = make
        self.damage: CacheDamage | None = None  # what `read` last found, for error messages

    def ensure(self) -> CachedPool:
        """The verified cache, built first when it is absent or damaged (with a warning)."""
        cached = self.read()
        if cached is not None:
            return cached
        try:
            return self.rebuild()
        except FedPerError as error:
            if self.damage is None:
                raise
            path, reason = self.damage.path, self.damage.reason
            raise CacheError(
                f"dataset cache {path} is damaged ({reason}) and cannot be rebuilt from its "
                f"source: {error}"
            ) from None

    def rebuild(self) -> CachedPool:
        """Build the cache from its source, replacing whatever is there."""
        shape, fill = self.make()
        return self.build(shape, fill)

    def read(self) -> CachedPool | None:
        """The cache after checking every file against the manifest; None if absent or damaged."""
        if not self.manifest.is_file():
            return None
        try:
            return self._read_verified()
        except CacheDamage as damage:
            self.damage = damage
            log.warning(
                "dataset cache %s cannot be used (%s): rebuilding it", damage.path, damage.reason
            )
            self.discard()
            return None

    def _read_verified(self) -> CachedPool:
        try:
            record = json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and "body" not in record and "images" in record:
            raise CacheDamage(self.manifest, "an index in the format before checksums")
        try:
            body = record["body"]
            intact = record["sha256"] == _digest(body) and body["format"] == CACHE_FORMAT
        except (KeyError, TypeError):
            intact = False
        if not intact:
            raise CacheDamage(self.manifest, "unreadable or altered manifest")
        shape = tuple(body["shape"])
        size = self.pool.stat().st_size if self.pool.is_file() else -1
        if size != body["pool_bytes"]:
            raise CacheDamage(self.pool, f"{size} bytes, expected {body['pool_bytes']}")
        try:
            header_shape = np.load(self.pool, mmap_mode="r").shape
        except (OSError, ValueError):
            header_shape = None
        if header_shape != shape:
            raise CacheDamage(self.pool, "header does not match the manifest")
        for path, key in ((self.rows, "rows_sha256"), (self.labels, "labels_sha256")):
            if body[key] is not None and (not path.is_file() or sha256_of(path) != body[key]):
                raise CacheDamage(path, "checksum mismatch" if path.is_file() else "missing")
        labels = np.load(self.labels) if body["labels_sha256"] is not None else None
        return CachedPool(self.pool, shape, np.load(self.rows), labels, body["extra"])

    def build(self, shape: tuple[int, ...], fill: Fill) -> CachedPool:
        """Write the pool through `fill`, then its row table, labels and (last) the manifest."""
        try:
            self.pool.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a read-only data_dir, one that is not a folder
            raise storage_error(self.pool, error) from None
        result: dict = {}

        def write_pool(tmp: Path) -> None:
            pool = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            result["labels"], result["extra"] = fill(pool)
            pool.flush()
            result["rows"] = row_table(pool)
            del pool

        write_file_atomic(self.pool, write_pool)
        labels, extra, table = result["labels"], result["extra"], result["rows"]
        write_file_atomic(self.rows, lambda tmp: _save_npy(tmp, table))
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            write_file_atomic(self.labels, lambda tmp: _save_npy(tmp, labels))
        body = {
            "format": CACHE_FORMAT,
            "shape": list(shape),
            "pool_bytes": self.pool.stat().st_size,
            "rows_sha256": sha256_of(self.rows),
            "labels_sha256": sha256_of(self.labels) if labels is not None else None,
            "extra": extra,
        }
        text = json.dumps({"body": body, "sha256": _digest(body)})
        write_file_atomic(self.manifest, lambda tmp: tmp.write_text(text))
        return CachedPool(self.pool, tuple(shape), table, labels, extra)

    def discard(self) -> None:
        """Forget the cache (its manifest), so the next start builds it again."""
        discard_cache(self.pool)


class CacheDamage(Exception):
    """Internal: a cache file failed its check (caught and turned into a rebuild)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


def from_images(make_images: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Make:
    """A `make` for pools made in memory: `make_images()` returns (uint8 NHWC images, labels)."""

    def make() -> tuple[tuple[int, ...], Fill]:
        images, labels = make_images()
        if images.dtype != np.uint8 or images.ndim != 4:
            raise TypeError(f"a pool must be uint8 NHWC, got {images.dtype} {images.shape}")

        def fill(pool: np.ndarray) -> tuple[np.ndarray | None, dict]:
            for start in range(0, len(images), CHUNK_ROWS):
                pool[start : start + CHUNK_ROWS] = images[start : start + CHUNK_ROWS]
            return labels, {}

        return images.shape, fill

    return make

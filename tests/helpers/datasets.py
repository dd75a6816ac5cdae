"""Small copies of the datasets that need files, written in their published formats."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from fedper.data.flickr import IMAGE_DIR, RATINGS_FILE, SCORES_FILE

PER_BATCH = 20  # images per batch file: 6 files -> 120 images, 12 per class


class Python2Pickler(pickle._Pickler):
    """Pickles as the real CIFAR files were written: by Python 2 (protocol 2), where every
    string is a byte string, and numpy's reconstructor lives in `numpy.core.multiarray`."""

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin-1"))

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def python2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_cifar10(root):
    """data_batch_1..5 and test_batch as CIFAR-10 stores them: 3072 bytes per row, R, G, B planes."""
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return write_cifar(root / "cifar10" / "cifar-10-batches-py", batches, "labels", 10, PER_BATCH)


def write_cifar100(root, per_batch: int = 600):
    """train and test as CIFAR-100 stores them, with its fine labels."""
    return write_cifar(root / "cifar100" / "cifar-100-python", ["train", "test"], "fine_labels",
                       100, per_batch)  # fmt: skip


def write_cifar(folder, names, label_key, classes, per_batch):
    """Batch files of random images whose labels cycle through the classes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for name in names:
        hwc = rng.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
        batch_labels = [i % classes for i in range(per_batch)]
        rows = hwc.transpose(0, 3, 1, 2).reshape(per_batch, 3072)
        batch = {
            b"batch_label": f"{name} of {len(names)}".encode(),
            label_key.encode(): batch_labels,
            b"data": rows,
            b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(python2_pickle(batch))
        images.append(hwc)
        labels += batch_labels
    return np.concatenate(images), np.array(labels)


NUM_PHOTOS = 80
# rated-photo counts per worker; with the bounds below (more than 8, fewer than 15) the
# first eight are eligible and the rest sit on or beyond the bounds
ELIGIBLE_COUNTS = [9, 10, 11, 12, 12, 13, 14, 14]
INELIGIBLE_COUNTS = [8, 15, 3, 30, 5, 20]
MINI_BOUNDS = ["dataset.min_images=8", "dataset.max_images=15"]


def write_mini_flickr(data_dir: Path, seed: int = 0) -> dict[str, dict[str, int]]:
    """A miniature FLICKR-AES under `data_dir/flickr/` in the published layout.

    Real 16x16 JPEGs in 40K/, the per-worker CSV with its spaced header (rows shuffled, so
    nothing can rely on file order) and the mean-score file. Returns worker -> photo -> score.
    Even-numbered workers give every score 1-5 in turn; odd ones only 2-4.
    """
    rng = np.random.default_rng(seed)
    root = data_dir / "flickr"
    (root / IMAGE_DIR).mkdir(parents=True)
    photos = [f"farm{i % 3 + 1}_{1000 + i}_{i:04d}abcd_b.jpg" for i in range(NUM_PHOTOS)]
    for name in photos:
        pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / IMAGE_DIR / name, quality=90)

    ratings: dict[str, dict[str, int]] = {}
    for k, count in enumerate(ELIGIBLE_COUNTS + INELIGIBLE_COUNTS):
        worker = f"A{k * 7919 % 997:03d}W{k:02d}"
        rated = rng.choice(photos, size=count, replace=False)
        if k % 2 == 0:
            scores = [1 + i % 5 for i in range(count)]
        else:
            scores = rng.integers(2, 5, size=count).tolist()
        ratings[worker] = dict(zip(rated.tolist(), scores, strict=True))

    rows = [(w, p, s) for w, given in ratings.items() for p, s in given.items()]
    order = rng.permutation(len(rows))
    lines = ["worker, imagePair, score"] + [", ".join(map(str, rows[i])) for i in order]
    (root / RATINGS_FILE).write_text("\n".join(lines) + "\n")
    means = {p: np.mean([g[p] for g in ratings.values() if p in g] or [3]) for p in photos}
    (root / SCORES_FILE).write_text("".join(f"{p} {m:.4f}\n" for p, m in means.items()))
    return ratings

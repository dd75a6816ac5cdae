"""A seeded, class-structured CIFAR-shaped dataset made in memory: offline data of any size.

Each class is a smooth colour pattern (a few plane waves with whole-number frequencies, so
shifting an image around its edges only changes the waves' phases). Every image is its
class's pattern, circularly shifted by a random offset, at random contrast and brightness,
with a weaker pattern of another class mixed in and pixel noise on top. A convolutional
network learns the classes from frequencies and colours; no single pixel gives them away.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from fedper.data.cache import CachedPool, PoolCache, dataset_root, from_images
from fedper.data.checks import check_clients_fit
from fedper.data.federated_dataset import FederatedDataset, federate_pool
from fedper.errors import ConfigError

# Bump when the generator changes, so pools cached by an older version are not reused.
GENERATOR_VERSION = 1
NUM_WAVES = 3
MAX_FREQUENCY = 3  # cycles per image: smooth patterns a 32 px network still resolves
# Images generated at once: keeps the float32 temporaries near 12 MB each. Part of the
# generator: the random draws are taken chunk by chunk, so changing it changes the images.
CHUNK = 1024
NOISE = 1.5  # pixel noise relative to the unit-variance class pattern


def class_templates(num_classes: int, image_size: int, seed: int) -> np.ndarray:
    """One smooth pattern per class, float32 (classes, H, W, 3) with unit variance."""
    rng = np.random.default_rng([seed, GENERATOR_VERSION, 0])
    freqs = rng.integers(-MAX_FREQUENCY, MAX_FREQUENCY + 1, size=(num_classes, NUM_WAVES, 2))
    # a wave with frequency (0, 0) is a flat colour: nudge it to one cycle across the image
    flat = (freqs == 0).all(axis=-1)
    freqs[flat, 0] = 1
    phases = rng.uniform(0, 2 * np.pi, size=(num_classes, NUM_WAVES))
    colours = rng.normal(size=(num_classes, NUM_WAVES, 3))
    grid = np.arange(image_size) / image_size
    angle = (
        freqs[:, :, 0, None, None] * grid[None, None, :, None]
        + freqs[:, :, 1, None, None] * grid[None, None, None, :]
    ) * (2 * np.pi) + phases[:, :, None, None]
    templates = np.einsum("kwhv,kwc->khvc", np.cos(angle), colours)
    templates /= templates.std(axis=(1, 2, 3), keepdims=True)
    return templates.astype(np.float32)


def shifted(templates: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The templates of `classes`, each rolled by its own random offset (one gather)."""
    size = templates.shape[1]
    offsets = rng.integers(0, size, size=(len(classes), 2))
    rows = (np.arange(size)[None, :] + offsets[:, :1]) % size
    cols = (np.arange(size)[None, :] + offsets[:, 1:]) % size
    return templates[classes[:, None, None], rows[:, :, None], cols[:, None, :]]


def make_synthetic(
    size: int, total_classes: int, image_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`size` uint8 NHWC images with balanced int64 labels; the same seed, the same data."""
    templates = class_templates(total_classes, image_size, seed)
    rng = np.random.default_rng([seed, GENERATOR_VERSION, 1, size, image_size])
    labels = rng.permutation(np.arange(size) % total_classes).astype(np.int64)
    images = np.empty((size, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, size, CHUNK):
        chunk = labels[start : start + CHUNK]
        n = len(chunk)
        # another class's pattern at up to 50% strength, so classes overlap a little
        others = (chunk + rng.integers(1, max(total_classes, 2), size=n)) % total_classes
        contrast = rng.uniform(0.6, 1.4, size=(n, 1, 1, 1)).astype(np.float32)
        mix = rng.uniform(0.0, 0.5, size=(n, 1, 1, 1)).astype(np.float32)
        brightness = rng.uniform(-0.1, 0.1, size=(n, 1, 1, 1)).astype(np.float32)
        x = contrast * shifted(templates, chunk, rng)
        x += mix * shifted(templates, others, rng)
        x += NOISE * rng.standard_normal(size=x.shape, dtype=np.float32)
        # unit-variance signal and noise scaled into 0-1 around mid-grey
        x *= 0.1
        x += 0.5 + brightness
        np.clip(x, 0.0, 1.0, out=x)
        images[start : start + n] = np.rint(x * 255.0).astype(np.uint8)
    return images, labels


def check_synthetic(cfg: DictConfig) -> None:
    """`dataset.size`: a whole number of images, at least one per class and enough for every
    client."""
    ds = cfg.dataset
    if not (isinstance(ds.size, int) and ds.size >= ds.total_classes):
        raise ConfigError(
            f"dataset.size={ds.size} must be a whole number of images, at least "
            f"total_classes={ds.total_classes}"
        )
    check_clients_fit(cfg, ds.size)


def build_synthetic(cfg: DictConfig, data_dir: Path) -> FederatedDataset:
    """Generate (or read from cache) the synthetic pool and partition it."""
    ds = cfg.dataset
    check_synthetic(cfg)
    cache = synthetic_cache(
        dataset_root(cfg, data_dir) / "cache", ds.size, ds.total_classes, ds.image_size, ds.seed
    )
    return federate_pool(cfg, cache, cache.ensure())


def synthetic_cache(
    cache_dir: Path, size: int, total_classes: int, image_size: int, seed: int
) -> PoolCache:
    """The cache of the pool for these parameters (made on first use)."""
    key = f"synthetic_v{GENERATOR_VERSION}_{size}x{image_size}px_{total_classes}c_seed{seed}"
    return PoolCache(
        cache_dir, key, from_images(lambda: make_synthetic(size, total_classes, image_size, seed))
    )


def synthetic_pool(
    cache_dir: Path, size: int, total_classes: int, image_size: int, seed: int
) -> tuple[Path, np.ndarray, None]:
    """The cached pool's path and labels (the benchmark builds its own clients on them)."""
    cached: CachedPool = synthetic_cache(cache_dir, size, total_classes, image_size, seed).ensure()
    return cached.path, cached.labels, None

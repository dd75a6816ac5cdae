"""scikit-learn's bundled UCI handwritten digits, upscaled to RGB images: the offline dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from fedper.data.cache import PoolCache, dataset_root, from_images
from fedper.data.federated_dataset import FederatedDataset, federate_pool


def load_digits_images(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """1,797 8x8 digits (values 0-16) as uint8 NHWC images of `image_size` pixels."""
    # imported here: only building the cache needs them, reading it does not
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    large = F.interpolate(
        small, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    gray = (large.clamp(0, 1) * 255).round().to(torch.uint8)
    images = gray.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous().numpy()
    return images, digits.target.astype(np.int64)


def build_digits(cfg: DictConfig, data_dir: Path) -> FederatedDataset:
    """The digits pool at `dataset.image_size` (decoded once into the cache), partitioned."""
    size = int(cfg.dataset.image_size)
    cache = PoolCache(
        dataset_root(cfg, data_dir) / "cache",
        f"digits_{size}px",
        from_images(lambda: load_digits_images(size)),
    )
    return federate_pool(cfg, cache, cache.ensure())

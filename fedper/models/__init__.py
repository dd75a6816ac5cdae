"""Model registry: `model_name=<name>` picks a ModelSplit subclass."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from fedper.models import mobilenet, resnet  # noqa: F401  (each registers its model)
from fedper.models.registry import MODELS
from fedper.models.split import ModelSplit

# `model.*` keys that say how the network is split and shared, not how it is built: the rest
# are options of the model's `build`
SPLIT_KEYS = ("num_head_layers", "local_bn")


def build_model(cfg: DictConfig, seed: int | None = None) -> ModelSplit:
    """The configured model; with a seed, its initial weights are fixed by that seed."""
    options = {k: v for k, v in cfg.model.items() if k not in SPLIT_KEYS}
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return MODELS[cfg.model_name](
            cfg.dataset.total_classes, cfg.model.num_head_layers, **options
        )


__all__ = ["MODELS", "SPLIT_KEYS", "ModelSplit", "build_model"]

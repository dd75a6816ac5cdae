"""Configs for tests: Hydra composes them from conf/, as `python -m fedper.main` does."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from fedper import CONF_DIR, PROJECT_ROOT

ROOT = PROJECT_ROOT

# a model and run small enough for CPU tests
TINY = [
    "client_device=cpu",  # exact-equality checks assume CPU numerics, also on a CUDA machine
    "model.width_multiplier=0.25",
    "num_rounds=2",
    "num_epochs=1",
    "batch_size=16",
    "num_clients=4",
    "clients_per_round=4",
]


def make_config(overrides: list[str] = (), config_name: str = "base") -> DictConfig:
    """The config Hydra composes from conf/ for these overrides."""
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose(config_name, overrides=list(overrides))

"""Checking the composed config, deriving run-time values, and handing both to the apps."""

from __future__ import annotations

import functools
import json
import os
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedper.algorithms import ALGORITHMS
from fedper.device import (  # noqa: F401  (re-exported for the apps)
    Performance,
    resolve_device,
    resolve_num_gpus,
    resolve_performance,
)
from fedper.errors import ConfigError

# The apps read the run's settings from this run_config entry (a JSON string) when launched
# by `flwr run`, and from this environment variable in a `run_simulation` launch, which
# passes no run_config (Ray workers inherit the driver's environment).
RUN_CONFIG_KEY = "fedper-spec"
SPEC_ENV_VAR = "FEDPER_SPEC"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_range(key: str, value, low: int, high: int, context: str = "") -> None:
    """A whole number in low..high, or an error naming the key, the value and the range."""
    check(
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
        f"{key}={value} is out of range{context}: use {low}-{high}",
    )


def validate_config(cfg: DictConfig) -> None:
    """Every mistake a user can make in an override, caught before any data or Ray work."""
    from fedper.data import DATASETS
    from fedper.models import MODELS

    check(
        cfg.algorithm in ALGORITHMS,
        f"algorithm={cfg.algorithm} is unknown: use one of {', '.join(ALGORITHMS)}",
    )
    check(
        cfg.model_name in MODELS,
        f"model_name={cfg.model_name} is unknown: use one of {', '.join(MODELS)}",
    )
    check(
        cfg.dataset.name in DATASETS,
        f"dataset={cfg.dataset.name} is unknown: use one of {', '.join(sorted(DATASETS))}",
    )
    for key in ("num_clients", "num_rounds", "num_epochs", "batch_size", "clients_per_round"):
        value = OmegaConf.select(cfg, key)
        check(
            isinstance(value, int) and value > 0,
            f"{key}={value} must be a positive whole number",
        )
    for key in ("learning_rate",):
        value = OmegaConf.select(cfg, key)
        check(isinstance(value, (int, float)) and value > 0, f"{key}={value} must be positive")
    check_range("clients_per_round", cfg.clients_per_round, 1, cfg.num_clients,
                f" for num_clients={cfg.num_clients}")  # fmt: skip
    check_range("min_successful_clients", cfg.min_successful_clients, 1, cfg.clients_per_round,
                f" for clients_per_round={cfg.clients_per_round}")  # fmt: skip
    check_range("model.num_head_layers", cfg.model.num_head_layers, 1,
                MODELS[cfg.model_name].max_head_layers, f" for model_name={cfg.model_name}")  # fmt: skip
    per_client = cfg.dataset.get("num_classes")
    if per_client is not None:
        check_range("dataset.num_classes", per_client, 1, cfg.dataset.total_classes,
                    f" (classes per client) for {cfg.dataset.name}")  # fmt: skip
    fraction = cfg.dataset.get("fraction")
    if fraction is not None:
        check(0 < fraction < 1, f"dataset.fraction={fraction} must lie strictly between 0 and 1")
    check(
        isinstance(cfg.finetune_epochs, int) and cfg.finetune_epochs >= 0,
        f"finetune_epochs={cfg.finetune_epochs} must be a whole number >= 0",
    )
    perf = cfg.performance
    check(
        perf.autocast in ("auto", "bf16", "off"),
        f"performance.autocast={perf.autocast} is unknown: use auto, bf16 or off",
    )
    check(
        perf.channels_last in ("auto", True, False),
        f"performance.channels_last={perf.channels_last} is unknown: use auto, true or false",
    )
    for key in ("server_device", "client_device"):
        resolve_device(cfg[key], key)
    resources = cfg.client_resources
    cpus = resources.num_cpus
    check(
        isinstance(cpus, (int, float)) and 0 < cpus <= (os.cpu_count() or 1),
        f"client_resources.num_cpus={cpus} must be between 0 and this machine's "
        f"{os.cpu_count()} CPUs",
    )
    resolve_num_gpus(resources.num_gpus)


@dataclass(frozen=True)
class RunSpec:
    """The composed config plus the values derived from it for one run."""

    config: dict  # resolved, as composed by Hydra; never rewritten
    run_id: str
    run_dir: str
    state_dir: str  # this run's client heads: <state_dir>/<run_id>/
    num_gpus: float

    @property
    def cfg(self) -> DictConfig:
        return _as_config(json.dumps(self.config, sort_keys=True))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@functools.lru_cache(maxsize=8)
def _as_config(text: str) -> DictConfig:
    cfg = OmegaConf.create(json.loads(text))
    OmegaConf.set_readonly(cfg, True)
    return cfg


def new_run_id() -> str:
    """Unique even for multirun jobs started in the same second."""
    return f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


def derive_run_spec(cfg: DictConfig, run_dir: str | Path, run_id: str | None = None) -> RunSpec:
    """The one place where run-time values are derived from the config."""
    run_id = run_id or new_run_id()
    return RunSpec(
        config=OmegaConf.to_container(cfg, resolve=True),
        run_id=run_id,
        run_dir=str(Path(run_dir).resolve()),
        state_dir=str((Path(cfg.state_dir) / run_id).resolve()),
        num_gpus=resolve_num_gpus(cfg.client_resources.num_gpus),
    )


@functools.lru_cache(maxsize=8)
def _parse_spec(text: str) -> RunSpec:
    return RunSpec(**json.loads(text))


def spec_from_context(context) -> RunSpec:
    """What the ServerApp and the ClientApp know of the run, from their Flower Context."""
    text = context.run_config.get(RUN_CONFIG_KEY) or os.environ.get(SPEC_ENV_VAR)
    if not text:
        raise ConfigError(
            f"no fedper settings: set run_config '{RUN_CONFIG_KEY}' (flwr run) or launch "
            "through python -m fedper.main"
        )
    return _parse_spec(text)

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
    check_performance,
    gpu_share,
    resolve_device,
    resolve_num_gpus,
    resolve_performance,
)
from fedper.errors import ConfigError

# The key under which the run's settings (a RunSpec as JSON) travel: in every message's
# ConfigRecord to the clients, and in the run_config of a run submitted with `flwr run`.
SPEC_KEY = "fedper-spec"


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
    from fedper.data import DATASETS, check_dataset_settings
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
    check_dataset_settings(cfg)
    per_client = cfg.dataset.get("num_classes")
    if per_client is not None:
        check_range("dataset.num_classes", per_client, 1, cfg.dataset.total_classes,
                    f" (classes per client) for {cfg.dataset.name}")  # fmt: skip
    fraction = cfg.dataset.get("fraction")
    if fraction is not None:
        check(0 < fraction < 1, f"dataset.fraction={fraction} must lie strictly between 0 and 1")
    for key in ("finetune_epochs", "fedrep.head_epochs"):
        value = OmegaConf.select(cfg, key)
        check(
            isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            f"{key}={value} must be a whole number >= 0",
        )
    local_bn = OmegaConf.select(cfg, "model.local_bn")
    check(isinstance(local_bn, bool), f"model.local_bn={local_bn} must be true or false")
    check_performance(cfg)
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
    validate_engine(cfg)


ENGINE_ADDRESS_KEYS = {"simulation": None, "ray": "address", "deployment": "superlink"}


def validate_engine(cfg: DictConfig) -> None:
    """The engine group: a known name, the address it needs, sensible timeouts."""
    engine = cfg.get("engine")
    check(
        engine is not None and engine.get("name") in ENGINE_ADDRESS_KEYS,
        f"engine={None if engine is None else engine.get('name')} is unknown: use one of "
        f"{', '.join(ENGINE_ADDRESS_KEYS)}",
    )
    key = ENGINE_ADDRESS_KEYS[engine.name]
    if key is not None:
        value = None if OmegaConf.is_missing(engine, key) else engine.get(key)
        check(
            isinstance(value, str) and value.rpartition(":")[2].isdigit(),
            f"engine={engine.name} needs engine.{key}=<host:port>"
            + (" of the Ray cluster's head node" if engine.name == "ray" else " of the SuperLink")
            + (f", not {value}" if value is not None else ""),
        )
    for name in ("connect_timeout", "reply_timeout"):
        value = engine.get(name)
        check(
            isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
            f"engine.{name}={value} must be a number of seconds > 0",
        )
    cpus = engine.get("num_cpus")
    check(
        cpus is None or (isinstance(cpus, int) and not isinstance(cpus, bool) and cpus > 0),
        f"engine.num_cpus={cpus} must be null (all CPUs) or a whole number > 0",
    )


@dataclass(frozen=True)
class RunSpec:
    """What every app of one run must agree on; it travels in every message to the clients.

    The clients learn the run from this alone (plus their own node config): no environment
    variable and no file the server wrote. It is a few kB of JSON.
    """

    config: dict  # the resolved config, as composed by Hydra; never rewritten
    run_id: str
    run_dir: str  # where the ServerApp writes results and its checkpoint (absolute)
    data_dir: str  # default data folder of a node without its own `data-dir` (absolute)
    state_dir: str  # default head folder of a node without its own `state-dir` (absolute)
    num_gpus: float  # GPU share per client actor (simulation engines)
    fingerprint: str  # of the partition every client must rebuild from its local data
    initial_digest: str  # of the seeded initial model every client builds for itself

    @property
    def cfg(self) -> DictConfig:
        return _as_config(json.dumps(self.config, sort_keys=True))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> RunSpec:
        return _parse_spec(text)


@functools.lru_cache(maxsize=8)
def _as_config(text: str) -> DictConfig:
    cfg = OmegaConf.create(json.loads(text))
    OmegaConf.set_readonly(cfg, True)
    return cfg


@functools.lru_cache(maxsize=8)
def _parse_spec(text: str) -> RunSpec:
    try:
        return RunSpec(**json.loads(text))
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"the run settings in the message cannot be read ({error}): server and clients "
            "must run the same fedper version"
        ) from None


def new_run_id() -> str:
    """Unique even for multirun jobs started in the same second."""
    return f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


def derive_run_spec(
    cfg: DictConfig, run_dir: str | Path, run_id: str, fingerprint: str, initial_digest: str
) -> RunSpec:
    """The one place where run-time values are derived from the config.

    Paths become absolute here, at the first start, so that clients on other processes and a
    resume from another working directory find the same folders.
    """
    return RunSpec(
        config=OmegaConf.to_container(cfg, resolve=True),
        run_id=run_id,
        run_dir=str(Path(run_dir).resolve()),
        data_dir=str(Path(cfg.data_dir).expanduser().resolve()),
        state_dir=str(Path(cfg.state_dir).expanduser().resolve()),
        num_gpus=gpu_share(cfg),
        fingerprint=fingerprint,
        initial_digest=initial_digest,
    )


# run_config keys of a run submitted with `flwr run` (declared in pyproject.toml)
HEADER_KEY = "fedper-header"


@dataclass(frozen=True)
class RunPlan:
    """A run ready to start: its settings, and what results.json records about it up front
    (the partition summary, code and library versions)."""

    spec: RunSpec
    header: dict

    def to_run_config(self) -> dict[str, str]:
        return {SPEC_KEY: self.spec.to_json(), HEADER_KEY: json.dumps(self.header)}

    @classmethod
    def from_run_config(cls, run_config) -> RunPlan | None:
        """The plan `python -m fedper.main` put in the run config; None if there is none."""
        text = str(run_config.get(SPEC_KEY) or "")
        if not text:
            return None
        return cls(RunSpec.from_json(text), json.loads(str(run_config.get(HEADER_KEY) or "{}")))

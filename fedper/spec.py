"""What every app of one run agrees on (RunSpec, RunPlan) and the keys under which it travels."""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedper.device import gpu_share
from fedper.errors import ConfigError

# The key under which the run's settings (a RunSpec as JSON) travel: in every message's
# ConfigRecord to the clients, and in the run_config of a run submitted with `flwr run`.
SPEC_KEY = "fedper-spec"
# Beside it, per client: the last round the server counted that client's training in (its head
# must be from that round); and the metric a client adds when it started over from its
# initial head because that head was lost (`restart_lost_heads`).
HEAD_ROUND_KEY = "head-round"
# The client a train or evaluate message is for (a simulation node may serve several in turn).
CLIENT_KEY = "client-id"
RESTARTED_METRIC = "head_restarted"
# In a training message (`engine.fold_evaluation`): the earlier round the client evaluates first,
# with the arrays the message carries; its reply holds those metrics under EVALUATION_RECORD.
EVALUATE_ROUND_KEY = "evaluate-round"
EVALUATION_RECORD = "evaluation"
# The record a client answers with when it cannot take part at all; the server stops the run.
FATAL = "fatal"


def shared_nodes(cfg: DictConfig) -> int | None:
    """How many Flower nodes a simulation starts when it has more clients than
    `engine.max_nodes`: each node then serves whichever client a message names. None when every
    node is one client (up to `max_nodes` clients, and on engines without the key, such as the
    Deployment Engine)."""
    limit = cfg.engine.get("max_nodes")
    return int(limit) if limit is not None and cfg.num_clients > limit else None


@dataclass(frozen=True)
class RunSpec:
    """What every app of one run must agree on; it travels in every message to the clients.

    The clients learn the run from this alone (plus their own node config): no environment
    variable and no file the server wrote. It is a few kB of JSON.
    """

    resolved_config: dict  # the config as composed by Hydra, resolved; never rewritten
    run_id: str
    run_dir: str  # where the ServerApp writes results and its checkpoint (absolute)
    data_dir: str  # default data folder of a node without its own `data-dir` (absolute)
    state_dir: str  # default head folder of a node without its own `state-dir` (absolute)
    num_gpus: float  # GPU share per client actor (simulation engines)
    fingerprint: str  # of the partition every client must rebuild from its local data
    initial_digest: str  # of the seeded initial model every client builds for itself

    @property
    def cfg(self) -> DictConfig:
        """`resolved_config` as a read-only DictConfig (made once per spec and process)."""
        return _as_config(json.dumps(self.resolved_config, sort_keys=True))

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
        resolved_config=OmegaConf.to_container(cfg, resolve=True),
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

"""One experiment, start to end: check, prepare data, simulate on Ray, return the results."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from omegaconf import DictConfig

from fedper.config import SPEC_ENV_VAR, RunSpec, derive_run_spec, validate_config
from fedper.data import prepare_dataset
from fedper.results import load_results

log = logging.getLogger("fedper")
RUN_ID_FILE = "run_id"


def errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_frameworks() -> None:
    """One line per round instead of Flower's and Ray's progress logs.

    Flower resets its logger's level when a simulation starts, so a filter does the job.
    Client failures still reach the console: the server reports them per round.
    """
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False
    if errors_only not in flwr_logger.filters:
        flwr_logger.addFilter(errors_only)
    warnings.filterwarnings("ignore", category=FutureWarning, module="ray")


def run_id_for(run_dir: Path) -> str | None:
    """A run directory that already holds a run keeps its id, so the run resumes."""
    path = run_dir / RUN_ID_FILE
    return path.read_text().strip() if path.is_file() else None


def simulate(spec: RunSpec) -> None:
    """Run the ServerApp and one ClientApp per client on Ray, then shut Ray down."""
    import ray
    from flwr.simulation import run_simulation

    from fedper.client_app import app as client_app
    from fedper.server_app import app as server_app

    cfg = spec.cfg
    backend_config = {
        "client_resources": {
            "num_cpus": cfg.client_resources.num_cpus,
            "num_gpus": spec.num_gpus,
        },
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": False},
    }
    os.environ[SPEC_ENV_VAR] = spec.to_json()
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.num_clients,
            backend_config=backend_config,
        )
    finally:
        os.environ.pop(SPEC_ENV_VAR, None)
        if ray.is_initialized():
            ray.shutdown()


def run_experiment(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Everything `python -m fedper.main` does after Hydra composed the config."""
    validate_config(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset = prepare_dataset(cfg)
    spec = derive_run_spec(cfg, run_dir, run_id_for(run_dir))
    (run_dir / RUN_ID_FILE).write_text(spec.run_id + "\n")
    dataset.save(run_dir)
    quiet_frameworks()
    log.info(
        "%s · %s · %s: %d clients, %d rounds -> %s",
        cfg.algorithm, cfg.model_name, cfg.dataset.name, cfg.num_clients, cfg.num_rounds, run_dir,
    )  # fmt: skip
    simulate(spec)
    return load_results(run_dir)

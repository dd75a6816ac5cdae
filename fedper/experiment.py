"""One experiment, start to end: check, prepare data, simulate on Ray, return the results.

A run directory holds everything needed to continue a run: its id, its resolved config, the
partition, results.json and the server checkpoint. Starting again in the same directory (or
with `resume=<dir>`) continues after the last completed round.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedper.config import SPEC_ENV_VAR, RunSpec, derive_run_spec, validate_config
from fedper.data import prepare_dataset
from fedper.data.federated import PARTITION_FILE
from fedper.errors import ConfigError, FedPerError
from fedper.results import RESULTS_JSON, load_results, write_text_atomic
from fedper.server_app import load_checkpoint

log = logging.getLogger("fedper")
RUN_ID_FILE = "run_id"
CONFIG_FILE = "run_config.json"


class Interrupted(FedPerError):
    """Ctrl-C or SIGTERM: files are consistent and the run can be resumed."""


def critical_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL


def quiet_frameworks() -> None:
    """One line per round instead of Flower's and Ray's logs.

    Flower resets its logger's level when a simulation starts, so a filter does the job.
    Client failures are reported by the server, one line each, with the client's own message.
    """
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False
    if critical_only not in flwr_logger.filters:
        flwr_logger.addFilter(critical_only)
    warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # imported by Flower's link state


def run_id_for(run_dir: Path) -> str | None:
    """A run directory that already holds a run keeps its id, so the run resumes."""
    path = run_dir / RUN_ID_FILE
    return path.read_text().strip() if path.is_file() else None


def settings_of(cfg: DictConfig) -> dict:
    """What makes two runs the same run: the resolved config without `resume`."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("resume", None)
    return settings


def first_difference(a, b, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {a} then, {b} now"


def resumed_config(run_dir: Path) -> DictConfig:
    """The config a run directory was started with (for `resume=<dir>`)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"resume={run_dir} holds no fedper run ({CONFIG_FILE} is missing)")
    return OmegaConf.create(json.loads(path.read_text()))


def claim_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse a directory that holds a run with other settings, rather than mixing two runs."""
    path = run_dir / CONFIG_FILE
    settings = settings_of(cfg)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != settings:
            raise ConfigError(
                f"{run_dir} holds a run with other settings "
                f"({first_difference(saved, settings)}): choose another hydra.run.dir, "
                f"or continue that run with resume={run_dir}"
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(settings, indent=1))


def completed_rounds(run_dir: Path) -> int:
    path = run_dir / RESULTS_JSON
    return len(json.loads(path.read_text())["rounds"]) if path.is_file() else 0


def raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def simulate(spec: RunSpec) -> None:
    """Run the ServerApp and one ClientApp per client on Ray, then shut Ray down."""
    import ray
    from flwr.simulation import run_simulation

    from fedper.client_app import app as client_app
    from fedper.server_app import STOP
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
    STOP.clear()
    # SIGTERM (a scheduler killing the job) takes the same path as Ctrl-C
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.num_clients,
            backend_config=backend_config,
        )
    except KeyboardInterrupt:
        STOP.set()
        raise Interrupted(
            f"interrupted after round {completed_rounds(Path(spec.run_dir))} of "
            f"{cfg.num_rounds}; continue with: python -m fedper.main resume={spec.run_dir}"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.environ.pop(SPEC_ENV_VAR, None)
        if ray.is_initialized():
            ray.shutdown()


def run_experiment(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Everything `python -m fedper.main` does after Hydra composed the config."""
    if cfg.get("resume"):
        run_dir = Path(cfg.resume)
        cfg = resumed_config(run_dir)
    run_dir = Path(run_dir)
    validate_config(cfg)
    claim_run_dir(cfg, run_dir)
    done = completed_rounds(run_dir)
    if done >= cfg.num_rounds:
        log.info("%s is complete (%d rounds): nothing to run", run_dir, done)
        return load_results(run_dir)
    dataset = prepare_dataset(cfg)
    spec = derive_run_spec(cfg, run_dir, run_id_for(run_dir))
    if not (run_dir / RUN_ID_FILE).is_file():
        write_text_atomic(run_dir / RUN_ID_FILE, spec.run_id + "\n")
    if not (run_dir / PARTITION_FILE).is_file():
        dataset.save(run_dir)
    load_checkpoint(run_dir, spec.run_id)  # a damaged checkpoint is reported before Ray starts
    quiet_frameworks()
    log.info(
        "%s · %s · %s: %d clients, %d rounds -> %s%s",
        cfg.algorithm, cfg.model_name, cfg.dataset.name, cfg.num_clients, cfg.num_rounds,
        run_dir, f" (continuing after round {done})" if done else "",
    )  # fmt: skip
    simulate(spec)
    return load_results(run_dir)

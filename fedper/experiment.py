"""One experiment, start to end: check, claim the run directory, plan, hand to an engine.

A run directory holds everything the server needs to continue a run: its id, its resolved
config, results.json and the server checkpoint. Starting again in the same directory (or
with `resume=<dir>`) continues after the last completed round. Clients keep their heads on
their own nodes; nothing in the run directory is read by a client.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedper.config import RunPlan, derive_run_spec, new_run_id, validate_config
from fedper.data import prepare_dataset
from fedper.errors import ConfigError
from fedper.models import build_model
from fedper.results import RESULTS_JSON, load_results
from fedper.state import load_checkpoint, tensors_digest, write_text_atomic

log = logging.getLogger("fedper")
RUN_ID_FILE = "run_id"
CONFIG_FILE = "run_config.json"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


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
        write_text_atomic(path, json.dumps(settings, indent=1))


def completed_rounds(run_dir: Path) -> int:
    path = run_dir / RESULTS_JSON
    return len(json.loads(path.read_text())["rounds"]) if path.is_file() else 0


def code_version() -> dict:
    """The commit this code came from and whether the tree differed from it (null outside git)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "commit": commit.strip() if commit else None,
        "dirty": bool(status.strip()) if status is not None else None,
    }


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("torch", "flwr", "ray", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def plan_run(cfg: DictConfig, run_dir: str | Path) -> RunPlan:
    """Check the config, claim the run directory and fix what every app must agree on."""
    run_dir = Path(run_dir).resolve()
    validate_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    claim_run_dir(cfg, run_dir)
    dataset = prepare_dataset(cfg)
    run_id = run_id_for(run_dir) or new_run_id()
    initial = build_model(cfg, seed=cfg.seed).state_dict()
    spec = derive_run_spec(cfg, run_dir, run_id, dataset.fingerprint(), tensors_digest(initial))
    if not (run_dir / RUN_ID_FILE).is_file():
        write_text_atomic(run_dir / RUN_ID_FILE, run_id + "\n")
    load_checkpoint(run_dir, run_id)  # a damaged checkpoint is reported before any engine starts
    header = {
        "partition": dataset.summary(),
        "partition_fingerprint": spec.fingerprint,
        "code_version": code_version(),
        "versions": library_versions(),
    }
    return RunPlan(spec, header)


def plan_from_run_config(run_config, flower_run_id: int) -> RunPlan:
    """A `flwr run` ServerApp's plan: the one fedper.main sent, or one made from
    `preset` and `overrides` (Hydra overrides, space-separated) in the run config."""
    plan = RunPlan.from_run_config(run_config)
    if plan is not None:
        return plan
    from hydra import compose, initialize_config_dir

    overrides = str(run_config.get("overrides") or "").split()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base=None):
        cfg = compose(str(run_config.get("preset") or "base"), overrides=overrides)
    run_dir = str(run_config.get("run-dir") or "") or f"outputs/flwr-run-{flower_run_id}"
    return plan_run(cfg, run_dir)


def run_experiment(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Everything `python -m fedper.main` does after Hydra composed the config."""
    from fedper.engines import run_on_engine

    if cfg.get("resume"):
        run_dir = Path(cfg.resume)
        cfg = resumed_config(run_dir)
    run_dir = Path(run_dir)
    validate_config(cfg)
    done = completed_rounds(run_dir) if (run_dir / CONFIG_FILE).is_file() else 0
    if done >= cfg.num_rounds and (run_dir / CONFIG_FILE).is_file():
        claim_run_dir(cfg, run_dir)
        log.info("%s is complete (%d rounds): nothing to run", run_dir, done)
        return load_results(run_dir)
    plan = plan_run(cfg, run_dir)
    log.info(
        "%s · %s · %s: %d clients, %d rounds, engine %s -> %s%s",
        cfg.algorithm, cfg.model_name, cfg.dataset.name, cfg.num_clients, cfg.num_rounds,
        cfg.engine.name, run_dir, f" (continuing after round {done})" if done else "",
    )  # fmt: skip
    run_on_engine(plan)
    return load_results(run_dir)

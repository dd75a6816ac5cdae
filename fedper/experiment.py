"""One experiment, start to end: check, claim the run directory, plan, hand to an engine.

A run directory holds everything the server needs to continue a run: its id, its settings
(run_config.json, paths absolute), results.json and the server checkpoint. Starting again in
the same directory (or with `resume=<dir>`) continues after the last committed round. Clients
keep their heads on their own nodes; nothing in the run directory is read by a client. While
it runs, the launcher holds the directory's lock (`fedper.rundir`), whatever the engine.
"""

from __future__ import annotations

import inspect
import logging
import platform
import subprocess
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedper import CONF_DIR, PROJECT_ROOT
from fedper.algorithms import ALGORITHMS
from fedper.atomic import write_text_atomic
from fedper.checkpoint import load_checkpoint
from fedper.commit import RoundCommit, committed_round
from fedper.data import prepare_dataset
from fedper.device import client_device, describe, describe_line, resolve_performance
from fedper.errors import ConfigError, Interrupted
from fedper.interrupts import signals_interrupt
from fedper.models import MODELS, SPLIT_KEYS, build_model
from fedper.results import load_results, partial_rounds
from fedper.rundir import (
    CONFIG_FILE,
    RunLock,
    check_owned,
    checked_json,
    read_checked_json,
    read_run_id,
    sweep_temporaries,
    write_run_id,
)
from fedper.settings import is_setting, settings_only, with_current_names
from fedper.spec import RunPlan, derive_run_spec, new_run_id
from fedper.tensor_files import tensors_digest
from fedper.validation import validate_config

log = logging.getLogger("fedper")
PATH_KEYS = ("data_dir", "state_dir")
CONFIG_WAY_OUT = "restore it, or start a fresh run in a new directory"


def settings_of(cfg: DictConfig) -> dict:
    """What makes two runs the same run: the resolved config without `resume`, its folders
    absolute, as run_config.json stores them at the first start."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("resume", None)
    for key in PATH_KEYS:
        settings[key] = str(Path(settings[key]).expanduser().resolve())
    return settings


def first_difference(a, b, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {a} then, {b} now"


def saved_settings(run_dir: Path) -> dict:
    return with_current_names(read_checked_json(run_dir / CONFIG_FILE, CONFIG_WAY_OUT)["config"])


def save_settings(run_dir: Path, settings: dict) -> None:
    write_text_atomic(run_dir / CONFIG_FILE, checked_json({"config": settings}) + "\n")


def resumed_config(run_dir: Path, cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The settings `run_dir` was started with; `num_rounds` may be raised, nothing else changed."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"resume={run_dir} holds no fedper run ({CONFIG_FILE} is missing)")
    settings = saved_settings(run_dir)
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        if key == "resume" or key.startswith(("hydra.", "hydra/")):
            continue
        if not is_setting(key.replace("/", ".")):  # where it runs: the engine, devices, resources
            group = key.replace("/", ".").split(".", 1)[0]
            settings[group] = OmegaConf.to_container(cfg, resolve=True)[group]
            continue
        if key != "num_rounds":
            raise ConfigError(
                f"resume={run_dir} continues a run with its own settings, and {override} would "
                "change them: only num_rounds may be raised (and where it runs: engine, "
                "devices, client_resources, performance; and restart_lost_heads); start a new "
                "run for other settings"
            )
        rounds = cfg.num_rounds
        if isinstance(rounds, int) and not isinstance(rounds, bool):
            if rounds < settings["num_rounds"]:
                raise ConfigError(
                    f"num_rounds={rounds} is below the run's num_rounds={settings['num_rounds']}:"
                    f" resume={run_dir} may only raise it"
                )
        settings["num_rounds"] = rounds  # checked with the rest by validate_config
    return OmegaConf.create(settings)


def claim_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse a directory that holds a run with other settings, rather than mixing two runs."""
    settings = settings_of(cfg)
    if (run_dir / CONFIG_FILE).exists():
        # where it runs may change between legs (e.g. a sweep continued with other --jobs)
        saved = settings_only(saved_settings(run_dir))
        if saved != settings_only(settings):
            raise ConfigError(
                f"{run_dir} holds a run with other settings "
                f"({first_difference(saved, settings_only(settings))}): choose another "
                f"hydra.run.dir, or continue that run with resume={run_dir}"
            )
    else:
        save_settings(run_dir, settings)


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
    run_id = read_run_id(run_dir)
    if run_id is None:
        run_id = new_run_id()
        write_run_id(run_dir, run_id)
    load_checkpoint(run_dir, run_id)  # a damaged checkpoint is reported before any engine starts
    dataset = prepare_dataset(cfg)
    initial = build_model(cfg, seed=cfg.seed).state_dict()
    spec = derive_run_spec(cfg, run_dir, run_id, dataset.fingerprint(), tensors_digest(initial))
    header = {
        "partition": dataset.summary(),
        "partition_fingerprint": spec.fingerprint,
        "code_version": code_version(),
        "versions": library_versions(),
        # what the clients compute with, as this machine resolves it (a SuperNode of the
        # Deployment Engine resolves `auto` on its own hardware)
        "device": describe(resolve_performance(cfg, client_device(cfg)), spec.num_gpus),
        "unused_settings": unused_settings(cfg),
    }
    return RunPlan(spec, header)


def unused_settings(cfg: DictConfig) -> list[str]:
    """Keys in `config` that this run's algorithm and model ignore (kept there so that every
    run's config has the same keys, and runs that differ only in them pair up in the tables)."""
    algorithm = ALGORITHMS[cfg.algorithm]
    takes = inspect.signature(MODELS[cfg.model_name].build).parameters
    unused = [f"model.{key}" for key in cfg.model if key not in takes and key not in SPLIT_KEYS]
    if not algorithm.finetune_head:
        unused.append("finetune_epochs")
    if not algorithm.head_then_base:
        unused.append("fedrep.head_epochs")
    return unused


def config_from_run_config(run_config, flower_run_id: int) -> tuple[DictConfig, Path]:
    """A plain `flwr run`'s settings: `preset` and `overrides` (Hydra overrides, space-separated)
    from the run config, composed from this app's conf/, and where the run directory goes."""
    from hydra import compose, initialize_config_dir

    overrides = str(run_config.get("overrides") or "").split()
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose(str(run_config.get("preset") or "base"), overrides=overrides)
    run_dir = str(run_config.get("run-dir") or "") or f"outputs/flwr-run-{flower_run_id}"
    return cfg, Path(run_dir).expanduser().resolve()


def run_experiment(
    cfg: DictConfig,
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    engine: Callable[[RunPlan], None] | None = None,
) -> dict:
    """Everything `python -m fedper.main` does after Hydra composed the config.

    `overrides` are the command line's (what `resume=` may change); `engine` runs a plan
    (default: the configured engine; tests pass an in-process one).
    """
    from fedper.engines import run_on_engine

    resume = cfg.get("resume")
    run_dir = Path(resume or run_dir).expanduser().resolve()
    if resume and not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"resume={run_dir} holds no fedper run ({CONFIG_FILE} is missing)")
    if not resume:
        validate_config(cfg)  # before anything is written
    check_owned(run_dir)
    with signals_interrupt(), RunLock(run_dir):
        try:
            sweep_temporaries(run_dir)
            if resume:
                cfg = resumed_config(run_dir, cfg, overrides)
                validate_config(cfg)
                if saved_settings(run_dir)["num_rounds"] != cfg.num_rounds:
                    save_settings(run_dir, settings_of(cfg))
            claim_run_dir(cfg, run_dir)
            if finished(cfg, run_dir):
                return load_results(run_dir)
            plan = plan_run(cfg, run_dir)
            done = committed_round(run_dir)
            log.info(
                "%s · %s · %s: %d clients, %d rounds, engine %s -> %s%s",
                cfg.algorithm, cfg.model_name, cfg.dataset.name, cfg.num_clients,
                cfg.num_rounds, cfg.engine.name, run_dir,
                f" (continuing after round {done})" if done else "",
            )  # fmt: skip
            log.info(describe_line(plan.header["device"]))
            (engine or run_on_engine)(plan)
        except KeyboardInterrupt:
            raise interrupted(run_dir, cfg.num_rounds) from None
    results = load_results(run_dir)
    log_final(results, run_dir)
    return results


def finished(cfg: DictConfig, run_dir: Path) -> bool:
    """A run whose checkpoint has every round is not run again; its views are brought up to it."""
    run_id = read_run_id(run_dir)
    checkpoint = load_checkpoint(run_dir, run_id) if run_id is not None else None
    if checkpoint is None or checkpoint.round < cfg.num_rounds:
        return False
    RoundCommit(run_dir, run_id).restore()
    log.info("%s is complete (%d rounds): nothing to run", run_dir, checkpoint.round)
    return True


def interrupted(run_dir: Path, num_rounds: int) -> Interrupted:
    """Ctrl-C or SIGTERM: what is on disk, and the command that continues it."""
    if not (run_dir / CONFIG_FILE).is_file():
        return Interrupted("interrupted before the run started: run the same command again")
    return Interrupted(
        f"interrupted after round {committed_round(run_dir)} of {num_rounds}; continue with: "
        f"python -m fedper.main resume={run_dir}"
    )


def log_final(results: dict, run_dir: Path) -> None:
    """The last line: where the run is, its final accuracy, and how many rounds were partial."""
    rounds = results["rounds"]
    partial = partial_rounds(rounds)
    accuracy = rounds[-1]["accuracy"] if rounds else None
    log.info(
        "finished %d round(s) -> %s: final accuracy %s; partial rounds (fewer clients than "
        "asked): %d%s",
        len(rounds), run_dir, "n/a" if accuracy is None else f"{accuracy:.3f}", len(partial),
        f" (round {', '.join(map(str, partial))})" if partial else "",
    )  # fmt: skip

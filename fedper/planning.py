"""Planning a run: check its config, claim its run directory, and fix what every app agrees on.

A run directory holds everything the server needs to continue a run: its id, its settings
(run_config.json, paths absolute), results.json and the server checkpoint. A directory that
holds a run with other settings is refused rather than mixed; keys that are not a setting
(fedper.settings) may differ. `resume=<dir>` continues a run with its stored settings, of
which only `num_rounds` may be raised (and keys that are not a setting changed). Planning
builds the partition and the seeded initial model once, and puts their digests in the
RunSpec every client checks its own against.
"""

from __future__ import annotations

import inspect
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from fedper import CONF_DIR, PROJECT_ROOT
from fedper.algorithms import ALGORITHMS
from fedper.atomic import write_text_atomic
from fedper.checkpoint import load_checkpoint
from fedper.data import prepare_dataset
from fedper.device import client_device, describe, resolve_performance
from fedper.errors import ConfigError
from fedper.models import MODELS, SPLIT_KEYS, build_model
from fedper.rundir import CONFIG_FILE, checked_json, read_checked_json, read_run_id, write_run_id
from fedper.settings import NOT_SETTING_SECTIONS, is_setting, settings_only, with_current_names
from fedper.spec import RunPlan, derive_run_spec, new_run_id
from fedper.tensor_files import tensors_digest
from fedper.validation import validate_config

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
        if not is_setting(key.replace("/", ".")):  # where it runs, its folders, recovery
            take_from(cfg, key.replace("/", "."), settings)
            continue
        if key != "num_rounds":
            raise ConfigError(
                f"resume={run_dir} continues a run with its own settings, and {override} would "
                "change them: only num_rounds may be raised (and where it runs: engine, "
                "devices, client_resources, performance, data_dir, state_dir; and "
                "restart_lost_heads); start a new run for other settings"
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


def take_from(cfg: DictConfig, key: str, settings: dict) -> None:
    """Put the value that `cfg` gives a key that is not a setting into stored `settings`: a
    whole section (`engine=ray` or `engine.address=...` choose the engine anew), else one key."""
    section, _, rest = key.partition(".")
    if section in NOT_SETTING_SECTIONS or not rest:
        settings[section] = OmegaConf.to_container(cfg, resolve=True)[section]
    else:
        settings.setdefault(section, {})[rest] = OmegaConf.select(cfg, key)


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


def plan_run(cfg: DictConfig, run_dir: str | Path) -> RunPlan:
    """Check the config, claim the run directory, then `prepare_run` (a plain `flwr run`, the
    benchmark and tests; `python -m fedper.main` checks and claims on its own, once)."""
    run_dir = Path(run_dir).resolve()
    validate_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    claim_run_dir(cfg, run_dir)
    return prepare_run(cfg, run_dir)


def prepare_run(cfg: DictConfig, run_dir: Path) -> RunPlan:
    """Fix what every app must agree on, for a checked config and a claimed run directory."""
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


def config_from_run_config(run_config, flower_run_id: int) -> tuple[DictConfig, Path]:
    """A plain `flwr run`'s settings: `preset` and `overrides` (Hydra overrides, space-separated)
    from the run config, composed from this app's conf/, and where the run directory goes."""
    overrides = str(run_config.get("overrides") or "").split()
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose(str(run_config.get("preset") or "base"), overrides=overrides)
    run_dir = str(run_config.get("run-dir") or "") or f"outputs/flwr-run-{flower_run_id}"
    return cfg, Path(run_dir).expanduser().resolve()

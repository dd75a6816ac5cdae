"""Every config key checked before any data or Ray work, each in one line naming the key and
what would work: known keys only, types (a bool is not a number), ranges, folders. The checks
that need no torch (`check_settings`) run before the registries that import it are loaded."""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from fedper.checks import (
    check,
    check_bool,
    check_choice,
    check_folder,
    check_number,
    check_range,
    check_whole,
    is_number,
    show,
)
from fedper.config_keys import check_known_keys
from fedper.data import DATASETS, check_dataset_settings
from fedper.trackers import check_trackers

# beyond these, a pool or a model no longer fits a machine (the paper: 224 px, width 1.0)
MAX_IMAGE_SIZE = 2048
MAX_WIDTH = 4


def validate_config(cfg: DictConfig) -> None:
    """Every mistake a user can make in an override, caught before any data or Ray work: the
    generic checks here, the chosen algorithm's, model's, dataset's and partition's in their
    registry entries (the engine's: fedper.engines, where the engines are)."""
    check_settings(cfg)
    check_entries(cfg)


def check_settings(cfg: DictConfig) -> None:
    """The checks that need no torch: fedper.preflight runs them before torch is imported."""
    check_choice("dataset", cfg.dataset.name, list(DATASETS))
    check_known_keys(cfg)
    check_whole("seed", cfg.seed, 0)
    for key in ("num_clients", "num_rounds", "num_epochs", "batch_size", "clients_per_round"):
        check_whole(key, cfg[key], 1)
    check_number("learning_rate", cfg.learning_rate, 0, low_open=True)
    check_number("momentum", cfg.momentum, 0, 1)
    check_number("weight_decay", cfg.weight_decay, 0)
    check_whole("finetune_epochs", cfg.finetune_epochs, 0)
    check_whole("fedrep.head_epochs", OmegaConf.select(cfg, "fedrep.head_epochs"), 0)
    check_range("clients_per_round", cfg.clients_per_round, 1, cfg.num_clients,
                f" for num_clients={cfg.num_clients}")  # fmt: skip
    check_range("min_successful_clients", cfg.min_successful_clients, 1, cfg.clients_per_round,
                f" for clients_per_round={cfg.clients_per_round}")  # fmt: skip
    check_whole("evaluate_every", cfg.get("evaluate_every", 1), 1)
    if cfg.get("clients_per_evaluation") is not None:
        check_range("clients_per_evaluation", cfg.clients_per_evaluation, 1, cfg.num_clients,
                    f" for num_clients={cfg.num_clients} (null: every client)")  # fmt: skip
    width = cfg.model.width_multiplier
    check_number("model.width_multiplier", width, 0, low_open=True)
    check(width <= MAX_WIDTH, f"model.width_multiplier={show(width)} is out of range: use a number in (0, {MAX_WIDTH}]")  # fmt: skip
    check_bool("model.local_bn", OmegaConf.select(cfg, "model.local_bn"))
    check_bool("restart_lost_heads", cfg.get("restart_lost_heads", False))
    check_bool(
        "engine.fold_evaluation", OmegaConf.select(cfg, "engine.fold_evaluation", default=False)
    )
    validate_dataset(cfg)
    cpus = cfg.client_resources.num_cpus
    check(
        is_number(cpus) and 0 < cpus <= (os.cpu_count() or 1),
        f"client_resources.num_cpus={show(cpus)} is out of range: use a number > 0 and at most "
        f"this machine's {os.cpu_count()} CPUs",
    )
    validate_engine(cfg)
    check_folder("data_dir", cfg.data_dir)
    # not created here: where heads live is the engine's to say (a SuperNode has its own)
    check_folder("state_dir", cfg.state_dir, must_create=False)
    resume = cfg.get("resume")
    check(resume is None or isinstance(resume, str), f"resume={show(resume)} is not a run directory: use resume=<dir>")  # fmt: skip
    validate_faults(cfg)
    check_trackers(cfg)  # logger=...: each chosen tracker's package is installed
    # the dataset's and the partition's own keys (their registry entries), before any data
    # is read; whether the data can feed `num_clients` is checked by `prepare_dataset`
    check_dataset_settings(cfg)


def check_entries(cfg: DictConfig) -> None:
    """The chosen algorithm's and model's checks and the devices' (these import torch)."""
    from fedper.algorithms import ALGORITHMS
    from fedper.device import check_performance, resolve_device, resolve_num_gpus
    from fedper.models import MODELS

    check_choice("algorithm", cfg.algorithm, list(ALGORITHMS))
    check_choice("model_name", cfg.model_name, list(MODELS))
    ALGORITHMS[cfg.algorithm].check(cfg)
    MODELS[cfg.model_name].check(cfg)
    check_performance(cfg)  # the device module's switches
    for key in ("server_device", "client_device"):
        resolve_device(cfg[key], key)
    resolve_num_gpus(cfg.client_resources.num_gpus)


def validate_dataset(cfg: DictConfig) -> None:
    """The keys every dataset has; dataset-specific ones are the data layer's (check_data_settings)."""
    ds = cfg.dataset
    check_whole("dataset.total_classes", ds.total_classes, 1)
    check_whole("dataset.image_size", ds.image_size, 1, MAX_IMAGE_SIZE)
    check_whole("dataset.seed", ds.seed, 0)
    if ds.get("num_classes") is not None:
        check_range("dataset.num_classes", ds.num_classes, 1, ds.total_classes,
                    f" (classes per client) for {ds.name}")  # fmt: skip
    if ds.get("fraction") is not None:
        check(
            is_number(ds.fraction) and 0 < ds.fraction < 1,
            f"dataset.fraction={show(ds.fraction)} is out of range: use a number strictly "
            "between 0 and 1",
        )
    if "download" in ds:
        check_bool("dataset.download", ds.download)
    augment = ds.get("augment") or {}
    if "crop_padding" in augment:
        check_whole("dataset.augment.crop_padding", augment.crop_padding, 0)
    if "flip" in augment:
        check_bool("dataset.augment.flip", augment.flip)


def validate_faults(cfg: DictConfig) -> None:
    """The test-only fault injection: off (null) or a client, a round and a phase that exist;
    a hold names its round, phase and release file."""
    faults = cfg.get("faults") or {}
    if faults.get("fail_client") is not None:
        check_range("faults.fail_client", faults.fail_client, 0, cfg.num_clients - 1,
                    f" for num_clients={cfg.num_clients}")  # fmt: skip
    if faults.get("fail_round") is not None:
        check_whole("faults.fail_round", faults.fail_round, 1)
    if "fail_phase" in faults:
        check_choice("faults.fail_phase", faults.fail_phase, ["train", "evaluate"])
    if faults.get("hold_round") is not None:
        check_whole("faults.hold_round", faults.hold_round, 1)
        check_choice("faults.hold_phase", faults.get("hold_phase"), ["train", "evaluate"])
        check(isinstance(faults.get("hold_until"), str) and faults.hold_until != "",
              "faults.hold_round needs faults.hold_until=<a file the test creates to release "
              "the clients>")  # fmt: skip
        check_range("faults.hold_seconds_max", faults.get("hold_seconds_max"), 1, 3600, "")


def validate_engine(cfg: DictConfig) -> None:
    """What every engine has: timeouts (each engine checks its own keys, fedper.engines)."""
    engine = cfg.get("engine")
    check(engine is not None and engine.get("name") is not None, "engine is not set: use engine=simulation")  # fmt: skip
    for name in ("connect_timeout", "reply_timeout"):
        value = engine.get(name)
        check(
            is_number(value) and value > 0,
            f"engine.{name}={show(value)} is out of range: use a number of seconds > 0",
        )

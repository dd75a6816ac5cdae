"""Entry point: `python -m fedper.main [overrides]` (Hydra; `--multirun` sweeps).

The command line is checked first (fedper.preflight), so that a bad override is refused in a
second or two and leaves no output folder; torch, Flower and Ray are imported once it passed.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedper import usage  # noqa: F401  (registers the resolvers --help's template reads)
from fedper.errors import FedPerError, exit_with_error
from fedper.preflight import check_command_line

CONFIG_NAME = "base"


def check_settings(cfg: DictConfig) -> None:
    """The start checks that need no torch (fedper.validation)."""
    from fedper.validation import check_settings as check

    check(cfg)


def check_start(cfg: DictConfig) -> None:
    """Every start check (the registries' entries, devices, the engine): imports torch, not
    Flower or Ray."""
    from fedper.engines import check_engine
    from fedper.validation import validate_config

    validate_config(cfg)
    check_engine(cfg)


@hydra.main(config_path="../conf", config_name=CONFIG_NAME, version_base=None)
def main(cfg: DictConfig) -> float | None:
    from fedper.experiment import run_experiment

    try:
        hydra = HydraConfig.get()
        results = run_experiment(cfg, hydra.runtime.output_dir, hydra.overrides.task)
    except FedPerError as error:
        exit_with_error("fedper", error)
    rounds = results["rounds"]
    return rounds[-1]["accuracy"] if rounds else None


if __name__ == "__main__":
    check_command_line(sys.argv[1:], CONFIG_NAME, (check_settings, check_start))
    main()

"""Entry point: `python -m fedper.main [overrides]` (Hydra; `--multirun` sweeps).

The command line is checked first (fedper.preflight), so that a bad override is refused in a
second or two and leaves no output folder; torch, Flower and Ray are imported once it passed.
"""

from __future__ import annotations

from fedper.interrupts import exit_on_signal

AS_PROGRAM = __name__ == "__main__"  # not when imported: the importer keeps its signals
if AS_PROGRAM:  # first, so that a Ctrl-C while the libraries load is one line too
    exit_on_signal("interrupted before the run started: run the same command again")

import sys  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fedper import usage  # noqa: E402, F401  (registers the resolvers --help's template reads)
from fedper.errors import FedPerError, exit_with_error  # noqa: E402
from fedper.preflight import check_command_line  # noqa: E402

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
    if AS_PROGRAM:  # the run's files are complete; a sweep's next run takes the signals again
        exit_on_signal(f"interrupted after {hydra.runtime.output_dir} finished: its results are "
                       "complete; run the same command again for the runs still to come")  # fmt: skip
    rounds = results["rounds"]
    return rounds[-1]["accuracy"] if rounds else None


if __name__ == "__main__":
    check_command_line(sys.argv[1:], CONFIG_NAME, (check_settings, check_start))
    main()

"""Entry point: `python -m fedper.main [overrides]` (Hydra; `--multirun` sweeps)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedper.errors import FedPerError, exit_with_error
from fedper.experiment import run_experiment


@hydra.main(config_path="../conf", config_name="base", version_base=None)
def main(cfg: DictConfig) -> float | None:
    try:
        hydra = HydraConfig.get()
        results = run_experiment(cfg, hydra.runtime.output_dir, hydra.overrides.task)
    except FedPerError as error:
        exit_with_error("fedper", error)
    rounds = results["rounds"]
    return rounds[-1]["accuracy"] if rounds else None


if __name__ == "__main__":
    main()

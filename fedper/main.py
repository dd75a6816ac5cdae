"""Entry point: `python -m fedper.main [overrides]` (Hydra; `--multirun` sweeps)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedper.errors import FedPerError
from fedper.experiment import run_experiment


@hydra.main(config_path="../conf", config_name="base", version_base=None)
def main(cfg: DictConfig) -> float | None:
    try:
        results = run_experiment(cfg, HydraConfig.get().runtime.output_dir)
    except FedPerError as error:
        print(f"fedper: error: {error}", file=sys.stderr)
        sys.exit(2)
    rounds = results["rounds"]
    return rounds[-1]["accuracy"] if rounds else None


if __name__ == "__main__":
    main()

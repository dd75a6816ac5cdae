"""Entry point: `python -m fedper.main [overrides]` (Hydra; `--multirun` sweeps)."""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedper.errors import FedPerError
from fedper.experiment import run_experiment


@hydra.main(config_path="../conf", config_name="base", version_base=None)
def main(cfg: DictConfig) -> float | None:
    try:
        hydra = HydraConfig.get()
        results = run_experiment(cfg, hydra.runtime.output_dir, hydra.overrides.task)
    except FedPerError as error:
        print(f"fedper: error: {error}", file=sys.stderr)
        # Flower's message threads may still wait on replies from Ray actors that are gone, and
        # the interpreter would wait for them at exit: leave without joining them. Ray is shut
        # down and every file is committed and closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    rounds = results["rounds"]
    return rounds[-1]["accuracy"] if rounds else None


if __name__ == "__main__":
    main()

"""Where the clients run: a local simulation, a Ray cluster, or Flower's Deployment Engine.

Every engine runs the same ServerApp loop and the same ClientApp; only how they are started
differs. An engine is an `Engine` in `ENGINES` (`engine=<name>` picks it, conf/engine/<name>.yaml
holds its keys): `ENGINES.add(Engine(...))` registers another (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig

from fedper.engines.deployment import check_deployment, deploy
from fedper.engines.simulation import check_ray, check_simulation, simulate
from fedper.registry import Registry
from fedper.spec import RunPlan


@dataclass(frozen=True)
class Engine:
    """How a planned run is started, what it is called, and its own keys' checks."""

    name: str
    label: str  # display name
    run: Callable[[RunPlan], None]  # returns when the run is complete
    checks: Callable[[DictConfig], None] | None = None  # the keys of conf/engine/<name>.yaml

    def check(self, cfg: DictConfig) -> None:
        if self.checks is not None:
            self.checks(cfg)


ENGINES: Registry[Engine] = Registry("engine")
ENGINES.add(Engine("simulation", "local simulation (Ray)", simulate, check_simulation))
ENGINES.add(Engine("ray", "Ray cluster", simulate, check_ray))
ENGINES.add(Engine("deployment", "Flower Deployment Engine", deploy, check_deployment))


def check_engine(cfg: DictConfig) -> None:
    """The configured engine is registered and its keys are right."""
    ENGINES.pick(cfg.engine.name).check(cfg)


def run_on_engine(plan: RunPlan) -> None:
    """Run the planned rounds on the configured engine; return when the run is complete."""
    ENGINES.pick(plan.spec.cfg.engine.name).run(plan)

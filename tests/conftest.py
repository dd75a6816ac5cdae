"""Shared test helpers: composed configs and a subprocess run of `python -m fedper.main`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
# tests run offline and quietly
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# A suite started in the background of a non-interactive shell inherits SIGINT as ignored, and so
# would every run it starts (fedper.interrupts keeps an ignored signal ignored, as a launcher
# asks). The interrupt tests need SIGINT as a terminal delivers it, however the suite is started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# a model and run small enough for CPU tests
TINY = [
    "client_device=cpu",  # exact-equality checks assume CPU numerics, also on a CUDA machine
    "model.width_multiplier=0.25",
    "num_rounds=2",
    "num_epochs=1",
    "batch_size=16",
    "num_clients=4",
    "clients_per_round=4",
]


def make_config(overrides: list[str] = (), config_name: str = "base") -> DictConfig:
    """The config Hydra composes from conf/ for these overrides."""
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose(config_name, overrides=list(overrides))


def run_main(
    workdir: Path,
    overrides: list[str],
    run_dir: Path | None = None,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`python -m fedper.main` in `workdir` (datasets/ and client_states/ land there)."""
    args = [sys.executable, "-m", "fedper.main", *overrides]
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    return subprocess.run(
        args, cwd=workdir, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path

"""The federated-vs-plain benchmark: a short experiment through the real path (Flower on
Ray), then the same client work in the plain loop, each with its memory sampled."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedper.atomic import write_text_atomic
from fedper.bench.gpu import gpu_check
from fedper.bench.plain import run_plain
from fedper.bench.preparation import time_client_preparation
from fedper.bench.report import bench_report
from fedper.bench.resources import num_actors
from fedper.bench.sampling import MemorySampler, driver_max_rss_bytes
from fedper.bench.settings import BENCH_JSON, BenchSettings
from fedper.errors import ConfigError
from fedper.experiment import run_experiment
from fedper.planning import plan_run
from fedper.progress import phase
from fedper.validation import validate_config

FEDERATED_DIR = "federated"
PHASES = 3  # what a benchmark reports while it runs: phase k of 3


def run_benchmark(cfg: DictConfig, run_dir: str | Path) -> dict:
    """The whole benchmark; returns what it writes to `<run_dir>/bench.json`."""
    validate_config(cfg)
    settings = BenchSettings.from_config(cfg)
    if cfg.engine.name != "simulation":
        raise ConfigError(
            f"bench.mode={settings.mode} measures engine=simulation, not engine={cfg.engine.name}:"
            " use bench=deployment for the Deployment Engine's cost"
        )
    run_dir = Path(run_dir)
    federated_dir = run_dir / FEDERATED_DIR
    if (federated_dir / "results.json").exists():
        raise ConfigError(
            f"{federated_dir} already holds a run: give the benchmark a new hydra.run.dir"
        )
    actors = num_actors(cfg)

    with phase(1, PHASES, f"the federated run: {cfg.num_rounds} rounds through Flower on Ray"):
        with MemorySampler(settings.memory_interval) as federated_memory:
            federated = run_experiment(cfg, federated_dir)
    memory = {**federated_memory.summary(), "driver_ru_maxrss_bytes": driver_max_rss_bytes()}

    spec_json = plan_run(cfg, federated_dir).spec.to_json()
    with phase(2, PHASES, f"the same clients' work in a plain loop ({settings.plain_mode})"):
        with MemorySampler(settings.memory_interval) as plain_memory:
            plain = run_plain(spec_json, federated, actors, settings.plain_mode == "parallel")
    memory["plain_peak_all_processes_bytes"] = plain_memory.peak_bytes
    # the same client core without Flower and Ray: what an actor's own share is measured against
    memory["plain_peak_rss_by_process_bytes"] = plain_memory.peak_by_process
    memory["processes_started"] = {
        "federated": federated_memory.processes_started(),
        "plain": plain_memory.processes_started(),
    }

    with phase(3, PHASES, f"data preparation, timed {settings.prep_repeats} times"):
        preparation = time_client_preparation(cfg, settings)
    report = bench_report(cfg, settings, federated, plain, actors, memory, preparation)
    report["cpu_seconds_by_process"] = {
        "federated": federated_memory.cpu_seconds(),
        "plain": plain_memory.cpu_seconds(),
    }
    report["gpu_check"] = gpu_check(cfg, report)
    report["settings"] = asdict(settings)
    report["config"] = OmegaConf.to_container(cfg, resolve=True)
    write_text_atomic(run_dir / BENCH_JSON, json.dumps(report, indent=1))
    return report

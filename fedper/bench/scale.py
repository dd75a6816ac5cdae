"""`python -m fedper.bench bench=scale`: how a start, a round, memory and the bytes written grow
with the number of clients.

For each of `bench.scale_clients` one run through the simulation engine (conf/bench/scale.yaml:
synthetic images, `bench.images_per_client` per client, a small MobileNet-v1, the same number
of clients trained and evaluated per round at every size), each from a fresh Ray instance in a
folder of its own under the benchmark's run directory. The synthetic pool is made before a run
is timed, as a real dataset would already be on disk.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from fedper.atomic import write_text_atomic
from fedper.bench.sampling import MemorySampler, process_tree
from fedper.bench.settings import BENCH_JSON, BenchSettings
from fedper.data import prepare_dataset
from fedper.engines import run_on_engine
from fedper.errors import ConfigError
from fedper.experiment import run_experiment
from fedper.progress import phase
from fedper.spec import RunPlan, shared_nodes
from fedper.validation import validate_config

SCALE_PLOT = "scale.png"
# targets the scaling issue set for this machine: later rounds at the largest size against the
# smallest, and the start-up at the largest size
TARGETS = {"round_ratio_max": 1.2, "startup_seconds_max": 30.0}


def bytes_written() -> int:
    """Bytes this process and every process under it (Ray's, the client actors) have written
    to storage so far."""
    total = 0
    for process in process_tree():
        try:
            total += process.io_counters().write_bytes
        except Exception:
            continue  # a worker that ended while it was read
    return total


class RoundClock(logging.Handler):
    """When each round's line was logged (just after its results were committed), and the
    bytes written by then."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.at: list[float] = []
        self.written: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("round %d/%d"):
            self.at.append(time.perf_counter())
            self.written.append(bytes_written())


def config_for(cfg: DictConfig, num_clients: int, images_per_client: int) -> DictConfig:
    """The scenario at `num_clients` clients, each with `images_per_client` images."""
    sized = cfg.copy()
    with open_dict(sized):
        sized.num_clients = num_clients
        sized.dataset.size = num_clients * images_per_client
        sized.clients_per_round = min(cfg.clients_per_round, num_clients)
        if cfg.get("clients_per_evaluation"):
            sized.clients_per_evaluation = min(cfg.clients_per_evaluation, num_clients)
        sized.pop("bench", None)
    return sized


def measure(cfg: DictConfig, run_dir: Path, interval: float) -> dict:
    """One run at one size: its start-up split, its later rounds, its last round (every client
    evaluates), its peak memory and the bytes written per round."""
    started = time.perf_counter()
    prepare_dataset(cfg)  # the pool, as a dataset already on disk
    generated = time.perf_counter() - started
    engine_at: list[float] = []

    def engine(plan: RunPlan) -> None:
        engine_at.append(time.perf_counter())
        run_on_engine(plan)

    clock, fedper_log = RoundClock(), logging.getLogger("fedper")
    fedper_log.addHandler(clock)
    try:
        with MemorySampler(interval) as memory:
            began = time.perf_counter()
            results = run_experiment(cfg, run_dir, engine=engine)
    finally:
        fedper_log.removeHandler(clock)
    rounds = results["rounds"]
    walls = [b - a for a, b in zip(clock.at, clock.at[1:], strict=False)]
    written = [b - a for a, b in zip(clock.written, clock.written[1:], strict=False)]
    middle = slice(0, len(walls) - 1)  # rounds 2 .. R-1: the last one evaluates every client
    first_round_began = clock.at[0] - rounds[0]["seconds"]
    return {
        "num_clients": cfg.num_clients,
        "nodes": shared_nodes(cfg) or cfg.num_clients,
        "pool_generation_seconds": generated,
        "startup_seconds": first_round_began - began,
        "startup_parts": {
            # checks, the cached pool read and partitioned, the initial model, the run's spec
            "prepare": engine_at[0] - began,
            # Ray, Flower's simulation with its nodes, and asking every node which it serves
            "engine": first_round_began - engine_at[0],
        },
        "round_seconds": statistics.median(walls[middle]),
        "round_seconds_each": walls[middle],
        "first_round_seconds": rounds[0]["seconds"],
        "last_round_seconds": walls[-1],
        "last_round_evaluated": len(rounds[-1]["per_client"]),
        "bytes_written_per_round": statistics.median(max(0, w) for w in written[middle]),
        "results_json_bytes": (Path(run_dir) / "results.json").stat().st_size,
        "peak_all_processes_bytes": memory.peak_bytes,
        "pss_near_peak_all_processes_bytes": memory.pss_at_peak_bytes,
        "peak_rss_by_process_bytes": memory.peak_by_process,
        "final_accuracy": rounds[-1]["accuracy"],
    }


def run_scale_bench(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Every size, smallest first; returns what it writes to `<run_dir>/bench.json` (and draws
    `<run_dir>/scale.png`)."""
    settings = BenchSettings.from_config(cfg)
    sizes = sorted(settings.scale_clients)
    if cfg.engine.name != "simulation":
        raise ConfigError(f"bench=scale measures engine=simulation, not engine={cfg.engine.name}")
    if cfg.num_rounds < 3:
        raise ConfigError(
            f"bench=scale needs num_rounds>=3 (got {cfg.num_rounds}): round 1 warms up and the "
            "last evaluates every client, so only the rounds between are timed"
        )
    configs = [config_for(cfg, n, settings.images_per_client) for n in sizes]
    for sized in configs:
        validate_config(sized)  # every size is checked before the first one runs
    run_dir = Path(run_dir)
    measured = []
    for index, sized in enumerate(configs, start=1):
        with phase(index, len(configs), f"{sized.num_clients} clients, {sized.num_rounds} rounds"):
            measured.append(measure(sized, run_dir / f"clients_{sized.num_clients}", settings.memory_interval))  # fmt: skip
    smallest, largest = measured[0], measured[-1]
    report = {
        "sizes": measured,
        "round_ratio_largest_to_smallest": largest["round_seconds"] / smallest["round_seconds"],
        "targets": TARGETS,
        "scenario": {
            "clients_per_round": cfg.clients_per_round,
            "clients_per_evaluation": cfg.get("clients_per_evaluation"),
            "images_per_client": settings.images_per_client,
            "num_rounds": cfg.num_rounds,
            "model": f"{cfg.model_name} x{cfg.model.width_multiplier}",
            "image_size": cfg.dataset.image_size,
            "max_nodes": cfg.engine.get("max_nodes"),
        },
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_text_atomic(run_dir / BENCH_JSON, json.dumps(report, indent=1))
    draw_scale(report, run_dir / SCALE_PLOT)
    return report


def format_scale(report: dict) -> str:
    """The table on the console."""
    scen = report["scenario"]
    lines = [
        f"{scen['model']} at {scen['image_size']} px, {scen['images_per_client']} images per "
        f"client, {scen['clients_per_round']} clients trained and "
        f"{scen['clients_per_evaluation'] or 'all'} evaluated per round, "
        f"{scen['num_rounds']} rounds (engine.max_nodes={scen['max_nodes']})",
        "",
        f"{'clients':>8}{'nodes':>7}{'start-up (s)':>14}{'prepare':>9}{'engine':>8}"
        f"{'round (s)':>11}{'last round (s)':>16}{'peak (GB)':>11}{'written/round (MB)':>20}",
    ]
    for size in report["sizes"]:
        parts = size["startup_parts"]
        lines.append(
            f"{size['num_clients']:>8}{size['nodes']:>7}{size['startup_seconds']:>14.1f}"
            f"{parts['prepare']:>9.1f}{parts['engine']:>8.1f}{size['round_seconds']:>11.2f}"
            f"{size['last_round_seconds']:>16.1f}{size['peak_all_processes_bytes'] / 1e9:>11.2f}"
            f"{size['bytes_written_per_round'] / 1e6:>20.2f}"
        )
    lines += [
        "",
        f"later rounds, largest against smallest: {report['round_ratio_largest_to_smallest']:.2f}x"
        f" (target <= {TARGETS['round_ratio_max']}); start-up at the largest: "
        f"{report['sizes'][-1]['startup_seconds']:.1f} s (target < "
        f"{TARGETS['startup_seconds_max']:g} s); the last round evaluates every client",
    ]
    return "\n".join(lines)


def scale_markdown(report: dict) -> str:
    """The table docs/performance.md shows, from a bench.json of `bench=scale`."""
    lines = [
        "| clients | nodes | start-up (s) | of it: Ray and Flower | a later round (s) | "
        "the last round (s) | peak memory (GB RSS / PSS) | written per round (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in report["sizes"]:
        lines.append(
            f"| {size['num_clients']:,} | {size['nodes']} | {size['startup_seconds']:.1f} | "
            f"{size['startup_parts']['engine']:.1f} | {size['round_seconds']:.2f} | "
            f"{size['last_round_seconds']:.1f} | {size['peak_all_processes_bytes'] / 1e9:.2f} / "
            f"{size['pss_near_peak_all_processes_bytes'] / 1e9:.2f} | "
            f"{size['bytes_written_per_round'] / 1e6:.1f} |"
        )
    return "\n".join(lines) + "\n"


def draw_scale(report: dict, path: Path) -> None:
    """Start-up, later rounds and the last round against the number of clients (log x), and
    peak memory beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report["sizes"]
    clients = [s["num_clients"] for s in sizes]
    figure, (times, memory) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for key, label in (("startup_seconds", "start-up"), ("round_seconds", "a later round"),
                       ("last_round_seconds", "the last round (every client evaluates)")):  # fmt: skip
        times.plot(clients, [s[key] for s in sizes], marker="o", label=label)
    times.set(xscale="log", yscale="log", xlabel="clients", ylabel="seconds")
    times.legend(fontsize="small")
    memory.plot(clients, [s["peak_all_processes_bytes"] / 1e9 for s in sizes], marker="o",
                label="peak memory, all processes (GB RSS)")  # fmt: skip
    memory.plot(clients, [s["bytes_written_per_round"] / 1e6 for s in sizes], marker="s",
                label="written per later round (MB)")  # fmt: skip
    memory.set(xscale="log", xlabel="clients")
    memory.set_ylim(bottom=0)
    memory.legend(fontsize="small")
    scen = report["scenario"]
    figure.suptitle(
        f"fedper at scale: {scen['clients_per_round']} clients per round, "
        f"{scen['images_per_client']} images each"
    )
    figure.savefig(path, dpi=150)
    plt.close(figure)

"""Benchmark: a federated run on Ray against the same training as a plain PyTorch loop.

`python -m fedper.bench --config-name bench` (or any config and overrides) runs a short
experiment through `run_experiment`, then repeats its local training and evaluation in
plain worker processes (same clients, rows, model, epochs, batch size, seeds, threads and
parallelism, heads kept in memory, the shared part averaged in the parent), times how long
preparing one client's data takes from a large and a small pool, and writes `bench.json`
with a table on the console.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedper.algorithms import ALGORITHMS
from fedper.client import ClientWorker, NodePaths
from fedper.config import RunSpec, validate_config
from fedper.data import ClientSplit, FederatedDataset, dataset_root, load_client_data
from fedper.data.synthetic import synthetic_pool
from fedper.errors import ConfigError, FedPerError
from fedper.experiment import plan_run, run_experiment
from fedper.models import build_model
from fedper.state import MemoryHeadStore

BENCH_JSON = "bench.json"
FEDERATED_DIR = "federated"
PLAIN_MODES = ("parallel", "sequential")
TARGETS = {"round_ratio_max": 1.10, "client_preparation_ms_max": 50.0, "peak_memory_gb_max": 3.0}


@dataclass
class BenchSettings:
    """The `bench:` keys of the config; every key is optional."""

    plain_mode: str = "parallel"  # parallel: one process per Ray actor; sequential: one process
    prep_pool_sizes: list[int] = field(default_factory=lambda: [60000, 6000])
    prep_client_size: int = 1000  # images of the client whose preparation is timed
    prep_image_size: int = 32
    prep_repeats: int = 7
    memory_interval: float = 0.25  # seconds between memory samples (~2 ms of CPU each)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> BenchSettings:
        values = OmegaConf.to_container(cfg.get("bench") or OmegaConf.create({}), resolve=True)
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"bench.{unknown[0]} is not a benchmark setting: use one of "
                f"{', '.join(cls.__dataclass_fields__)}"
            )
        settings = cls(**values)
        if settings.plain_mode not in PLAIN_MODES:
            raise ConfigError(
                f"bench.plain_mode={settings.plain_mode} is unknown: use {' or '.join(PLAIN_MODES)}"
            )
        return settings


def num_actors(cfg: DictConfig) -> int:
    """How many clients Flower's Ray backend runs at once: CPUs over CPUs per client."""
    return max(1, int((os.cpu_count() or 1) / cfg.client_resources.num_cpus))


# ---------------------------------------------------------------------------------------
# Memory: the driver and every process under it (Ray's raylet, GCS and workers)


def process_tree() -> list:
    """This process and all its descendants (Ray's GCS, raylet, agents and workers)."""
    # psutil ships inside Ray (ray/thirdparty_files), which importing ray puts on the path
    import ray  # noqa: F401

    psutil = importlib.import_module("psutil")
    root = psutil.Process()
    return [root, *root.children(recursive=True)]


def proportional_set_size(pid: int) -> int:
    """Bytes of physical memory this process accounts for, shared pages split among sharers."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass  # not Linux, or the process ended
    return 0


def resident_kinds(pid: int) -> dict[str, int]:
    """RSS split into private memory, mapped files (libraries) and shared memory (Ray's
    object store), in bytes: the second and third are counted again in every process.
    """
    kinds = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    out = dict.fromkeys(kinds.values(), 0)
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key = line.split(maxsplit=1)[0]
                if key in kinds:
                    out[kinds[key]] = int(line.split()[1]) * 1024
    except OSError:
        pass  # not Linux, or the process ended
    return out


def process_name(process) -> str:
    """A short name: Ray names its workers `ray::<Actor>`; others by their script."""
    try:
        args = process.cmdline()
    except Exception:
        return "?"
    if not args:
        return process.name()
    if args[0].startswith("ray::"):
        return args[0].split()[0]
    script = next((a for a in args[1:] if a.endswith(".py") or a == "-m"), args[0])
    if script == "-m" and len(args) > args.index("-m") + 1:
        script = args[args.index("-m") + 1]
    return Path(script).name


class MemorySampler:
    """Peak summed RSS of the process tree, and CPU seconds per process, sampled in a
    background thread.

    Summed RSS counts a shared library once per process that maps it (torch alone is about
    300 MB of shared pages per process), so at a new peak, at most once per `pss_every`
    seconds, the summed PSS is read too; it costs ~20 ms per process, too much to poll.
    The process list is refreshed once a second: listing it scans all of /proc.
    """

    def __init__(self, interval: float, pss_every: float = 2.0, list_every: float = 1.0) -> None:
        self.interval = interval
        self.pss_every = pss_every
        self.list_every = list_every
        self.peak_bytes = 0
        self.peak_processes = 0
        self.pss_at_peak_bytes = 0
        self.peak_by_process: list[dict] = []
        self._processes: list = []
        self._cpu: dict[int, tuple[str, float, float]] = {}  # pid -> name, first, last
        self._pss_read_at = self._listed_at = -float("inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        if time.monotonic() - self._listed_at >= self.list_every:
            self._listed_at = time.monotonic()
            self._processes = process_tree()
        rss = []
        for process in self._processes:
            try:
                rss.append((process, process.memory_info().rss))
                cpu = sum(process.cpu_times()[:2])
            except Exception:
                continue  # a worker that ended between listing and reading
            name, first, _ = self._cpu.get(process.pid, (process_name(process), cpu, cpu))
            self._cpu[process.pid] = (name, first, cpu)
        total = sum(r for _, r in rss)
        if total <= self.peak_bytes:
            return
        self.peak_bytes, self.peak_processes = total, len(rss)
        self.peak_by_process = [
            {"name": process_name(p), "rss": r, **resident_kinds(p.pid)} for p, r in rss
        ]
        if time.monotonic() - self._pss_read_at >= self.pss_every:
            self._pss_read_at = time.monotonic()
            self.pss_at_peak_bytes = sum(proportional_set_size(p.pid) for p, _ in rss)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) each kind of process used while sampled."""
        totals: dict[str, float] = {}
        for name, first, last in self._cpu.values():
            totals[name] = totals.get(name, 0.0) + last - first
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the last CPU reading


def driver_max_rss_bytes() -> int:
    """The driver's own lifetime peak (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------
# The plain loop: the federated run's client work without Flower, Ray or head files


class PlainClients:
    """One worker's clients: the client core (`fedper.client`), heads kept in memory."""

    def __init__(self, spec_json: str, cids: list[int]) -> None:
        spec = RunSpec.from_json(spec_json)
        paths = NodePaths(Path(spec.data_dir), Path(spec.state_dir))
        self.worker = ClientWorker(spec, paths, MemoryHeadStore())  # sets torch threads too

    def train(self, cids: list[int], round_num: int, shared: dict | None) -> dict:
        """Train each client; return the example-weighted sum of their shared parts."""
        weighted: dict[str, np.ndarray] = {}
        clients, examples = {}, 0
        for cid in cids:
            result = self.worker.train(cid, round_num, tensors(shared))
            metrics = result.metrics
            for key, value in result.shared.items():
                value = value.numpy().astype(np.float64) * metrics["num-examples"]
                weighted[key] = weighted[key] + value if key in weighted else value
            examples += metrics["num-examples"]
            clients[cid] = {"compute": metrics["seconds_compute"], **metrics}
        return {"weighted": weighted, "examples": examples, "clients": clients}

    def evaluate(self, cids: list[int], round_num: int, shared: dict | None) -> dict:
        clients = {}
        for cid in cids:
            metrics = self.worker.evaluate(cid, round_num, tensors(shared))
            clients[cid] = {"compute": metrics["seconds_compute"], **metrics}
        return {"clients": clients}


def tensors(shared: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    return None if shared is None else {k: torch.from_numpy(np.array(v)) for k, v in shared.items()}


def plain_worker(spec_json: str, cids: list[int], inbox, outbox) -> None:
    """A worker process: serve (phase, round, shared, cids) requests until told to stop."""
    try:
        clients = PlainClients(spec_json, cids)
        outbox.put("ready")
        while (request := inbox.get()) is not None:
            phase, round_num, shared, todo = request
            outbox.put(getattr(clients, phase)(todo, round_num, shared))
    except Exception as error:  # the parent is waiting on this queue: tell it, then end
        outbox.put(f"plain-loop worker failed: {type(error).__name__}: {error}")


def received(outbox, process) -> dict | str:
    """A worker's next reply; an error if it reported one or died without a word."""
    while True:
        try:
            reply = outbox.get(timeout=1.0)
            break
        except queue.Empty:
            if not process.is_alive():
                raise FedPerError(f"a plain-loop worker exited (code {process.exitcode})") from None
    if isinstance(reply, str) and reply != "ready":
        raise FedPerError(reply)
    return reply


class PlainLoop:
    """The plain loop's workers: processes like the Ray actors, or this process alone."""

    def __init__(self, spec_json: str, num_clients: int, workers: int, parallel: bool) -> None:
        self.workers = max(1, min(workers, num_clients))
        # client cid lives on worker cid % workers, so its head never moves
        self.owned = [list(range(w, num_clients, self.workers)) for w in range(self.workers)]
        self.parallel = parallel
        if not parallel:
            self.local = PlainClients(spec_json, list(range(num_clients)))
            return
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # fork after torch and Ray is unsafe
        self.inboxes = [context.Queue() for _ in range(self.workers)]
        self.outboxes = [context.Queue() for _ in range(self.workers)]
        self.processes = [
            context.Process(target=plain_worker, args=(spec_json, cids, inbox, outbox), daemon=True)
            for cids, inbox, outbox in zip(self.owned, self.inboxes, self.outboxes, strict=True)
        ]
        for process in self.processes:
            process.start()
        for outbox, process in zip(self.outboxes, self.processes, strict=True):
            received(outbox, process)

    def run(self, phase: str, round_num: int, shared: dict | None, cids: list[int]) -> list:
        """Each worker serves its share of `cids`; the replies in worker order."""
        shares = [[c for c in cids if c in owned] for owned in self.owned]
        if not self.parallel:
            return [getattr(self.local, phase)(sorted(cids), round_num, shared)]
        busy = [w for w, share in enumerate(shares) if share]
        for w in busy:
            self.inboxes[w].put((phase, round_num, shared, shares[w]))
        return [received(self.outboxes[w], self.processes[w]) for w in busy]

    def close(self) -> None:
        if self.parallel:
            for inbox in self.inboxes:
                inbox.put(None)
            for process in self.processes:
                process.join(timeout=60)


def average(replies: list[dict], like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Example-weighted mean of the shared parts, in the dtypes the model stores."""
    examples = sum(r["examples"] for r in replies)
    total = {key: sum(r["weighted"][key] for r in replies) / examples for key in like}
    return {key: total[key].astype(like[key].dtype) for key in like}


def run_plain(spec_json: str, federated: dict, workers: int, parallel: bool) -> dict:
    """Replay the federated run's rounds (same sampled clients) in the plain loop."""
    spec = RunSpec.from_json(spec_json)
    cfg = spec.cfg
    num_clients = cfg.num_clients
    started = time.perf_counter()
    loop = PlainLoop(spec_json, num_clients, workers, parallel)
    startup = time.perf_counter() - started
    model = build_model(cfg, seed=cfg.seed)
    initial = model.state_of(
        ALGORITHMS[cfg.algorithm].shared_keys(model, cfg.model.get("local_bn", False))
    )
    shared = {k: v.numpy() for k, v in initial.items()} or None
    rounds = []
    try:
        for entry in federated["rounds"]:
            round_num = entry["round"]
            began = time.perf_counter()
            trained = loop.run("train", round_num, shared, entry["trained_clients"])
            trained_at = time.perf_counter()
            if shared is not None:
                shared = average(trained, shared)
            aggregated_at = time.perf_counter()
            evaluated = loop.run("evaluate", round_num, shared, list(range(num_clients)))
            ended = time.perf_counter()
            train_clients = {c: m for r in trained for c, m in r["clients"].items()}
            eval_clients = {c: m for r in evaluated for c, m in r["clients"].items()}
            rounds.append(
                {
                    "round": round_num,
                    "seconds": ended - began,
                    "train_wall": trained_at - began,
                    "aggregate": aggregated_at - trained_at,
                    "evaluate_wall": ended - aggregated_at,
                    "train_compute": sum(m["compute"] for m in train_clients.values()),
                    "evaluate_compute": sum(m["compute"] for m in eval_clients.values()),
                    "accuracy": float(np.mean([m["accuracy"] for m in eval_clients.values()])),
                    "loss": float(np.mean([m["loss"] for m in eval_clients.values()])),
                }
            )
    finally:
        loop.close()
    return {"startup_seconds": startup, "workers": loop.workers, "rounds": rounds}


# ---------------------------------------------------------------------------------------
# Preparing one client's data, from a large and a small pool


def evict_from_page_cache(path: Path) -> bool:
    """Drop this one file's pages from the OS cache, so the next read comes from disk."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def time_client_preparation(cfg: DictConfig, settings: BenchSettings) -> dict:
    """Milliseconds of `load_client_data` for one client of the same size, per pool size:
    the median of repeats with the pool in the OS page cache (as during a run), and the
    median of three with that file dropped from the cache first (a first read from disk).
    """
    classes, pixels = 10, settings.prep_image_size
    cache = dataset_root(cfg).parent / "synthetic" / "cache"
    datasets = {}
    for size in settings.prep_pool_sizes:
        if size < settings.prep_client_size:
            raise ConfigError(
                f"bench.prep_pool_sizes has {size}, smaller than bench.prep_client_size="
                f"{settings.prep_client_size}: use pools at least as large as the client"
            )
        pool_path, labels, _ = synthetic_pool(cache, size, classes, pixels, cfg.seed)
        rng = np.random.default_rng([cfg.seed, size])
        rows = np.sort(rng.choice(size, settings.prep_client_size, replace=False))
        test = rng.random(len(rows)) >= 0.83
        client = ClientSplit(rows[~test], labels[rows[~test]], rows[test], labels[rows[test]])
        datasets[size] = FederatedDataset(
            "synthetic", pool_path, classes, [0.5] * 3, [0.25] * 3, [client]
        )

    def milliseconds(dataset: FederatedDataset, cold: bool) -> float:
        if cold and not evict_from_page_cache(dataset.pool_path):
            return float("nan")
        started = time.perf_counter()
        load_client_data(dataset, 0)
        return (time.perf_counter() - started) * 1e3

    for dataset in datasets.values():
        milliseconds(dataset, cold=False)  # the first call in a process pays for imports
    out = {}
    for size, dataset in datasets.items():
        warm = [milliseconds(dataset, cold=False) for _ in range(settings.prep_repeats)]
        cold = [milliseconds(dataset, cold=True) for _ in range(3)]
        milliseconds(dataset, cold=False)  # leave the pool cached, as it was
        out[str(size)] = {
            "pool_images": size,
            "client_images": settings.prep_client_size,
            "pool_megabytes": dataset.pool_path.stat().st_size / 1e6,
            "median_ms": statistics.median(warm),
            "cold_median_ms": statistics.median(cold),
            "repeats": settings.prep_repeats,
        }
    return out


# ---------------------------------------------------------------------------------------
# Putting the numbers together


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def steady(values: list[float]) -> list[float]:
    """Rounds after the first (which includes Ray start and filling the caches)."""
    return values[1:] if len(values) > 1 else values


def split_round(entry: dict, actors: int) -> tuple[dict[str, float], dict[str, float]]:
    """One round's wall seconds by part, and the clients' seconds per call by phase."""
    timing = entry["timing"]
    phases: dict[str, float] = {}
    for kind in ("train_clients", "evaluate_clients"):
        for phase, seconds in timing[kind].items():
            phases[phase] = phases.get(phase, 0.0) + seconds
    calls = max(len(entry["trained_clients"]) + entry["clients_ok"], 1)
    on_path = {phase: seconds / actors for phase, seconds in phases.items()}
    row = {
        "client_compute": on_path.get("compute", 0.0),
        "data_preparation": on_path.get("data", 0.0),
        "model_setup": on_path.get("setup", 0.0),
        "head_save_load": on_path.get("state", 0.0),
        "aggregation": timing["aggregate"],
    }
    row["ray_messaging"] = entry["seconds"] - sum(row.values())
    row["results_and_checkpoint"] = timing.get("bookkeeping_before", 0.0)
    return row, {phase: seconds / calls for phase, seconds in phases.items()}


def round_cost(entry: dict) -> float:
    """A federated round's wall seconds plus the writing of results and checkpoint before it
    (the server does that between rounds, outside the round's own `seconds`).
    """
    return entry["seconds"] + entry["timing"].get("bookkeeping_before", 0.0)


def federated_breakdown(rounds: list[dict], actors: int) -> dict:
    """Per-round seconds of the federated run, split into parts that add up to the round.

    Clients run `actors` at a time, so their summed seconds divided by `actors` is their
    share of the wall time (the critical path when the clients are evenly spread). What
    is left after that and the aggregation is Ray and Flower moving messages. Later rounds
    are averaged; round 1, where the models are built and the data read, is shown apart.
    """
    splits = [split_round(entry, actors) for entry in rounds]

    def averaged(items: list[dict[str, float]]) -> dict[str, float]:
        return {key: mean([item.get(key, 0.0) for item in items]) for key in items[0]}

    later = steady(splits)
    return {
        "per_round": averaged([row for row, _ in later]),
        "per_client_call": averaged([call for _, call in later]),
        "first_round": {"per_round": splits[0][0], "per_client_call": splits[0][1]},
    }


def images_per_round(cfg: DictConfig, partition: list[dict], rounds: list[dict]) -> list[int]:
    """Images pushed through the model per round: training epochs plus one test pass."""
    train = {c["cid"]: c["num_train"] for c in partition}
    test = sum(c["num_test"] for c in partition)
    return [
        cfg.num_epochs * sum(train[cid] for cid in entry["trained_clients"]) + test
        for entry in rounds
    ]


def timeline(seconds: list[float], rounds: list[dict], images: list[int]) -> dict:
    """One side's round times, throughput after the first round, and final accuracy."""
    after_first = mean(steady(seconds))
    return {
        "round_seconds": seconds,
        "first_round_seconds": seconds[0],
        "round_seconds_after_first": after_first,
        "images_per_second": mean(steady(images)) / after_first,
        "final_accuracy": rounds[-1]["accuracy"],
    }


def summarize(
    cfg: DictConfig,
    settings: BenchSettings,
    federated: dict,
    plain: dict,
    actors: int,
    memory: dict,
    preparation: dict,
) -> dict:
    fed_rounds = federated["rounds"]
    plain_rounds = plain["rounds"]
    parallel = settings.plain_mode == "parallel"
    # a sequential plain loop ran every client in turn: spread over the actors, ideally
    plain_share = plain["workers"] if parallel else actors
    fed_seconds = [round_cost(r) for r in fed_rounds]
    measured = [r["seconds"] for r in plain_rounds]
    plain_seconds = measured if parallel else [s / actors for s in measured]
    images = images_per_round(cfg, federated["partition"], fed_rounds)
    partition = federated["partition"]
    fed_timeline = timeline(fed_seconds, fed_rounds, images)
    plain_timeline = timeline(plain_seconds, plain_rounds, images)
    fed_steady = fed_timeline["round_seconds_after_first"]
    plain_steady = plain_timeline["round_seconds_after_first"]
    ratio = fed_steady / plain_steady
    breakdown = federated_breakdown(fed_rounds, actors)
    plain_compute = mean([r["train_compute"] + r["evaluate_compute"] for r in steady(plain_rounds)])
    # Each side's round over its own clients' compute on the critical path: other programs
    # on a shared machine slow the compute of one side more than the other's, this not.
    fed_per_compute = fed_steady / breakdown["per_round"]["client_compute"]
    plain_per_compute = plain_steady / (plain_compute / plain_share)
    preparation_ms = [p["median_ms"] for p in preparation.values()]
    report = {
        "scenario": {
            "algorithm": cfg.algorithm,
            "model": cfg.model_name,
            "width_multiplier": cfg.model.get("width_multiplier"),
            "dataset": cfg.dataset.name,
            "dataset_size": cfg.dataset.get("size"),
            "image_size": cfg.dataset.image_size,
            "num_clients": cfg.num_clients,
            "clients_per_round": cfg.clients_per_round,
            "num_rounds": cfg.num_rounds,
            "num_epochs": cfg.num_epochs,
            "batch_size": cfg.batch_size,
            "train_images_per_client": mean([c["num_train"] for c in partition]),
            "test_images_per_client": mean([c["num_test"] for c in partition]),
            "ray_actors": actors,
            "torch_threads_per_worker": int(max(1, cfg.client_resources.num_cpus)),
            "plain_mode": settings.plain_mode,
            "plain_workers": plain["workers"],
            "plain_loop": (
                f"{plain['workers']} worker process(es) with "
                f"{int(max(1, cfg.client_resources.num_cpus))} torch thread(s) each, "
                "client c on worker c mod workers (Ray hands each to a free actor); heads in memory"
                if parallel
                else "one process running every client in turn; its round time is divided "
                f"by the {actors} Ray actors to compare"
            ),
        },
        "federated": {
            **fed_timeline,
            "round_over_compute": fed_per_compute,
            "overhead": breakdown,
        },
        "plain": {
            "startup_seconds": plain["startup_seconds"],
            **plain_timeline,
            "measured_round_seconds": measured,
            "client_compute_per_round": plain_compute,
            "round_over_compute": plain_per_compute,
            "aggregation_per_round": mean([r["aggregate"] for r in steady(plain_rounds)]),
        },
        "ratio": ratio,
        "ratio_first_round": fed_seconds[0] / plain_seconds[0],
        "ratio_at_equal_compute": fed_per_compute / plain_per_compute,
        "client_data_preparation": preparation,
        "memory": memory,
    }
    report["targets"] = {
        **TARGETS,
        "round_ratio_met": ratio <= TARGETS["round_ratio_max"],
        "client_preparation_met": max(preparation_ms, default=0.0)
        < TARGETS["client_preparation_ms_max"],
        "peak_memory_met": memory["peak_all_processes_bytes"] / 1e9 < TARGETS["peak_memory_gb_max"],
    }
    return report


def format_table(report: dict) -> str:
    """The console summary of a report."""
    fed, plain, scen = report["federated"], report["plain"], report["scenario"]
    lines = [
        f"{scen['algorithm']} · {scen['model']} x{scen['width_multiplier']} · {scen['dataset']}"
        f" ({scen['dataset_size']} images, {scen['image_size']} px): {scen['num_clients']} "
        f"clients x ~{scen['train_images_per_client']:.0f} train images, "
        f"{scen['num_epochs']} epoch(s), batch {scen['batch_size']}, {scen['num_rounds']} rounds",
        f"plain loop: {scen['plain_loop']}",
        "",
        f"{'':28}{'round 1 (s)':>12}{'later rounds (s)':>18}{'images/s':>10}{'accuracy':>10}",
    ]
    for name, part in (("federated (Flower on Ray)", fed), ("plain PyTorch loop", plain)):
        lines.append(
            f"{name:28}{part['first_round_seconds']:12.2f}{part['round_seconds_after_first']:18.2f}"
            f"{part['images_per_second']:10.0f}{part['final_accuracy']:10.3f}"
        )
    lines.append(
        f"{'ratio federated / plain':28}{report['ratio_first_round']:12.2f}{report['ratio']:18.3f}"
    )
    lines.append(
        f"ratio at equal compute (each round over its own clients' compute): "
        f"{report['ratio_at_equal_compute']:.3f}"
    )
    lines += ["", "federated round, later rounds (s of wall time):"]
    for key, value in fed["overhead"]["per_round"].items():
        lines.append(f"  {key:26}{value:8.3f}")
    lines.append("per client call (s): " + ", ".join(
        f"{k} {v:.4f}" for k, v in fed["overhead"]["per_client_call"].items()
    ))  # fmt: skip
    lines.append("  in round 1: " + ", ".join(
        f"{k} {v:.4f}" for k, v in fed["overhead"]["first_round"]["per_client_call"].items()
    ))  # fmt: skip
    lines += ["", "preparing one client's data (load_client_data):"]
    for prep in report["client_data_preparation"].values():
        lines.append(
            f"  {prep['client_images']} images from a {prep['pool_images']}-image pool: "
            f"median {prep['median_ms']:.2f} ms (read from disk: {prep['cold_median_ms']:.1f} ms)"
        )
    memory, cpu = report["memory"], report["cpu_seconds_by_process"]
    lines += [
        "",
        f"peak memory, federated run, all {memory['peak_processes']} processes: "
        f"{memory['peak_all_processes_bytes'] / 1e9:.2f} GB summed RSS, "
        f"{memory['pss_near_peak_all_processes_bytes'] / 1e9:.2f} GB summed PSS (driver ru_maxrss "
        f"{memory['driver_ru_maxrss_bytes'] / 1e9:.2f} GB); plain loop: "
        f"{memory['plain_peak_all_processes_bytes'] / 1e9:.2f} GB",
        "at the peak: "
        + ", ".join(
            f"{p['name']} {p['rss'] / 1e6:.0f} ({p['anon'] / 1e6:.0f}/{p['file'] / 1e6:.0f}/"
            f"{p['shmem'] / 1e6:.0f})"
            for p in sorted(memory["peak_rss_by_process_bytes"], key=lambda p: -p["rss"])
        )
        + " (MB RSS (private/files/shared memory))",
        "CPU seconds, federated run: "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu["federated"].items())
        + "; plain loop: "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu["plain"].items()),
        "targets: " + ", ".join(f"{k} {v}" for k, v in report["targets"].items()),
    ]
    return "\n".join(lines)


def run_benchmark(cfg: DictConfig, run_dir: str | Path) -> dict:
    """The whole benchmark; returns what it writes to `<run_dir>/bench.json`."""
    validate_config(cfg)
    settings = BenchSettings.from_config(cfg)
    run_dir = Path(run_dir)
    federated_dir = run_dir / FEDERATED_DIR
    if (federated_dir / "results.json").exists():
        raise ConfigError(
            f"{federated_dir} already holds a run: give the benchmark a new hydra.run.dir"
        )
    actors = num_actors(cfg)

    with MemorySampler(settings.memory_interval) as federated_memory:
        federated = run_experiment(cfg, federated_dir)
    memory = {
        "peak_all_processes_bytes": federated_memory.peak_bytes,
        "peak_processes": federated_memory.peak_processes,
        "pss_near_peak_all_processes_bytes": federated_memory.pss_at_peak_bytes,
        "peak_rss_by_process_bytes": federated_memory.peak_by_process,
        "driver_ru_maxrss_bytes": driver_max_rss_bytes(),
        "sample_interval_seconds": settings.memory_interval,
    }

    spec_json = plan_run(cfg, federated_dir).spec.to_json()
    with MemorySampler(settings.memory_interval) as plain_memory:
        plain = run_plain(spec_json, federated, actors, settings.plain_mode == "parallel")
    memory["plain_peak_all_processes_bytes"] = plain_memory.peak_bytes
    cpu_seconds = {"federated": federated_memory.cpu_seconds(), "plain": plain_memory.cpu_seconds()}

    preparation = time_client_preparation(cfg, settings)
    report = summarize(cfg, settings, federated, plain, actors, memory, preparation)
    report["cpu_seconds_by_process"] = cpu_seconds
    report["settings"] = asdict(settings)
    report["config"] = OmegaConf.to_container(cfg, resolve=True)
    (run_dir / BENCH_JSON).write_text(json.dumps(report, indent=1))
    return report


@hydra.main(config_path="../conf", config_name="base", version_base=None)
def main(cfg: DictConfig) -> None:
    import sys

    try:
        report = run_benchmark(cfg, HydraConfig.get().runtime.output_dir)
    except FedPerError as error:
        print(f"fedper.bench: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(format_table(report))


if __name__ == "__main__":
    main()

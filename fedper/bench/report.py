"""The benchmark's arithmetic: per-round times, where a federated round goes, throughput,
per-step time and the targets, from the federated run's results and the plain loop's rounds."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from fedper.bench.settings import TARGETS, BenchSettings
from fedper.training import batch_slices


def mean(values: list[float]) -> float:
    """The mean, NaN for no values."""
    return float(np.mean(values)) if values else float("nan")


def steady(values: list) -> list:
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


def train_steps(cfg: DictConfig, partition: list[dict], rounds: list[dict]) -> list[int]:
    """Optimizer steps per round, batched as `fedper.training.train` batches them."""
    train = {c["cid"]: c["num_train"] for c in partition}

    def steps(num: int) -> int:
        return sum(1 for _ in batch_slices(num, cfg.batch_size, torch.arange(num)))

    return [
        cfg.num_epochs * sum(steps(train[cid]) for cid in entry["trained_clients"])
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


def step_milliseconds(train_compute: list[float], steps: list[int]) -> float:
    """Training compute per optimizer step after the first round: batch to device,
    transform, forward, backward and update, with the loss read back once per step."""
    return 1e3 * sum(steady(train_compute)) / max(sum(steady(steps)), 1)


def scenario(cfg: DictConfig, settings: BenchSettings, partition: list[dict], plain: dict,
             actors: int) -> dict:  # fmt: skip
    """What was measured: the run's settings, the actors and how the plain loop ran."""
    threads = int(max(1, cfg.client_resources.num_cpus))
    parallel = settings.plain_mode == "parallel"
    return {
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
        "torch_threads_per_worker": threads,
        "plain_mode": settings.plain_mode,
        "plain_workers": plain["workers"],
        "plain_loop": (
            f"{plain['workers']} worker process(es) with {threads} torch thread(s) each, "
            "client c on worker c mod workers (Ray hands each to a free actor); heads in memory"
            if parallel
            else "one process running every client in turn; its round time is divided "
            f"by the {actors} Ray actors to compare"
        ),
    }


def bench_report(cfg: DictConfig, settings: BenchSettings, federated: dict, plain: dict,
              actors: int, memory: dict, preparation: dict) -> dict:  # fmt: skip
    """Everything bench.json holds about a federated-vs-plain benchmark."""
    fed_rounds, plain_rounds = federated["rounds"], plain["rounds"]
    partition = federated["partition"]
    parallel = settings.plain_mode == "parallel"
    # a sequential plain loop ran every client in turn: spread over the actors, ideally
    plain_share = plain["workers"] if parallel else actors
    fed_seconds = [round_cost(r) for r in fed_rounds]
    measured = [r["seconds"] for r in plain_rounds]
    plain_seconds = measured if parallel else [s / actors for s in measured]
    images = images_per_round(cfg, partition, fed_rounds)
    steps = train_steps(cfg, partition, fed_rounds)
    fed_timeline = timeline(fed_seconds, fed_rounds, images)
    plain_timeline = timeline(plain_seconds, plain_rounds, images)
    ratio = fed_timeline["round_seconds_after_first"] / plain_timeline["round_seconds_after_first"]
    breakdown = federated_breakdown(fed_rounds, actors)
    plain_compute = mean([r["train_compute"] + r["evaluate_compute"] for r in steady(plain_rounds)])
    # Each side's round over its own clients' compute on the critical path: other programs
    # on a shared machine slow the compute of one side more than the other's, this not.
    fed_per_compute = (
        fed_timeline["round_seconds_after_first"] / breakdown["per_round"]["client_compute"]
    )
    plain_per_compute = plain_timeline["round_seconds_after_first"] / (plain_compute / plain_share)
    fed_train = [r["timing"]["train_clients"].get("compute", 0.0) for r in fed_rounds]
    report = {
        "scenario": scenario(cfg, settings, partition, plain, actors),
        "federated": {
            **fed_timeline,
            "round_over_compute": fed_per_compute,
            "train_step_ms": step_milliseconds(fed_train, steps),
            "overhead": breakdown,
            "device": federated.get("device"),
        },
        "plain": {
            "startup_seconds": plain["startup_seconds"],
            **plain_timeline,
            "measured_round_seconds": measured,
            "client_compute_per_round": plain_compute,
            "round_over_compute": plain_per_compute,
            "train_step_ms": step_milliseconds([r["train_compute"] for r in plain_rounds], steps),
            "aggregation_per_round": mean([r["aggregate"] for r in steady(plain_rounds)]),
            "devices": plain["devices"],
        },
        "ratio": ratio,
        "ratio_first_round": fed_seconds[0] / plain_seconds[0],
        "ratio_at_equal_compute": fed_per_compute / plain_per_compute,
        "client_data_preparation": preparation,
        "memory": memory,
    }
    report["targets"] = targets_met(report)
    return report


def targets_met(report: dict) -> dict:
    """Each target of this benchmark, and whether this run met it."""
    preparation_ms = [p["median_ms"] for p in report["client_data_preparation"].values()]
    peak_gb = report["memory"]["peak_all_processes_bytes"] / 1e9
    return {
        "round_ratio_max": TARGETS["round_ratio_max"],
        "round_ratio_met": report["ratio"] <= TARGETS["round_ratio_max"],
        "client_preparation_ms_max": TARGETS["client_preparation_ms_max"],
        "client_preparation_met": max(preparation_ms, default=0.0)
        < TARGETS["client_preparation_ms_max"],
        "peak_memory_gb_max": TARGETS["peak_memory_gb_max"],
        "peak_memory_met": peak_gb < TARGETS["peak_memory_gb_max"],
    }

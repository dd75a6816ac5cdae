"""The plain loop: the federated run's client work without Flower, Ray or head files.

Worker processes like the Ray actors (as many, same torch threads, each pinned to its own
GPU when there are GPUs) call the client core (`fedper.client.ClientWorker`) with heads
kept in memory; the parent averages the shared parts as the server does.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from pathlib import Path

import numpy as np
import torch

from fedper.algorithms import ALGORITHMS
from fedper.bench.resources import cuda_visible, gpus_of_worker, visible_gpus
from fedper.client import ClientWorker
from fedper.errors import FedPerError
from fedper.heads import MemoryHeadStore
from fedper.models import build_model
from fedper.node import NodePaths
from fedper.progress import RunProgress
from fedper.spec import RunSpec

log = logging.getLogger("fedper")


class LatestHeadStore(MemoryHeadStore):
    """Only each client's newest head: rounds only go forward here, older heads are dead."""

    def save(self, cid: int, round_num: int, state: dict[str, torch.Tensor]) -> None:
        self.heads[cid] = {round_num: state}


def device_info(worker: ClientWorker) -> dict:
    """What the worker trains on: device, GPU name and the resolved performance switches."""
    perf = {
        key: value if isinstance(value, (bool, int, float, type(None))) else str(value)
        for key, value in vars(worker.performance).items()
    }
    info = {"device": str(worker.device), "performance": perf}
    if worker.device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(worker.device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(worker.device)))
        info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return info


class PlainClients:
    """One process's clients: the client core with heads in memory."""

    def __init__(self, spec_json: str) -> None:
        spec = RunSpec.from_json(spec_json)
        paths = NodePaths(Path(spec.data_dir), Path(spec.state_dir))
        self.worker = ClientWorker(spec, paths, LatestHeadStore())  # sets torch threads too

    def train(self, cids: list[int], round_num: int, shared: dict | None) -> dict:
        """Train each client; return the example-weighted sum of their shared parts and,
        for integer buffers (BatchNorm's counters), their largest value, as the server keeps.
        """
        weighted: dict[str, np.ndarray] = {}
        largest: dict[str, np.ndarray] = {}
        clients, examples = {}, 0
        for cid in cids:
            result = self.worker.train(cid, round_num, tensors(shared))
            metrics = result.metrics
            for key, value in result.shared.items():
                value = value.numpy()
                if np.issubdtype(value.dtype, np.integer):
                    largest[key] = np.maximum(largest[key], value) if key in largest else value
                    continue
                value = value.astype(np.float64) * metrics["num-examples"]
                weighted[key] = weighted[key] + value if key in weighted else value
            examples += metrics["num-examples"]
            clients[cid] = {"compute": metrics["seconds_compute"], **metrics}
        return {"weighted": weighted, "largest": largest, "examples": examples, "clients": clients}

    def evaluate(self, cids: list[int], round_num: int, shared: dict | None) -> dict:
        """Test (and validation) metrics of each client with the given shared parts."""
        clients = {}
        for cid in cids:
            metrics = self.worker.evaluate(cid, round_num, tensors(shared))
            clients[cid] = {"compute": metrics["seconds_compute"], **metrics}
        return {"clients": clients}


def tensors(shared: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    """The shared arrays as the client core takes them (copies: workers keep no views)."""
    return None if shared is None else {k: torch.from_numpy(np.array(v)) for k, v in shared.items()}


def plain_worker(spec_json: str, inbox, outbox) -> None:
    """A worker process: serve (phase, round, shared, cids) requests until told to stop."""
    try:
        clients = PlainClients(spec_json)
        outbox.put(("ok", device_info(clients.worker)))
        while (request := inbox.get()) is not None:
            phase, round_num, shared, todo = request
            outbox.put(("ok", getattr(clients, phase)(todo, round_num, shared)))
    except Exception as error:  # the parent is waiting on this queue: tell it, then end
        outbox.put(("error", f"plain-loop worker failed: {type(error).__name__}: {error}"))


def received(outbox, process) -> dict:
    """A worker's next reply; an error if it reported one or died without a word."""
    while True:
        try:
            status, reply = outbox.get(timeout=1.0)
            break
        except queue.Empty:
            if not process.is_alive():
                raise FedPerError(f"a plain-loop worker exited (code {process.exitcode})") from None
    if status != "ok":
        raise FedPerError(reply)
    return reply


class PlainLoop:
    """The plain loop's workers: processes like the Ray actors, or this process alone."""

    def __init__(self, spec_json: str, workers: int, parallel: bool) -> None:
        spec = RunSpec.from_json(spec_json)
        num_clients = spec.cfg.num_clients
        self.workers = max(1, min(workers, num_clients))
        # client cid lives on worker cid % workers, so its head never moves
        self.owned = [list(range(w, num_clients, self.workers)) for w in range(self.workers)]
        self.parallel = parallel
        if not parallel:
            self.local = PlainClients(spec_json)
            self.devices = [device_info(self.local.worker)]
            return
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # fork after torch and Ray is unsafe
        self.inboxes = [context.Queue() for _ in range(self.workers)]
        self.outboxes = [context.Queue() for _ in range(self.workers)]
        gpus = visible_gpus()
        self.processes = []
        for w in range(self.workers):
            process = context.Process(
                target=plain_worker, args=(spec_json, self.inboxes[w], self.outboxes[w]),
                daemon=True,
            )  # fmt: skip
            # as Ray does for an actor: only its own GPU(s) visible, none if it asks for none
            with cuda_visible(gpus_of_worker(w, spec.num_gpus, gpus) if gpus else None):
                process.start()
            self.processes.append(process)
        self.devices = [
            received(outbox, process)
            for outbox, process in zip(self.outboxes, self.processes, strict=True)
        ]

    def run(self, phase: str, round_num: int, shared: dict | None, cids: list[int]) -> list:
        """Each worker serves its share of `cids`; the replies in worker order."""
        if not self.parallel:
            return [getattr(self.local, phase)(sorted(cids), round_num, shared)]
        shares = [[c for c in cids if c in owned] for owned in self.owned]
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
    """The server's aggregation (`fedper.strategy.average`): example-weighted mean
    in the dtypes the model stores, and the largest count for integer buffers."""
    examples = sum(r["examples"] for r in replies)
    out = {}
    for key, template in like.items():
        if np.issubdtype(template.dtype, np.integer):
            out[key] = np.max(np.stack([r["largest"][key] for r in replies]), axis=0)
        else:
            out[key] = sum(r["weighted"][key] for r in replies) / examples
        out[key] = np.asarray(out[key]).astype(template.dtype)
    return out


def run_plain(spec_json: str, federated: dict, workers: int, parallel: bool) -> dict:
    """Replay the federated run's rounds (same sampled clients) in the plain loop."""
    spec = RunSpec.from_json(spec_json)
    cfg = spec.cfg
    started = time.perf_counter()
    loop = PlainLoop(spec_json, workers, parallel)
    startup = time.perf_counter() - started
    initial = build_model(cfg, seed=cfg.seed).part_state(ALGORITHMS[cfg.algorithm].shared_parts)
    shared = {k: v.numpy() for k, v in initial.items()} or None
    rounds = []
    progress = RunProgress(len(federated["rounds"]), 1, live=False)
    try:
        for entry in federated["rounds"]:
            round_num = entry["round"]
            began = time.perf_counter()
            trained = loop.run("train", round_num, shared, entry["trained_clients"])
            trained_at = time.perf_counter()
            if shared is not None:
                shared = average(trained, shared)
            aggregated_at = time.perf_counter()
            evaluated = loop.run("evaluate", round_num, shared, list(range(cfg.num_clients)))
            ended = time.perf_counter()
            rounds.append(round_record(round_num, trained, evaluated))
            rounds[-1].update(
                seconds=ended - began,
                train_wall=trained_at - began,
                aggregate=aggregated_at - trained_at,
                evaluate_wall=ended - aggregated_at,
            )
            total = len(federated["rounds"])
            log.info(
                "plain loop: round %d/%d  %.1f s  %s", len(rounds), total, ended - began,
                progress.note(len(rounds)),
            )  # fmt: skip
    finally:
        loop.close()
    return {
        "startup_seconds": startup,
        "workers": loop.workers,
        "devices": loop.devices,
        "rounds": rounds,
    }


def round_record(round_num: int, trained: list[dict], evaluated: list[dict]) -> dict:
    """Compute seconds and the clients' mean test metrics of one plain round."""
    train_clients = {c: m for r in trained for c, m in r["clients"].items()}
    eval_clients = {c: m for r in evaluated for c, m in r["clients"].items()}
    return {
        "round": round_num,
        "train_compute": sum(m["compute"] for m in train_clients.values()),
        "evaluate_compute": sum(m["compute"] for m in eval_clients.values()),
        "accuracy": float(np.mean([m["accuracy"] for m in eval_clients.values()])),
        "loss": float(np.mean([m["loss"] for m in eval_clients.values()])),
    }

"""How many clients run at once, counted as Flower's Ray backend counts its actors, and
which GPUs each plain-loop worker gets."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from omegaconf import DictConfig

from fedper.device import resolve_num_gpus
from fedper.errors import ConfigError


def actors_on_node(node: Mapping[str, float], client: Mapping[str, float]) -> int:
    """Actors that fit on one Ray node, as flwr's `pool_size_from_resources` counts them:
    CPUs over CPUs per client, capped by GPUs over GPUs per client when clients ask for
    GPUs (none on a node without GPUs). A node that left the cluster has no resources.
    """
    actors = int(node.get("CPU", 0) / client["num_cpus"])
    if client.get("num_gpus", 0) > 0:
        gpus = node.get("GPU", 0)
        actors = min(actors, int(gpus / client["num_gpus"])) if gpus else 0
    return actors


def count_actors(nodes: list[Mapping[str, float]], client: Mapping[str, float]) -> int:
    """Actors over all nodes (Flower sums per node: an actor cannot span two nodes)."""
    return sum(actors_on_node(node, client) for node in nodes if node)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (ids or UUIDs)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def client_resources(cfg: DictConfig) -> dict[str, float]:
    """What each client asks of Ray, as the simulation engine passes it to Flower."""
    return {
        "num_cpus": float(cfg.client_resources.num_cpus),
        "num_gpus": resolve_num_gpus(cfg.client_resources.num_gpus),
    }


def local_node(cfg: DictConfig) -> dict[str, float]:
    """The resources of the Ray instance `engine=simulation` starts on this machine."""
    return {
        "CPU": float(cfg.engine.get("num_cpus") or os.cpu_count() or 1),
        "GPU": float(len(visible_gpus())),
    }


def num_actors(cfg: DictConfig) -> int:
    """How many clients Flower's Ray backend runs at once on this machine."""
    actors = count_actors([local_node(cfg)], client_resources(cfg))
    if actors == 0:
        raise ConfigError(
            f"client_resources={client_resources(cfg)} does not fit this machine "
            f"({local_node(cfg)}): Flower would start no client; lower them"
        )
    return actors


def gpus_of_worker(worker: int, share: float, gpus: list[str]) -> list[str]:
    """The GPUs of plain-loop worker `worker` when each client gets `share` GPUs.

    Ray packs fractional actors onto one GPU before the next (0.5: workers 0 and 1 on the
    first GPU); a share of 1 or more is whole GPUs, one set per worker; a share of 0 is no
    GPU at all (Ray hides every GPU from an actor that asks for none).
    """
    if share <= 0 or not gpus:
        return []
    if share >= 1:
        whole = int(share)
        return gpus[worker * whole : (worker + 1) * whole]
    per_gpu = max(1, int(1 / share))
    return [gpus[(worker // per_gpu) % len(gpus)]]


@contextmanager
def cuda_visible(gpus: list[str] | None) -> Iterator[None]:
    """CUDA_VISIBLE_DEVICES for processes started inside (None: leave it as it is)."""
    if gpus is None:
        yield
        return
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved

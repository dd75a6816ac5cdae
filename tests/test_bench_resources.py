"""The benchmark counts actors as Flower's Ray backend does, and gives each plain-loop
worker the GPUs Ray would give its actor."""

from __future__ import annotations

import mmap
import os

import pytest
from flwr.simulation.ray_transport import ray_actor
from helpers import make_config

from fedper.bench.resources import (
    count_actors,
    cuda_visible,
    gpus_of_worker,
    local_node,
    num_actors,
)
from fedper.errors import ConfigError

NODES = [
    [{"CPU": 2.0}],
    [{"CPU": 16.0, "GPU": 1.0}],
    [{"CPU": 16.0, "GPU": 8.0}],
    [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 4.0}],
    [{"CPU": 3.0, "GPU": 1.0}, {}],  # a node that left the cluster has no resources
    [{"CPU": 64.0, "GPU": 4.0}, {"CPU": 2.0, "GPU": 1.0}],
]
CLIENTS = [
    {"num_cpus": 1, "num_gpus": 0.0},
    {"num_cpus": 2, "num_gpus": 0.0},
    {"num_cpus": 1, "num_gpus": 1.0},
    {"num_cpus": 1, "num_gpus": 0.5},
    {"num_cpus": 4, "num_gpus": 0.25},
    {"num_cpus": 0.5, "num_gpus": 2.0},
]


def flower_count(monkeypatch, nodes: list[dict], client: dict) -> int:
    """Flower's own count (`pool_size_from_resources`) for these fake Ray nodes."""
    monkeypatch.setattr(ray_actor.ray, "nodes", lambda: [{"Resources": n} for n in nodes])
    try:
        return ray_actor.pool_size_from_resources(client)
    except ValueError:  # Flower refuses an empty pool
        return 0


@pytest.mark.parametrize("nodes", NODES)
@pytest.mark.parametrize("client", CLIENTS)
def test_actors_are_counted_as_flower_counts_them(monkeypatch, nodes, client):
    assert count_actors(nodes, client) == flower_count(monkeypatch, nodes, client)


def test_a_16_core_1_gpu_host_runs_one_gpu_client_at_a_time():
    """Today's defect: counting CPUs only gave 16 CUDA processes on one GPU."""
    assert count_actors([{"CPU": 16.0, "GPU": 1.0}], {"num_cpus": 1, "num_gpus": 1.0}) == 1
    assert count_actors([{"CPU": 16.0, "GPU": 1.0}], {"num_cpus": 1, "num_gpus": 0.25}) == 4


def test_this_machine_counts_its_cpus_and_the_engines_share():
    cpus = os.cpu_count()
    cfg = make_config(["client_resources.num_gpus=0", "client_device=cpu"], "bench")
    assert local_node(cfg)["CPU"] == cpus
    assert num_actors(cfg) == cpus
    assert num_actors(make_config(["engine.num_cpus=1", "client_resources.num_gpus=0"])) == 1


def test_clients_that_fit_nowhere_are_an_error(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, whatever the machine has
    cfg = make_config(["client_resources.num_gpus=0"])
    # a GPU share cannot be set without CUDA through the config: ask the counting directly
    assert count_actors([local_node(cfg)], {"num_cpus": 1, "num_gpus": 1.0}) == 0
    monkeypatch.setattr("fedper.bench.resources.client_resources",
                        lambda cfg: {"num_cpus": 1.0, "num_gpus": 1.0})  # fmt: skip
    with pytest.raises(ConfigError, match="client_resources"):
        num_actors(cfg)


def test_each_plain_worker_gets_the_gpus_ray_would_give_its_actor():
    gpus = ["0", "1", "2", "3"]
    assert [gpus_of_worker(w, 1.0, gpus) for w in range(4)] == [["0"], ["1"], ["2"], ["3"]]
    # two clients per GPU: Ray fills one GPU before the next
    assert [gpus_of_worker(w, 0.5, gpus) for w in range(4)] == [["0"], ["0"], ["1"], ["1"]]
    assert gpus_of_worker(1, 2.0, gpus) == ["2", "3"]
    # no GPU share: Ray hides every GPU from the actor
    assert gpus_of_worker(0, 0.0, gpus) == [] and gpus_of_worker(0, 1.0, []) == []


def test_cuda_visible_devices_is_set_for_the_worker_and_restored(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with cuda_visible(["1"]):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with cuda_visible([]):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with cuda_visible(None):
        assert "CUDA_VISIBLE_DEVICES" not in os.environ


def fresh_pages(size: int) -> mmap.mmap:
    """`size` bytes of new anonymous memory, every page written: never pages this process's
    allocator kept from an earlier test."""
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    return block


def test_a_process_memory_shares_count_its_private_pages_once():
    from fedper.bench.sampling import memory_shares

    before = memory_shares(os.getpid())
    block = fresh_pages(64 * 1024 * 1024)  # 64 MB this process alone touches
    after = memory_shares(os.getpid())
    assert 0 < before["uss"] <= before["pss"]
    assert after["uss"] - before["uss"] >= 60 * 1024 * 1024
    assert after["pss"] - before["pss"] >= 60 * 1024 * 1024
    block.close()
    assert memory_shares(2**22 + 12345) == {"pss": 0, "uss": 0}  # no such process


def test_the_peak_gets_its_processes_shares_even_when_it_came_too_soon_after_a_read():
    from fedper.bench.sampling import MemorySampler

    sampler = MemorySampler(0.25, pss_every=1e9)
    sampler.sample()  # the first peak: read at once
    first = sampler.peak_by_process
    assert first and all("uss" in entry and "pss" in entry for entry in first)
    block = fresh_pages(64 * 1024 * 1024)
    sampler.sample()  # a new peak, too soon after the last read: the shares read before
    assert sampler.peak_by_process is not first
    own = next(e for e in sampler.peak_by_process if e["pid"] == os.getpid())
    assert own["uss"] == next(e for e in first if e["pid"] == os.getpid())["uss"]
    sampler.pss_every = 0.0
    sampler.sample()  # still at the peak: its shares are read now
    own = next(e for e in sampler.peak_by_process if e["pid"] == os.getpid())
    assert own["uss"] >= 60 * 1024 * 1024 and own["pss"] >= own["uss"]
    assert sampler.pss_at_peak_bytes >= own["pss"]
    block.close()


def test_a_peak_barely_above_the_last_read_one_keeps_the_shares_read_then():
    from fedper.bench.sampling import MemorySampler

    sampler = MemorySampler(0.25, pss_every=0.0, pss_growth=10.0)
    sampler.sample()
    own_uss = next(e for e in sampler.peak_by_process if e["pid"] == os.getpid())["uss"]
    block = fresh_pages(64 * 1024 * 1024)
    sampler.sample()  # a new peak, but not 10x the one the shares were read at
    own = next(e for e in sampler.peak_by_process if e["pid"] == os.getpid())
    assert own["uss"] == own_uss
    sampler.pss_growth = 0.0
    more = fresh_pages(8 * 1024 * 1024)
    sampler.sample()  # any new peak is read again
    own = next(e for e in sampler.peak_by_process if e["pid"] == os.getpid())
    assert own["uss"] >= own_uss + 60 * 1024 * 1024
    block.close()
    more.close()

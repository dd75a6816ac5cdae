"""The per-process worker cache, without Ray: reuse within a run, nothing across runs or clients."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import newest_head, plan_local

from fedper import client
from fedper.client import worker_for
from fedper.data import load_client_data
from fedper.data.transforms import BatchTransform
from fedper.models import build_model
from fedper.node import NodePaths
from fedper.training import evaluate

SMALL = ["dataset=synthetic", "dataset.size=240", "dataset.num_classes=4",
         "num_clients=2", "clients_per_round=2", "batch_size=16"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("fresh_worker")


def worker_of(plan):
    return worker_for(plan.spec, NodePaths.of(plan.spec, {}))


def shared_of(plan, model):
    return model.part_state(client.ALGORITHMS[plan.spec.cfg.algorithm].shared_parts)


def head_of(model):
    return model.part_state(("head",))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_run_reuses_model_and_data(tmp_path):
    plan = plan_local(tmp_path, SMALL)
    worker = worker_of(plan)
    shared = shared_of(plan, build_model(plan.spec.cfg, seed=plan.spec.cfg.seed))
    worker.train(0, 1, shared)
    model, data = worker.model, worker.data(0)
    worker.train(1, 1, shared)
    worker.evaluate(0, 1, shared)
    assert worker_of(plan) is worker
    assert worker.model is model and worker.data(0) is data
    for cid in (0, 1):  # each client's cached rows are its own, not another client's
        expected = load_client_data(worker.dataset, cid)
        assert torch.equal(worker.data(cid).train_images, expected.train_images)
        assert torch.equal(worker.data(cid).test_labels, expected.test_labels)


def test_a_worker_keeps_the_rows_of_its_latest_clients_only(tmp_path, monkeypatch):
    monkeypatch.setattr(client, "HOST_DATA_CLIENTS", 2)
    plan = plan_local(tmp_path, [*SMALL, "num_clients=4", "clients_per_round=4"])
    worker = worker_of(plan)
    first = worker.data(0)
    worker.data(1)
    assert worker.data(0) is first  # kept, and now the most recent
    worker.data(2)  # client 1, the least recent, makes room
    assert list(worker._host_data) == [0, 2]
    assert worker.data(0) is first
    again = worker.data(1)  # read again, equal to what it was
    assert torch.equal(again.train_images, load_client_data(worker.dataset, 1).train_images)
    assert list(worker._host_data) == [0, 1]


def test_a_new_run_gets_a_fresh_worker_and_the_old_one_is_dropped(tmp_path):
    first = worker_of(plan_local(tmp_path, SMALL, "first"))
    second = worker_of(plan_local(tmp_path, SMALL, "second"))
    assert second is not first and second.model is not first.model
    assert list(client._WORKERS.values()) == [second]


def test_each_client_keeps_exactly_its_own_head(tmp_path):
    plan = plan_local(tmp_path, SMALL)
    worker = worker_of(plan)
    shared = shared_of(plan, build_model(plan.spec.cfg, seed=plan.spec.cfg.seed))
    worker.train(0, 1, shared)
    head_a = head_of(worker.model)
    worker.train(1, 1, shared)
    head_b = head_of(worker.model)
    assert not same(head_a, head_b)
    # A is evaluated after B trained on the same model object: A's head comes back
    worker.evaluate(0, 1, shared)
    assert same(head_of(worker.model), head_a)
    worker.evaluate(1, 1, shared)
    assert same(head_of(worker.model), head_b)
    worker.train(0, 2, shared)  # a second round of A starts from A's head, never B's
    assert same(newest_head(worker.store, 0, before_round=2), head_a)
    assert same(newest_head(worker.store, 1, before_round=3), head_b)


def test_fedavg_after_fedper_in_the_same_process_carries_nothing_over(tmp_path):
    fedper = plan_local(tmp_path, SMALL, "fedper")
    worker = worker_of(fedper)
    worker.train(0, 1, shared_of(fedper, build_model(fedper.spec.cfg, seed=fedper.spec.cfg.seed)))
    fedavg = plan_local(tmp_path, [*SMALL, "algorithm=fedavg", "seed=7"], "fedavg")
    global_model = build_model(fedavg.spec.cfg, seed=123)  # leftover weights would show
    fresh = worker_of(fedavg)
    metrics = fresh.evaluate(0, 1, shared_of(fedavg, global_model))
    assert fresh is not worker
    assert same(fresh.model.state_dict(), global_model.state_dict())
    data = load_client_data(fresh.dataset, 0)
    transform = BatchTransform(fedavg.spec.cfg.dataset.image_size, fresh.dataset.mean,
                               fresh.dataset.std)  # fmt: skip
    expected = evaluate(global_model, data.test_images, data.test_labels, transform, 16)
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_only_the_client_being_served_is_kept_on_the_training_device(tmp_path):
    plan = plan_local(tmp_path, SMALL)
    worker = worker_of(plan)
    # the meta device stands in for a GPU: tensors "move" there without any memory
    worker.performance = dataclasses.replace(worker.performance, data_device=torch.device("meta"))
    first = worker.data(0)
    assert first.train_images.device.type == "meta"
    assert worker.data(0) is first  # the same client again: no second copy
    second = worker.data(1)
    assert second.train_images.device.type == "meta"
    assert worker._device_data[0] == 1 and worker._device_data[1] is second  # only client 1
    assert all(d.train_images.device.type == "cpu" for d in worker._host_data.values())


def test_the_rows_kept_fit_in_the_configured_size_and_the_served_client_always_stays(tmp_path):
    plan = plan_local(tmp_path, [*SMALL, "num_clients=4", "clients_per_round=4"])
    worker = worker_of(plan)
    sizes = [client.client_data_bytes(load_client_data(worker.dataset, c)) for c in range(4)]
    assert all(size > 0 for size in sizes)
    # room for client 0 and one of clients 1 and 2, not for all three
    worker.host_data_budget = sizes[0] + max(sizes[1], sizes[2])
    first = worker.data(0)
    worker.data(1)
    assert list(worker._host_data) == [0, 1] and worker.data(0) is first
    worker.data(2)  # client 1, the least recent, makes room
    assert list(worker._host_data) == [0, 2]
    assert sum(worker._host_data_bytes.values()) <= worker.host_data_budget
    worker.host_data_budget = 0.0  # only the client being served
    served = worker.data(3)
    assert list(worker._host_data) == [3] and list(worker._host_data_bytes) == [3]
    assert torch.equal(served.train_images, load_client_data(worker.dataset, 3).train_images)


def test_a_negative_or_non_numeric_cache_size_is_one_line_naming_the_setting():
    from helpers.config import make_config

    from fedper.device import check_performance
    from fedper.errors import ConfigError

    for value in ("-1", "lots"):
        cfg = make_config([f"performance.client_data_cache_mb={value}"])
        with pytest.raises(ConfigError, match="performance.client_data_cache_mb"):
            check_performance(cfg)

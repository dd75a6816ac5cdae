"""The ClientApp's per-worker cache, without Ray: reuse within a run, nothing across runs or clients."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

from fedper import client_app
from fedper.algorithms import ALGORITHMS
from fedper.client_state import ClientStateStore
from fedper.config import SPEC_ENV_VAR, RunSpec, derive_run_spec, validate_config
from fedper.data import load_client_data, prepare_dataset
from fedper.data.transforms import BatchTransform
from fedper.models import build_model
from fedper.training import evaluate
from tests.conftest import make_config

SMALL = [
    "dataset=synthetic",
    "dataset.size=240",
    "dataset.num_classes=4",
    "model.width_multiplier=0.25",
    "num_clients=2",
    "clients_per_round=2",
    "num_epochs=1",
    "batch_size=16",
]


def start_run(tmp_path: Path, name: str, overrides: list[str] = ()) -> tuple[RunSpec, dict]:
    """What `run_experiment` and the ServerApp do before round 1, minus Ray."""
    cfg = make_config(
        [
            *SMALL,
            f"data_dir={tmp_path / 'datasets'}",
            f"state_dir={tmp_path / 'states'}",
            *overrides,
        ]
    )
    validate_config(cfg)
    run_dir = tmp_path / name
    run_dir.mkdir()
    prepare_dataset(cfg).save(run_dir)
    spec = derive_run_spec(cfg, run_dir)
    model = build_model(cfg, seed=cfg.seed)
    ClientStateStore(spec.state_dir).save_initial(model.part_state(("base", "head")))
    return spec, model.state_dict()


def shared_arrays(spec: RunSpec, state: dict[str, torch.Tensor]) -> ArrayRecord:
    """The global arrays the server sends for this run's algorithm."""
    prefixes = tuple(f"{part}." for part in ALGORITHMS[spec.cfg.algorithm].shared_parts)
    return ArrayRecord({k: v.clone() for k, v in state.items() if k.startswith(prefixes)})


def message(kind: str, cid: int, round_num: int, arrays: ArrayRecord) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": round_num})})
    metadata = Metadata(
        run_id=1,
        message_id=f"{kind}-{cid}-{round_num}",
        src_node_id=0,
        dst_node_id=100 + cid,
        reply_to_message_id="",
        group_id=str(round_num),
        created_at=time.time(),
        ttl=3600.0,
        message_type=kind,
    )
    return Message(content=content, metadata=metadata)


def context(cid: int) -> Context:
    return Context(
        run_id=1, node_id=100 + cid, node_config={"partition-id": cid}, state=RecordDict(),
        run_config={},
    )  # fmt: skip


def call(spec: RunSpec, kind: str, cid: int, round_num: int, arrays: ArrayRecord) -> Message:
    """Deliver one message to the registered ClientApp function, as a Ray worker would."""
    handler = client_app.train_round if kind == MessageType.TRAIN else client_app.evaluate_round
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SPEC_ENV_VAR, spec.to_json())
        reply = handler(message(kind, cid, round_num, arrays), context(cid))
    assert not reply.has_error()
    return reply


def head_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return model.part_state(("head",))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(autouse=True)
def fresh_worker():
    """Each test starts as a new worker would, with no runtime cached."""
    client_app._RUNTIME = None
    yield
    client_app._RUNTIME = None


def test_same_run_reuses_model_and_data(tmp_path):
    spec, initial = start_run(tmp_path, "run")
    arrays = shared_arrays(spec, initial)
    call(spec, MessageType.TRAIN, 0, 1, arrays)
    runtime = client_app._RUNTIME
    model, data = runtime.model, runtime.data(0)

    call(spec, MessageType.TRAIN, 1, 1, arrays)
    call(spec, MessageType.EVALUATE, 0, 1, arrays)
    call(spec, MessageType.TRAIN, 0, 2, arrays)

    assert client_app._RUNTIME is runtime
    assert client_app.runtime_for(spec) is runtime
    assert runtime.model is model
    assert runtime.data(0) is data
    # each client's cached data is its own rows, not another client's
    for cid in (0, 1):
        expected = load_client_data(runtime.dataset, cid)
        assert torch.equal(runtime.data(cid).train_images, expected.train_images)
        assert torch.equal(runtime.data(cid).test_labels, expected.test_labels)


def test_new_run_id_gets_a_fresh_runtime(tmp_path):
    spec, initial = start_run(tmp_path, "first")
    call(spec, MessageType.TRAIN, 0, 1, shared_arrays(spec, initial))
    first = client_app._RUNTIME

    other, other_initial = start_run(tmp_path, "second")
    assert other.run_id != spec.run_id
    fresh = client_app.runtime_for(other)
    assert fresh is not first
    assert fresh.model is not first.model
    assert fresh._data == {}
    assert fresh.spec.run_id == other.run_id


def test_each_client_keeps_exactly_its_own_head(tmp_path):
    spec, initial = start_run(tmp_path, "run")
    store = ClientStateStore(spec.state_dir)
    arrays = shared_arrays(spec, initial)

    call(spec, MessageType.TRAIN, 0, 1, arrays)
    runtime = client_app._RUNTIME
    head_a = head_of(runtime.model)
    call(spec, MessageType.TRAIN, 1, 1, arrays)
    head_b = head_of(runtime.model)

    assert not same(head_a, head_b)
    assert same(store.load(0, before_round=2), head_a)
    assert same(store.load(1, before_round=2), head_b)

    # A is evaluated after B trained on the same model object: A's head comes back
    call(spec, MessageType.EVALUATE, 0, 1, arrays)
    assert same(head_of(runtime.model), head_a)
    call(spec, MessageType.EVALUATE, 1, 1, arrays)
    assert same(head_of(runtime.model), head_b)

    # and a second round of A starts from A's head, never B's
    call(spec, MessageType.TRAIN, 0, 2, arrays)
    assert same(store.load(0, before_round=2), head_a)
    assert same(store.load(1, before_round=3), head_b)


def test_fedavg_after_fedper_in_the_same_worker_carries_nothing_over(tmp_path):
    fedper, fedper_initial = start_run(tmp_path, "fedper")
    fedper_arrays = shared_arrays(fedper, fedper_initial)
    call(fedper, MessageType.TRAIN, 0, 1, fedper_arrays)
    call(fedper, MessageType.EVALUATE, 0, 1, fedper_arrays)
    fedper_model = client_app._RUNTIME.model

    # a different global model, so any leftover weight would show
    fedavg, _ = start_run(tmp_path, "fedavg", ["algorithm=fedavg", "seed=7"])
    global_model = build_model(fedavg.cfg, seed=123)
    reply = call(
        fedavg, MessageType.EVALUATE, 0, 1, shared_arrays(fedavg, global_model.state_dict())
    )

    runtime = client_app._RUNTIME
    assert runtime.spec.run_id == fedavg.run_id
    assert runtime.model is not fedper_model
    assert same(runtime.model.state_dict(), global_model.state_dict())

    # the reply is what the global model alone scores on this client's test split
    data = load_client_data(runtime.dataset, 0)
    transform = BatchTransform(
        fedavg.cfg.dataset.image_size, runtime.dataset.mean, runtime.dataset.std
    )
    expected = evaluate(
        global_model, data.test_images, data.test_labels, transform, fedavg.cfg.batch_size
    )
    assert reply.content["metrics"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert reply.content["metrics"]["loss"] == pytest.approx(expected["loss"], rel=1e-5)

"""The ClientApp's handlers called in-process: what leaves a client, and which head it uses."""

import os

import pytest
import torch
from conftest import make_config
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedper import client_app
from fedper.algorithms import ALGORITHMS
from fedper.client_state import ClientStateStore
from fedper.config import SPEC_ENV_VAR, derive_run_spec
from fedper.data import prepare_dataset
from fedper.errors import StateFileError
from fedper.models import build_model

SMALL = [
    "dataset=digits",
    "model.width_multiplier=0.25",
    "num_clients=3",
    "clients_per_round=3",
    "num_epochs=1",
    "batch_size=32",
]


class Run:
    """A prepared run (partition, initial state, spec in the environment) to call handlers on."""

    def __init__(self, tmp_path, algorithm, extra=()):
        self.cfg = make_config(
            [*SMALL, f"algorithm={algorithm}", f"data_dir={tmp_path}/datasets",
             f"state_dir={tmp_path}/client_states", *extra]
        )  # fmt: skip
        self.spec = derive_run_spec(self.cfg, tmp_path / "run")
        os.makedirs(self.spec.run_dir, exist_ok=True)
        prepare_dataset(self.cfg).save(self.spec.run_dir)
        self.initial = build_model(self.cfg, seed=self.cfg.seed)
        self.store = ClientStateStore(self.spec.state_dir)
        self.store.save_initial(self.initial.part_state(("base", "head")))
        self.algorithm = ALGORITHMS[algorithm]
        self.shared = ArrayRecord(self.initial.part_state(self.algorithm.shared_parts))
        os.environ[SPEC_ENV_VAR] = self.spec.to_json()

    def message(self, kind, round_num, arrays=None):
        content = RecordDict(
            {
                "arrays": arrays if arrays is not None else self.shared,
                "config": ConfigRecord({"server-round": round_num}),
            }
        )
        return Message(content=content, message_type=kind, dst_node_id=1)

    def call(self, handler, kind, cid, round_num, arrays=None):
        os.environ[SPEC_ENV_VAR] = self.spec.to_json()
        context = Context(
            run_id=1,
            node_id=cid + 1,
            node_config={"partition-id": cid, "num-partitions": self.cfg.num_clients},
            state=RecordDict(),
            run_config={},
        )
        return handler(self.message(kind, round_num, arrays), context)

    def train(self, cid, round_num, arrays=None):
        return self.call(client_app.train_round, MessageType.TRAIN, cid, round_num, arrays)

    def evaluate(self, cid, round_num, arrays=None):
        return self.call(client_app.evaluate_round, MessageType.EVALUATE, cid, round_num, arrays)


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield
    os.environ.pop(SPEC_ENV_VAR, None)
    client_app._RUNTIME = None


def head_of(model_or_state):
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    return {k: v.clone() for k, v in state.items() if k.startswith("head.")}


def test_fedper_sends_only_the_base(tmp_path):
    run = Run(tmp_path, "fedper")
    reply = run.train(0, 1)
    sent = set(reply.content["arrays"].keys())
    assert sent == set(run.initial.part_keys(("base",)))
    assert not any(key.startswith("head.") for key in sent)
    assert reply.content["metrics"]["num-examples"] > 0


@pytest.mark.parametrize(("algorithm", "parts"), [("fedavg", ("base", "head")), ("local", ())])
def test_other_algorithms_send_what_they_share(tmp_path, algorithm, parts):
    run = Run(tmp_path, algorithm)
    reply = run.train(1, 1)
    assert set(reply.content["arrays"].keys()) == set(run.initial.part_keys(parts))


def test_head_used_in_round_2_is_the_one_saved_after_round_1(tmp_path):
    run = Run(tmp_path, "fedper")
    run.train(0, 1)
    saved_after_round_1 = run.store.load(0, before_round=2)
    assert saved_after_round_1 is not None
    # the trained head differs from the initial one
    initial_head = head_of(run.initial)
    assert any(not torch.equal(saved_after_round_1[k], initial_head[k]) for k in initial_head)
    # another client trains in between on the same worker (same model object)
    run.train(1, 1)
    runtime = client_app.runtime_for(run.spec)
    model = runtime.prepare_model(0, run.shared, before_round=2)
    for key, value in saved_after_round_1.items():
        assert torch.equal(model.state_dict()[key], value), key
    # and the round-2 training starts from it: after training, version 1 is still kept
    run.train(0, 2)
    assert set(run.store.versions(0)) == {1, 2}


def test_evaluation_uses_the_head_trained_this_round_and_changes_nothing(tmp_path):
    run = Run(tmp_path, "fedper")
    run.train(2, 1)
    before = {k: v.clone() for k, v in run.store.load(2, before_round=2).items()}
    first = run.evaluate(2, 1).content["metrics"]
    second = run.evaluate(2, 1).content["metrics"]
    assert first["accuracy"] == second["accuracy"] and first["loss"] == second["loss"]
    after = run.store.load(2, before_round=2)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_client_not_yet_trained_starts_from_the_initial_global_head(tmp_path):
    run = Run(tmp_path, "fedper")
    runtime = client_app.runtime_for(run.spec)
    model = runtime.prepare_model(1, run.shared, before_round=1)
    for key, value in head_of(run.initial).items():
        assert torch.equal(model.state_dict()[key], value)


def test_fedavg_ft_fine_tunes_for_evaluation_without_keeping_it(tmp_path):
    run = Run(tmp_path, "fedavg_ft", ["finetune_epochs=2"])
    plain = Run(tmp_path / "plain", "fedavg")
    tuned = run.evaluate(0, 1).content["metrics"]
    untuned = plain.evaluate(0, 1).content["metrics"]
    assert tuned["loss"] != untuned["loss"]
    assert not any(run.store.path(c).exists() for c in range(3)), "fine-tuned head was saved"


def test_a_truncated_head_file_is_reported_not_reinitialized(tmp_path):
    run = Run(tmp_path, "fedper")
    run.train(0, 1)
    path = run.store.path(0)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StateFileError, match="client_0.pt.*delete it"):
        run.train(0, 2)


def test_a_head_of_the_wrong_shape_is_reported(tmp_path):
    run = Run(tmp_path, "fedper")
    other = build_model(make_config([*SMALL, "dataset.total_classes=3"]))
    run.store.save(0, 1, other.part_state(("head",)))
    with pytest.raises(StateFileError, match="does not fit"):
        run.train(0, 2)

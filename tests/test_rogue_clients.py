"""A rogue client in process: its forged replies are refused, named in the results with the
reason, and never averaged; the honest clients' run is what it would be had the rogue simply
failed."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Error, Message, MessageType, MetricRecord, RecordDict
from helpers import node_configs, plan_local, run_local

from fedper.checkpoint import load_checkpoint
from fedper.errors import FedPerError
from fedper.packing import pack, unpack
from fedper.results import load_results

pytestmark = pytest.mark.usefixtures("fresh_worker")
ROGUE = 1
RUN = ["num_clients=3", "clients_per_round=3", "min_successful_clients=2", "num_rounds=2"]


def forged(msg: Message, reply: Message, metrics: dict | None = None, arrays=None) -> Message:
    """The honest reply with its metrics changed and/or its arrays replaced."""
    content = RecordDict(
        {"metrics": MetricRecord({**dict(reply.content["metrics"]), **(metrics or {})})}
    )
    if arrays is not None or "arrays" in reply.content.array_records:
        content["arrays"] = arrays if arrays is not None else reply.content["arrays"]
    return Message(content, reply_to=msg)


def with_arrays(change):
    """A forgery of the training reply's shared arrays."""

    def forge(msg, reply):
        shared = {k: v.clone() for k, v in unpack(reply.content["arrays"]).items()}
        change(shared)
        return forged(msg, reply, arrays=pack(shared))

    return forge


def first_float(shared):
    return next(k for k, v in shared.items() if v.is_floating_point())


def from_another_node(msg, reply):
    out = forged(msg, reply)
    out.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id + 1
    return out


TRAIN_FORGERIES = {
    "nan weights": with_arrays(lambda s: s[first_float(s)].fill_(float("nan"))),
    "a wrong shape": with_arrays(lambda s: s.update({first_float(s): torch.zeros(3)})),
    "an extra key": with_arrays(lambda s: s.update({"head.extra": torch.zeros(2)})),
    "a thousandfold example count": lambda m, r: forged(
        m, r, {"num-examples": int(r.content["metrics"]["num-examples"]) * 1000}
    ),
    "another node's identity": from_another_node,
}
REASONS = {
    "nan weights": "holds non-finite values",
    "a wrong shape": "float32 (3,)",
    "an extra key": "head.extra was not sent",
    "a thousandfold example count": "training examples",
    "another node's identity": "it came from node 1002, not node 1001",
}


def rogue(train_forgery):
    """Forged training replies; an evaluation claiming a perfect score on a million examples."""

    def forge(msg, reply):
        if msg.metadata.message_type == MessageType.TRAIN:
            return train_forgery(msg, reply)
        return forged(msg, reply, {"accuracy": 1.0, "num-examples": 10**6, "cid": 7})

    return forge


def crashed(msg, reply):
    return Message(Error(code=0, reason="ClientApp raised. Message: crashed"), reply_to=msg)


def honest_view(run_dir):
    """What the honest clients and the server made of the run."""
    rounds = load_results(run_dir)["rounds"]
    keep = ("accuracy", "loss", "val_accuracy", "train_loss", "per_client", "trained_clients")
    arrays = load_checkpoint(run_dir).arrays
    return [{k: r[k] for k in keep} for r in rounds], {
        k: v.numpy().tobytes() for k, v in arrays.items()
    }


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """The same run in which the rogue's node crashes in every message instead."""
    from fedper import client

    client._WORKERS.clear()
    folder = tmp_path_factory.mktemp("crashed")
    run_local(plan_local(folder, RUN), rogue={ROGUE: crashed})
    client._WORKERS.clear()
    return honest_view(folder / "run")


@pytest.mark.parametrize("kind", list(TRAIN_FORGERIES))
def test_a_forged_reply_is_refused_named_and_never_averaged(tmp_path, failed_run, kind):
    run_local(plan_local(tmp_path, RUN), rogue={ROGUE: rogue(TRAIN_FORGERIES[kind])})
    results = load_results(tmp_path / "run")
    for entry in results["rounds"]:
        failures = {f["phase"]: f for f in entry["failures"]}
        assert set(failures) == {"train", "evaluate"} and entry["partial"]
        assert all(f["cid"] == ROGUE for f in failures.values())
        assert failures["train"]["reason"].startswith("reply refused: ")
        assert REASONS[kind] in failures["train"]["reason"]
        assert "is not its" in failures["evaluate"]["reason"]
        assert set(entry["per_client"]) == {"0", "2"}  # never a client the reply claims (7)
    # bit for bit what the run would have been had the rogue crashed instead
    assert honest_view(tmp_path / "run") == failed_run


def test_with_every_client_required_a_rogue_stops_the_run_in_one_line(tmp_path):
    plan = plan_local(tmp_path, ["num_clients=3", "clients_per_round=3"])
    with pytest.raises(FedPerError) as caught:
        run_local(plan, rogue={ROGUE: rogue(TRAIN_FORGERIES["nan weights"])})
    message = str(caught.value)
    assert message.startswith("round 1 train: only 2 of 3 client(s) succeeded")
    assert f"partition-id {ROGUE}: reply refused: " in message and "non-finite" in message
    assert message.endswith(f"continue with: python -m fedper.main resume={tmp_path / 'run'}")
    assert "\n" not in message


def test_a_node_started_rogue_sends_nan_arrays_that_are_refused_and_its_head_stays_honest(
    tmp_path, failed_run
):
    """The node config the Deployment Engine test gives its rogue SuperNode, here in process."""
    nodes = node_configs(3)
    nodes[ROGUE]["rogue"] = "nan"
    run_local(plan_local(tmp_path, RUN), nodes)
    for entry in load_results(tmp_path / "run")["rounds"]:
        [failure] = entry["failures"]
        assert (failure["cid"], failure["phase"]) == (ROGUE, "train")
        assert failure["reason"].endswith("holds non-finite values")
        assert entry["trained_clients"] == [0, 2]
    _, arrays = honest_view(tmp_path / "run")
    assert arrays == failed_run[1]  # the shared model never saw the rogue's arrays

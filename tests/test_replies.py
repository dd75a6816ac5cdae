"""The server trusts no reply: each is checked against the message it answers, and a bad one is
that client's failure with the reason, never averaged and never a crash."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from helpers import set_task_identity

from fedper.packing import pack
from fedper.replies import EVALUATE, TRAIN, Phase, ReplyCheck, failure_reason
from fedper.spec import FATAL

NODES = {0: 100, 1: 101, 2: 102}
PARTITION = [{"cid": c, "num_train": 40 + c, "num_val": 5 if c else 0, "num_test": 10}
             for c in NODES]  # fmt: skip
SHARED = {"base.w": torch.ones(2, 3), "base.n": torch.tensor(4)}


@pytest.fixture(autouse=True)
def identity():
    set_task_identity()


def sent_to(cid, kind=MessageType.TRAIN, arrays=None):
    record = pack(SHARED if arrays is None else arrays)
    content = RecordDict({"arrays": record, "config": ConfigRecord({"server-round": 1})})
    return Message(content, message_type=kind, dst_node_id=NODES[cid])


def train_metrics(cid, **changes):
    return {"num-examples": 40 + cid, "train_loss": 0.7, "head_restarted": 0,
            "seconds_compute": 1.5, **changes}  # fmt: skip


def eval_metrics(cid, **changes):
    val = (
        {"num_val_examples": 5, "val_accuracy": 0.8, "val_loss": 0.6}
        if cid
        else {"num_val_examples": 0, "val_accuracy": float("nan"), "val_loss": float("nan")}
    )
    return {"num-examples": 10, "accuracy": 0.9, "loss": 0.4, "head_restarted": 0,
            **val, **changes}  # fmt: skip


def answer(sent, metrics, arrays=None, source=None):
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = pack(arrays)
    reply = Message(content, reply_to=sent)
    if source is not None:
        reply.metadata.__dict__["_src_node_id"] = source
    return reply


def collect(name, replies):
    """cid -> (sent, reply) through the checks of one phase."""
    return ReplyCheck(PARTITION).collect(Phase(name, sorted(replies)), replies)


def reasons(phase):
    return {f["cid"]: f["reason"] for f in phase.failures}


def test_honest_replies_are_accepted_with_their_arrays_and_known_metrics_only():
    sent = {c: sent_to(c) for c in NODES}
    replies = {c: (sent[c], answer(sent[c], {**train_metrics(c), "cid": 7}, SHARED)) for c in NODES}
    phase = collect(TRAIN, replies)
    assert phase.failures == [] and list(phase.metrics) == [0, 1, 2]
    assert phase.metrics[1] == train_metrics(1)  # what the reply says of its client id is ignored
    assert torch.equal(torch.from_numpy(phase.arrays[2]["base.w"]), SHARED["base.w"])
    assert phase.bytes_up == 3 * len(pack(SHARED)["packed"].data)
    ok = collect(EVALUATE, {c: (s := sent_to(c, MessageType.EVALUATE), answer(s, eval_metrics(c)))
                            for c in NODES})  # fmt: skip
    assert ok.failures == [] and ok.arrays == {}


BAD_ARRAYS = {
    "nan": ({**SHARED, "base.w": torch.full((2, 3), float("nan"))}, "base.w holds non-finite values"),
    "inf": ({**SHARED, "base.w": torch.tensor([[1.0, float("inf"), 0], [0, 0, 0]])},
            "base.w holds non-finite values"),
    "shape": ({**SHARED, "base.w": torch.ones(3, 2)}, "base.w is float32 (3, 2), not float32 (2, 3)"),
    "dtype": ({**SHARED, "base.w": torch.ones(2, 3).double()}, "base.w is float64 (2, 3), not float32"),
    "extra key": ({**SHARED, "head.w": torch.ones(1)}, "head.w was not sent"),
    "missing key": ({"base.w": torch.ones(2, 3)}, "base.n is missing"),
    "none": (None, "it holds no shared arrays"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_arrays_that_differ_from_what_was_sent_are_refused_and_named(case):
    arrays, reason = BAD_ARRAYS[case]
    sent = {c: sent_to(c) for c in NODES}
    replies = {c: (sent[c], answer(sent[c], train_metrics(c), SHARED)) for c in NODES}
    replies[1] = (sent[1], answer(sent[1], train_metrics(1), arrays))
    phase = collect(TRAIN, replies)
    assert list(phase.metrics) == [0, 2] and list(phase.arrays) == [0, 2]  # never averaged
    assert reasons(phase)[1].startswith("reply refused: ") and reason in reasons(phase)[1]


BAD_METRICS = {
    "inflated count": (TRAIN, {"num-examples": 10**9}, "num-examples=1000000000 is not its 41 training"),
    "count as float": (TRAIN, {"num-examples": 41.0}, "is not its 41 training examples"),
    "negative loss": (TRAIN, {"train_loss": -0.5}, "train_loss=-0.5 is not a loss"),
    "negative timer": (TRAIN, {"seconds_compute": -1.0}, "seconds_compute=-1.0 is not a duration"),
    "odd flag": (TRAIN, {"head_restarted": 5}, "head_restarted=5 is not 0 or 1"),
    "accuracy above 1": (EVALUATE, {"accuracy": 1.5}, "accuracy=1.5 is not an accuracy"),
    "negative eval loss": (EVALUATE, {"loss": -1e-9}, "loss=-1e-09 is not a loss"),
    "val count": (EVALUATE, {"num_val_examples": 6}, "num_val_examples=6 is not its 5 validation"),
    "no accuracy": (EVALUATE, {"accuracy": None}, "it reports no accuracy"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_METRICS))
def test_metrics_that_are_not_sane_are_refused_and_named(case):
    name, changes, reason = BAD_METRICS[case]
    kind = MessageType.TRAIN if name == TRAIN else MessageType.EVALUATE
    honest = train_metrics if name == TRAIN else eval_metrics
    metrics = {k: v for k, v in honest(1, **changes).items() if v is not None}
    sent = sent_to(1, kind)
    phase = collect(name, {1: (sent, answer(sent, metrics, SHARED if name == TRAIN else None))})
    assert phase.metrics == {} and reason in reasons(phase)[1]


def test_validation_metrics_are_nan_exactly_when_a_client_has_no_validation_split():
    sent = sent_to(0, MessageType.EVALUATE)
    with_val = eval_metrics(0, num_val_examples=0, val_accuracy=0.5, val_loss=0.5)
    phase = collect(EVALUATE, {0: (sent, answer(sent, with_val))})
    assert "val_accuracy=0.5 is not an accuracy" in reasons(phase)[0]
    sent = sent_to(1, MessageType.EVALUATE)
    phase = collect(
        EVALUATE,
        {
            1: (
                sent,
                answer(sent, eval_metrics(1, val_loss=float("nan"), val_accuracy=float("nan"))),
            )
        },
    )
    assert "val_accuracy=nan is not an accuracy" in reasons(phase)[1]


def test_a_diverged_models_nan_or_infinite_loss_is_an_honest_measurement_and_counts():
    sent = sent_to(1, MessageType.EVALUATE)
    metrics = eval_metrics(1, loss=float("nan"), val_loss=float("inf"))
    phase = collect(EVALUATE, {1: (sent, answer(sent, metrics))})
    assert phase.failures == [] and math.isnan(phase.metrics[1]["loss"])


def test_a_reply_from_another_node_than_the_message_went_to_is_refused():
    sent = {c: sent_to(c) for c in NODES}
    # node 102 (client 2) answers the message sent to client 1, claiming to be client 1
    forged = answer(sent[1], {**train_metrics(1), "cid": 1}, SHARED, source=NODES[2])
    phase = collect(TRAIN, {1: (sent[1], forged)})
    assert reasons(phase) == {
        1: "reply refused: it came from node 102, not node 101 the message went to"
    }


def test_an_error_reply_is_named_from_what_was_sent_not_from_its_source():
    sent = sent_to(2)
    # the SuperLink answers for a node that is gone: the source is the SuperLink (0), not a client
    reply = Message(Error(code=5, reason="Error: Node Unavailable - no heartbeat"), reply_to=sent)
    reply.metadata.__dict__["_src_node_id"] = 0
    phase = collect(TRAIN, {2: (sent, reply)})
    assert phase.failures == [
        {"cid": 2, "phase": "train", "reason": "Error: Node Unavailable - no heartbeat"}
    ]


def test_a_reply_of_any_other_shape_is_refused_not_a_crash():
    sent = sent_to(0)
    odd = [
        Message(RecordDict({"config": ConfigRecord({"x": 1})}), reply_to=sent),
        Message(RecordDict({"metrics": MetricRecord({"num-examples": [1, 2]})}), reply_to=sent),
        answer(sent_to(0, MessageType.EVALUATE), eval_metrics(0), SHARED),  # arrays unasked
    ]
    for reply in odd:
        phase = collect(TRAIN if reply is not odd[2] else EVALUATE, {0: (sent, reply)})
        assert phase.metrics == {} and reasons(phase)[0].startswith("reply refused: ")


def test_the_clients_own_message_is_taken_out_of_a_traceback():
    traceback = (
        "Traceback (most recent call last):\n  File x\nClientAppException:\n"
        "Message: CUDA out of memory. Tried to allocate 2 GiB\n  more lines"
    )
    assert failure_reason(traceback) == "CUDA out of memory. Tried to allocate 2 GiB"
    assert failure_reason("") == "unknown error"


def test_a_reply_without_metrics_is_refused_saying_so():
    sent = sent_to(0)
    reply = Message(RecordDict({FATAL: ConfigRecord({"reason": "no data"})}), reply_to=sent)
    assert reasons(collect(TRAIN, {0: (sent, reply)})) == {0: "reply refused: it holds no metrics"}

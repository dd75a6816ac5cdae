"""The server strategy and each round's results entry on hand-made replies: sampling, ordered
aggregation, failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from helpers import set_task_identity

from fedper.errors import FedPerError
from fedper.results import client_metrics, failure_reason, round_entry, summarize_evaluation
from fedper.strategy import FedPerStrategy

NODES = {0: 100, 1: 101, 2: 102, 3: 103}  # client id -> node id


@pytest.fixture(autouse=True)
def identity():
    set_task_identity()


def reply_from(cid, metrics, arrays=None, kind=MessageType.TRAIN):
    """A client's reply as the server receives it (its source is the client's node)."""
    sent = Message(content=RecordDict(), message_type=kind, dst_node_id=NODES[cid])
    content = RecordDict({"metrics": MetricRecord({**metrics, "cid": cid})})
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    return Message(content=content, reply_to=sent)


def failed(cid, reason, kind=MessageType.TRAIN):
    sent = Message(content=RecordDict(), message_type=kind, dst_node_id=NODES[cid])
    return Message(Error(code=0, reason=reason), reply_to=sent)


def test_sampling_is_a_pure_function_of_seed_and_round():
    a, b = FedPerStrategy(NODES, 2, seed=7), FedPerStrategy(dict(reversed(NODES.items())), 2, 7)
    rounds = [a.sample_clients(r) for r in range(1, 30)]
    assert rounds == [b.sample_clients(r) for r in range(1, 30)]  # node order does not matter
    assert all(len(r) == 2 and r == sorted(set(r)) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # it does change between rounds
    assert FedPerStrategy(NODES, 4, 7).sample_clients(3) == [0, 1, 2, 3]
    assert rounds != [FedPerStrategy(NODES, 2, 8).sample_clients(r) for r in range(1, 30)]


def test_aggregation_is_example_weighted_in_client_order_and_keeps_integers():
    strategy = FedPerStrategy(NODES, 3, seed=1)
    arrays = {
        0: {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)},
        1: {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)},
        2: {"w": torch.tensor([0.1, 0.7]), "n": torch.tensor(5)},
    }
    examples = {0: 10, 1: 30, 2: 7}
    replies = [reply_from(c, {"num-examples": examples[c]}, arrays[c]) for c in (2, 0, 1)]
    out = strategy.aggregate_shared(1, replies)
    total = sum(examples.values())
    expected = sum(arrays[c]["w"].double() * examples[c] for c in (0, 1, 2)) / total
    assert out["w"].dtype == torch.float32
    assert torch.allclose(out["w"].double(), expected, atol=1e-6)
    # an integer counter keeps the largest count, never a float average truncated on load
    assert out["n"].dtype == torch.int64 and out["n"].shape == () and int(out["n"]) == 9
    # the order replies arrive in changes nothing, to the last bit
    again = strategy.aggregate_shared(1, [replies[2], replies[0], replies[1]])
    assert torch.equal(again["w"], out["w"])


def test_failed_replies_are_left_out_and_named_with_the_clients_own_message():
    strategy = FedPerStrategy(NODES, 4, seed=1)
    traceback = (
        "Traceback (most recent call last):\n  File x\nClientAppException:\n"
        "Message: CUDA out of memory. Tried to allocate 2 GiB\n  more lines"
    )
    replies = [
        reply_from(0, {"num-examples": 4}, {"w": torch.ones(2)}),
        failed(3, traceback),
        failed(1, "plain text"),
        reply_from(2, {"num-examples": 4}, {"w": torch.zeros(2)}),
    ]
    assert strategy.failures(replies, "train") == [
        {"cid": 1, "phase": "train", "reason": "plain text"},
        {"cid": 3, "phase": "train", "reason": "CUDA out of memory. Tried to allocate 2 GiB"},
    ]
    assert torch.equal(strategy.aggregate_shared(1, replies)["w"], torch.full((2,), 0.5))
    assert failure_reason("") == "unknown error"


def evaluation(cid, accuracy, loss, n, val=None):
    metrics = {"num-examples": n, "accuracy": accuracy, "loss": loss,
               "num_val_examples": 0 if val is None else 5}  # fmt: skip
    if val is not None:
        metrics.update(val_accuracy=val, val_loss=loss)
    return reply_from(cid, metrics, kind=MessageType.EVALUATE)


def test_round_summary_by_hand_and_partial_rounds_marked():
    strategy = FedPerStrategy(NODES, 4, seed=1)
    train = [reply_from(c, {"num-examples": 10, "train_loss": 0.5 + c}, {}) for c in (0, 1, 2)]
    train.append(failed(3, "boom"))
    evaluate = [evaluation(0, 0.5, 1.0, 10, 0.6), evaluation(1, 1.0, 0.0, 30, 0.8),
                evaluation(2, 0.0, 2.0, 20), evaluation(3, 0.25, 1.0, 40)]  # fmt: skip
    entry = round_entry(strategy, 4, train, evaluate, min_successful=3)
    assert entry["accuracy"] == pytest.approx((0.5 + 1.0 + 0.0 + 0.25) / 4)
    assert entry["accuracy_weighted"] == pytest.approx((5 + 30 + 0 + 10) / 100)
    assert entry["val_accuracy"] == pytest.approx(0.7)  # clients with a validation split only
    assert entry["train_loss"] == pytest.approx((0.5 + 1.5 + 2.5) / 3)
    assert entry["trained_clients"] == [0, 1, 2]
    assert entry["partial"] is True and entry["clients_failed"] == 1
    assert entry["clients_expected"] == 4 and entry["clients_ok"] == 4
    with pytest.raises(
        FedPerError, match="round 4 train: only 3 client.* min_successful_clients=4"
    ):
        round_entry(strategy, 4, train, evaluate, min_successful=4)


def test_summaries_do_not_depend_on_the_order_clients_answered():
    rng = np.random.default_rng(0)
    per_client = {c: {"accuracy": float(a), "loss": float(b), "num-examples": int(n),
                      "num_val_examples": 3, "val_accuracy": float(a), "val_loss": float(b)}
                  for c, (a, b, n) in enumerate(zip(rng.random(9), rng.random(9) * 3,
                                                    rng.integers(1, 50, 9), strict=True))}  # fmt: skip
    shuffled = dict(sorted(per_client.items(), key=lambda item: -item[0]))
    assert summarize_evaluation(per_client) == summarize_evaluation(shuffled)


def test_each_message_names_the_last_round_the_clients_training_counted_in():
    strategy = FedPerStrategy(NODES, 4, seed=1)
    config = ConfigRecord({"server-round": 3})

    def head_rounds(kind=MessageType.EVALUATE):
        messages = strategy._messages(sorted(NODES), ArrayRecord(), config, kind)
        return {strategy.client_of_node[m.metadata.dst_node_id]: m.content["config"]["head-round"]
                for m in messages}  # fmt: skip

    assert head_rounds() == {0: 0, 1: 0, 2: 0, 3: 0}  # nobody has trained yet
    strategy.restore_head_rounds([{"round": 1, "trained_clients": [0, 1]},
                                  {"round": 2, "trained_clients": [1, 2]}])  # fmt: skip
    assert head_rounds() == {0: 1, 1: 2, 2: 2, 3: 0}
    trained = client_metrics([reply_from(0, {}), failed(3, "boom")])  # a failure counts not
    strategy.count_training(3, trained)
    assert head_rounds(MessageType.TRAIN) == {0: 3, 1: 2, 2: 2, 3: 0}
    assert "head-round" not in config  # each client's config is its own copy

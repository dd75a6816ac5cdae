"""The server strategy and each round's results entry on hand-made outcomes: sampling for
training and evaluation, averaging as Flower's FedAvg, summaries and failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from helpers import set_task_identity

from fedper.errors import FedPerError
from fedper.replies import EVALUATE, TRAIN, Phase
from fedper.results import check_enough, round_entry, summarize_evaluation
from fedper.strategy import FedPerStrategy, average

NODES = {0: 100, 1: 101, 2: 102, 3: 103}  # client id -> node id


@pytest.fixture(autouse=True)
def identity():
    set_task_identity()


def test_sampling_is_a_pure_function_of_seed_and_round():
    a, b = FedPerStrategy(NODES, 2, seed=7), FedPerStrategy(dict(reversed(NODES.items())), 2, 7)
    rounds = [a.sample_clients(r) for r in range(1, 30)]
    assert rounds == [b.sample_clients(r) for r in range(1, 30)]  # node order does not matter
    assert all(len(r) == 2 and r == sorted(set(r)) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # it does change between rounds
    assert FedPerStrategy(NODES, 4, 7).sample_clients(3) == [0, 1, 2, 3]
    assert rounds != [FedPerStrategy(NODES, 2, 8).sample_clients(r) for r in range(1, 30)]


def test_by_default_every_client_evaluates_after_every_round():
    strategy = FedPerStrategy(NODES, 2, seed=7)
    assert all(strategy.evaluation_clients(r, 10) == [0, 1, 2, 3] for r in range(1, 11))


def test_evaluation_every_k_rounds_draws_its_own_clients_and_the_last_round_asks_all():
    strategy = FedPerStrategy(NODES, 2, seed=7, clients_per_evaluation=2, evaluate_every=3)
    asked = {r: strategy.evaluation_clients(r, 20) for r in range(1, 21)}
    assert [r for r, clients in asked.items() if clients] == [3, 6, 9, 12, 15, 18, 20]
    assert asked[20] == [0, 1, 2, 3]
    drawn = [asked[r] for r in (3, 6, 9, 12, 15, 18)]
    assert all(len(c) == 2 and c == sorted(set(c)) for c in drawn)
    assert len({tuple(c) for c in drawn}) > 1
    # a pure function of seed and round, and not the training draw of that round
    again = FedPerStrategy(dict(reversed(NODES.items())), 2, 7, 2, 3)
    assert drawn == [again.evaluation_clients(r, 20) for r in (3, 6, 9, 12, 15, 18)]
    assert drawn != [strategy.sample_clients(r) for r in (3, 6, 9, 12, 15, 18)]


def test_shared_nodes_take_the_clients_in_turn_and_every_message_names_its_client():
    strategy = FedPerStrategy(NODES, 3, seed=7, clients_per_evaluation=5, num_clients=10)
    assert strategy.wave == 4 and strategy.clients == list(range(10))
    assert strategy.evaluation_clients(5, 5) == list(range(10))  # the last round: every client
    drawn = strategy.sample_clients(2)
    assert len(drawn) == 3 and set(drawn) <= set(range(10))
    # the same draw as with one node per client: sampling never depends on the nodes
    assert drawn == FedPerStrategy({c: 200 + c for c in range(10)}, 3, seed=7).sample_clients(2)
    messages = strategy.messages(range(10), ArrayRecord(), ConfigRecord({}), MessageType.TRAIN)
    nodes = [m.metadata.dst_node_id for m in messages.values()]
    assert all(len(set(nodes[i : i + 4])) == len(nodes[i : i + 4]) for i in range(0, 10, 4))
    assert set(nodes) == set(NODES.values())
    assert {cid: m.content["config"]["client-id"] for cid, m in messages.items()} == {
        cid: cid for cid in range(10)
    }
    # one node per client: each message goes to its client's own node, named all the same
    own = FedPerStrategy(NODES, 2, seed=7)
    assert own.wave is None
    sent = own.messages([1, 3], ArrayRecord(), ConfigRecord({}), MessageType.EVALUATE)
    assert {
        c: (m.metadata.dst_node_id, m.content["config"]["client-id"]) for c, m in sent.items()
    } == {1: (101, 1), 3: (103, 3)}


def test_averaging_is_flowers_fedavg_bit_for_bit_and_keeps_integer_counters():
    rng = np.random.default_rng(0)
    states = {
        cid: {"w": rng.standard_normal((3, 4)).astype(np.float32),
              "b": rng.standard_normal(()).astype(np.float32),
              "n": np.array(cid * 3 + 1, dtype=np.int64)}
        for cid in (2, 0, 1)
    }  # fmt: skip
    examples = {0: 10, 1: 31, 2: 7}
    out = average(states, examples)
    # Flower's own FedAvg arithmetic on the same arrays, in client order
    records = [
        RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in states[cid].items() if k != "n"}),
                    "metrics": MetricRecord({"num-examples": examples[cid]})})
        for cid in (0, 1, 2)
    ]  # fmt: skip
    flower = aggregate_arrayrecords(records, "num-examples")
    for key in ("w", "b"):
        expected = flower[key].numpy().astype(np.float32)
        assert out[key].dtype == torch.float32 and out[key].shape == expected.shape
        assert out[key].numpy().tobytes() == expected.tobytes(), key
    # an integer counter keeps the largest count, never a float average truncated on load
    assert out["n"].dtype == torch.int64 and out["n"].shape == () and int(out["n"]) == 7
    # the order the clients come in changes nothing, to the last bit
    again = average(dict(sorted(states.items())), examples)
    assert all(torch.equal(again[k], out[k]) for k in out)


def phase(name, asked, metrics, failures=()):
    result = Phase(name, asked, metrics=dict(sorted(metrics.items())))
    for cid, reason in failures:
        result.fail(cid, reason)
    return result


def evaluation(accuracy, loss, n, val=None):
    metrics = {"num-examples": n, "accuracy": accuracy, "loss": loss,
               "num_val_examples": 0 if val is None else 5,
               "val_accuracy": float("nan") if val is None else val,
               "val_loss": float("nan") if val is None else loss}  # fmt: skip
    return metrics


def test_round_summary_by_hand_and_partial_rounds_marked():
    train = phase(TRAIN, [0, 1, 2, 3],
                  {c: {"num-examples": 10, "train_loss": 0.5 + c} for c in (0, 1, 2)},
                  [(3, "boom")])  # fmt: skip
    evaluate = phase(EVALUATE, [0, 1, 2, 3],
                     {0: evaluation(0.5, 1.0, 10, 0.6), 1: evaluation(1.0, 0.0, 30, 0.8),
                      2: evaluation(0.0, 2.0, 20), 3: evaluation(0.25, 1.0, 40)})  # fmt: skip
    entry = round_entry(4, train, evaluate)
    assert entry["evaluated"] is True
    assert entry["accuracy"] == pytest.approx((0.5 + 1.0 + 0.0 + 0.25) / 4)
    assert entry["accuracy_weighted"] == pytest.approx((5 + 30 + 0 + 10) / 100)
    assert entry["val_accuracy"] == pytest.approx(0.7)  # clients with a validation split only
    assert entry["train_loss"] == pytest.approx((0.5 + 1.5 + 2.5) / 3)
    assert entry["trained_clients"] == [0, 1, 2]
    assert entry["partial"] is True and entry["clients_failed"] == 1
    assert entry["failures"] == [{"cid": 3, "phase": "train", "reason": "boom"}]
    assert entry["clients_expected"] == 4 and entry["clients_ok"] == 4
    assert set(entry["per_client"]) == {"0", "1", "2", "3"}
    assert "train_loss" not in entry["per_client"]["3"]


def test_a_round_without_evaluation_records_its_training_only():
    train = phase(TRAIN, [1, 3], {1: {"num-examples": 10, "train_loss": 0.5},
                                  3: {"num-examples": 30, "train_loss": 1.0}})  # fmt: skip
    entry = round_entry(2, train, None)
    assert entry["evaluated"] is False
    assert all(entry[k] != entry[k] for k in ("accuracy", "loss", "val_accuracy"))  # NaN: null
    assert entry["train_loss"] == pytest.approx((5 + 30) / 40)
    # per-client entries only for the clients that took part, whatever num_clients is
    assert entry["per_client"] == {"1": {"train_loss": 0.5}, "3": {"train_loss": 1.0}}
    assert (entry["clients_expected"], entry["clients_ok"], entry["partial"]) == (2, 2, False)


def test_too_few_successes_stop_the_run_naming_partition_ids_round_and_resume():
    train = phase(TRAIN, [0, 1, 2, 3], {0: {}, 2: {}},
                  [(1, "Error: Node Unavailable"), (3, "boom")])  # fmt: skip
    with pytest.raises(FedPerError) as caught:
        check_enough(4, train, 3, "/runs/x")
    assert str(caught.value) == (
        "round 4 train: only 2 of 4 client(s) succeeded, fewer than min_successful_clients=3 "
        "(partition-id 1: Error: Node Unavailable; partition-id 3: boom); continue with: "
        "python -m fedper.main resume=/runs/x"
    )
    check_enough(4, train, 2, "/runs/x")  # enough
    # fewer clients asked than min_successful_clients (a sampled evaluation): all must succeed
    sampled = phase(EVALUATE, [1, 2], {1: {}, 2: {}})
    check_enough(4, sampled, 3, "/runs/x")
    sampled.metrics.pop(2)
    with pytest.raises(FedPerError, match="only 1 of 2 client"):
        check_enough(4, sampled, 3, "/runs/x")


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
        messages = strategy.messages(sorted(NODES), ArrayRecord(), config, kind)
        assert {c: m.metadata.dst_node_id for c, m in messages.items()} == NODES
        return {cid: m.content["config"]["head-round"] for cid, m in messages.items()}

    assert head_rounds() == {0: 0, 1: 0, 2: 0, 3: 0}  # nobody has trained yet
    strategy.restore_head_rounds([{"round": 1, "trained_clients": [0, 1]},
                                  {"round": 2, "trained_clients": [1, 2]}])  # fmt: skip
    assert head_rounds() == {0: 1, 1: 2, 2: 2, 3: 0}
    strategy.count_training(3, {0: {}})  # the clients whose training was accepted
    assert head_rounds(MessageType.TRAIN) == {0: 3, 1: 2, 2: 2, 3: 0}
    assert "head-round" not in config  # each client's config is its own copy

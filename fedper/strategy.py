"""The server strategy: which clients train and evaluate in a round, the messages they get,
and FedAvg over whatever part of the model is shared."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedper.spec import HEAD_ROUND_KEY

ARRAYS, CONFIG = "arrays", "config"  # where a message carries the shared arrays and settings


class FedPerStrategy:
    """FedAvg's example-weighted averaging over the arrays the clients send back.

    The arrays are whatever the algorithm shares: the base for FedPer (heads never leave a
    client), the whole model for FedAvg, nothing for local training. Clients are drawn from the
    run's seed per round (Flower's default sampler uses the global `random`), for training and
    for evaluation, and messages are addressed by client id, so a rerun asks the same clients.
    """

    def __init__(
        self,
        node_of_client: dict[int, int],
        clients_per_round: int,
        seed: int,
        clients_per_evaluation: int | None = None,
        evaluate_every: int = 1,
    ) -> None:
        self.node_of_client = dict(node_of_client)
        self.client_of_node = {node: cid for cid, node in self.node_of_client.items()}
        self.clients_per_round = clients_per_round
        self.clients_per_evaluation = clients_per_evaluation or len(node_of_client)
        self.evaluate_every = evaluate_every
        self.seed = seed
        # cid -> the last round whose training by that client counted: its head is from then
        self.head_round: dict[int, int] = {}

    def count_training(self, round_num: int, trained: Iterable[int]) -> None:
        """The clients whose training counted (a round's `trained_clients`) saved their head
        in `round_num`; from now on their messages say so, and a client whose store lacks that
        head stops the run."""
        for cid in trained:
            self.head_round[int(cid)] = round_num

    def restore_head_rounds(self, rounds: Iterable[dict]) -> None:
        """`head_round` after the committed rounds of a resumed run."""
        for entry in rounds:
            self.count_training(int(entry["round"]), entry.get("trained_clients", ()))

    def draw(self, count: int, stream: int, round_num: int) -> list[int]:
        """`count` clients, a pure function of seed, stream and round; all when count covers them."""
        clients = sorted(self.node_of_client)
        if count >= len(clients):
            return clients
        rng = np.random.default_rng([self.seed, stream, round_num])
        return sorted(rng.choice(clients, size=count, replace=False).tolist())

    def sample_clients(self, round_num: int) -> list[int]:
        """The clients that train in a round."""
        return self.draw(self.clients_per_round, 2, round_num)

    def evaluation_clients(self, round_num: int, last_round: int) -> list[int]:
        """The clients that evaluate after a round: every `evaluate_every` rounds a draw of
        `clients_per_evaluation` (its own seeded stream), and every client after the last."""
        if round_num >= last_round:
            return sorted(self.node_of_client)
        if round_num % self.evaluate_every:
            return []
        return self.draw(self.clients_per_evaluation, 3, round_num)

    def messages(
        self, clients: Iterable[int], arrays: ArrayRecord, config: ConfigRecord, kind: str
    ) -> dict[int, Message]:
        """cid -> its message: the shared arrays, the settings and the round its head is from."""

        def content(cid: int) -> RecordDict:
            own = ConfigRecord({**config, HEAD_ROUND_KEY: self.head_round.get(cid, 0)})
            return RecordDict({ARRAYS: arrays, CONFIG: own})

        return {
            cid: Message(content(cid), message_type=kind, dst_node_id=self.node_of_client[cid])
            for cid in clients
        }


def average(
    states: Mapping[int, Mapping[str, np.ndarray]], examples: Mapping[int, int]
) -> dict[str, torch.Tensor]:
    """FedAvg over the clients' shared arrays, in client order, in the dtypes clients sent.

    The arithmetic is Flower's `aggregate_arrayrecords` (FedAvg's): each array times its
    client's share of the examples, summed in order; a test holds the two equal bit for bit.
    It runs here on arrays read in place from the packed replies, without rebuilding a Flower
    record per client. Integer buffers (BatchNorm's `num_batches_tracked`) are counters, not
    weights: they take the largest count among the clients, not a float average.
    """
    order = sorted(states)
    total = sum(examples[cid] for cid in order)
    out: dict[str, np.ndarray] = {}
    for key, first in states[order[0]].items():
        if np.issubdtype(first.dtype, np.integer):
            value = np.max(np.stack([states[cid][key] for cid in order]), axis=0)
        else:
            value = first * (examples[order[0]] / total)
            for cid in order[1:]:
                value += states[cid][key] * (examples[cid] / total)
            value = value.astype(first.dtype, copy=False)
        out[key] = torch.from_numpy(np.array(value))  # a copy, 0-d stays 0-d
    return out

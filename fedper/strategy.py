"""The server strategy: which clients train and evaluate in a round, the messages they get,
and FedAvg over whatever part of the model is shared."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedper.spec import CLIENT_KEY, EVALUATE_ROUND_KEY, HEAD_ROUND_KEY

ARRAYS, CONFIG = "arrays", "config"  # where a message carries the shared arrays and settings


class FedPerStrategy:
    """FedAvg's example-weighted averaging over the arrays the clients send back.

    The arrays are whatever the algorithm shares: the base for FedPer (heads never leave a
    client), the whole model for FedAvg, nothing for local training. Clients are drawn from the
    run's seed per round (Flower's default sampler uses the global `random`), for training and
    for evaluation, and messages are addressed by client id, so a rerun asks the same clients.

    `nodes` maps each node's partition-id to its node id. With one node per client the two are
    the same; with fewer nodes than `num_clients` (a large simulation) each message names its
    client and goes to a node in turn, `wave` messages (one per node) at a time.
    """

    def __init__(
        self,
        nodes: dict[int, int],
        clients_per_round: int,
        seed: int,
        clients_per_evaluation: int | None = None,
        evaluate_every: int = 1,
        num_clients: int | None = None,
    ) -> None:
        self.clients = list(range(num_clients)) if num_clients else sorted(nodes)
        shared = len(nodes) < len(self.clients)
        self.node_of_client = {} if shared else dict(nodes)
        self.shared_nodes = [nodes[p] for p in sorted(nodes)] if shared else []
        self.wave = len(self.shared_nodes) or None
        self.clients_per_round = clients_per_round
        self.clients_per_evaluation = clients_per_evaluation or len(self.clients)
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
        clients = self.clients
        if count >= len(clients):
            return list(clients)
        rng = np.random.default_rng([self.seed, stream, round_num])
        return sorted(rng.choice(clients, size=count, replace=False).tolist())

    def sample_clients(self, round_num: int) -> list[int]:
        """The clients that train in a round."""
        return self.draw(self.clients_per_round, 2, round_num)

    def evaluation_clients(self, round_num: int, last_round: int) -> list[int]:
        """The clients that evaluate after a round: every `evaluate_every` rounds a draw of
        `clients_per_evaluation` (its own seeded stream), and every client after the last."""
        if round_num >= last_round:
            return list(self.clients)
        if round_num % self.evaluate_every:
            return []
        return self.draw(self.clients_per_evaluation, 3, round_num)

    def messages(
        self,
        clients: Iterable[int],
        arrays: ArrayRecord,
        config: ConfigRecord,
        kind: str | Mapping[int, str],
        evaluate_first: tuple[int, Iterable[int]] | None = None,
    ) -> dict[int, Message]:
        """cid -> its message: the shared arrays, the settings, the client and the round its
        head is from. Shared nodes take the clients in turn, so any `wave` messages in a row go
        to different nodes. `kind` is one message type, or one per client; `evaluate_first`
        (round, clients) asks those clients to evaluate that round before they train."""
        first_round, first = evaluate_first or (0, ())
        first = set(first)

        def content(cid: int) -> RecordDict:
            own = {CLIENT_KEY: cid, HEAD_ROUND_KEY: self.head_round.get(cid, 0)}
            if cid in first:
                own[EVALUATE_ROUND_KEY] = first_round
            return RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({**config, **own})})

        def type_of(cid: int) -> str:
            return kind if isinstance(kind, str) else kind[cid]

        def node(index: int, cid: int) -> int:
            if self.shared_nodes:
                return self.shared_nodes[index % len(self.shared_nodes)]
            return self.node_of_client[cid]

        return {
            cid: Message(content(cid), message_type=type_of(cid), dst_node_id=node(index, cid))
            for index, cid in enumerate(clients)
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

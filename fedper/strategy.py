"""The server strategy: Flower's FedAvg applied to whatever part of the model is shared."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedper.results import failure_reason
from fedper.spec import HEAD_ROUND_KEY


class FedPerStrategy(FedAvg):
    """FedAvg's example-weighted averaging over the arrays the clients send back.

    The arrays are whatever the algorithm shares: the base for FedPer (heads never leave a
    client), the whole model for FedAvg, nothing for local training. Client sampling is
    drawn from the run's seed per round (Flower's default sampler uses the global `random`),
    and messages are addressed by client id, so a rerun samples the same clients.
    """

    def __init__(self, node_of_client: dict[int, int], clients_per_round: int, seed: int) -> None:
        num_clients = len(node_of_client)
        super().__init__(
            fraction_train=clients_per_round / num_clients,
            min_train_nodes=clients_per_round,
            min_evaluate_nodes=num_clients,
            min_available_nodes=num_clients,
        )
        self.node_of_client = dict(node_of_client)
        self.client_of_node = {node: cid for cid, node in self.node_of_client.items()}
        self.clients_per_round = clients_per_round
        self.seed = seed
        # cid -> the last round whose training by that client counted: its head is from then
        self.head_round: dict[int, int] = {}

    def count_training(self, round_num: int, trained: Iterable[int]) -> None:
        """The clients whose training succeeded (a round's `trained_clients`) saved their head
        in `round_num`; from now on their messages say so, and a client whose store lacks that
        head stops the run."""
        for cid in trained:
            self.head_round[int(cid)] = round_num

    def restore_head_rounds(self, rounds: Iterable[dict]) -> None:
        """`head_round` after the committed rounds of a resumed run."""
        for entry in rounds:
            self.count_training(int(entry["round"]), entry.get("trained_clients", ()))

    def sample_clients(self, server_round: int) -> list[int]:
        """The clients that train in a round: a pure function of seed and round."""
        clients = sorted(self.node_of_client)
        if self.clients_per_round >= len(clients):
            return clients
        rng = np.random.default_rng([self.seed, 2, server_round])
        return sorted(rng.choice(clients, size=self.clients_per_round, replace=False).tolist())

    def _messages(
        self, clients: Iterable[int], arrays: ArrayRecord, config: ConfigRecord, kind: str
    ) -> list[Message]:
        def content(cid: int) -> RecordDict:
            own = ConfigRecord({**config, HEAD_ROUND_KEY: self.head_round.get(cid, 0)})
            return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: own})

        return [
            Message(content=content(cid), message_type=kind, dst_node_id=self.node_of_client[cid])
            for cid in clients
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._messages(self.sample_clients(server_round), arrays, config, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Every client evaluates every round on its own test split."""
        return self._messages(sorted(self.node_of_client), arrays, config, MessageType.EVALUATE)

    def in_client_order(self, replies: Iterable[Message]) -> list[Message]:
        """Float sums depend on their order and replies arrive in whatever order the workers
        finish: everything the server adds up goes in client order, so reruns are identical."""
        return sorted(replies, key=lambda m: self.client_of_node.get(m.metadata.src_node_id, -1))

    def aggregate_shared(
        self, server_round: int, replies: Iterable[Message]
    ) -> dict[str, torch.Tensor] | None:
        """FedAvg over the successful replies, in client order, in the dtypes clients sent.

        Integer buffers (BatchNorm's `num_batches_tracked`) are counters, not weights: they
        take the largest count among the clients instead of a float average truncated on load.
        """
        ok = [m for m in self.in_client_order(replies) if not m.has_error()]
        if not ok:
            return None
        averaged, _ = super().aggregate_train(server_round, ok)
        if averaged is None:
            return None
        sent = [m.content[self.arrayrecord_key] for m in ok]
        out = {}
        for key, array in averaged.items():
            dtype = sent[0][key].numpy().dtype
            if np.issubdtype(dtype, np.integer):
                value = np.max(np.stack([record[key].numpy() for record in sent]), axis=0)
            else:
                value = array.numpy().astype(dtype, copy=False)
            out[key] = torch.from_numpy(np.array(value))  # a copy, 0-d stays 0-d
        return out

    def failures(self, replies: list[Message], phase: str) -> list[dict]:
        """Clients whose reply carries an error instead of results, in client order."""
        return [
            {
                "cid": self.client_of_node.get(msg.metadata.src_node_id, -1),
                "phase": phase,
                "reason": failure_reason(msg.error.reason),
            }
            for msg in self.in_client_order(replies)
            if msg.has_error()
        ]

"""The server strategy: Flower's FedAvg applied to whatever part of the model is shared."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


def record_bytes(record: ArrayRecord) -> int:
    """Payload size of the arrays in a message (what travels, headers aside)."""
    return sum(len(array.data) for array in record.values())


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
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [
            Message(content=content, message_type=kind, dst_node_id=self.node_of_client[cid])
            for cid in clients
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["server-round"] = server_round
        return self._messages(self.sample_clients(server_round), arrays, config, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Every client evaluates every round on its own test split."""
        config["server-round"] = server_round
        return self._messages(sorted(self.node_of_client), arrays, config, MessageType.EVALUATE)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg over the replies in client order: float sums depend on their order, and
        replies arrive in whatever order the workers finish, so a rerun would drift."""
        ordered = sorted(
            replies, key=lambda msg: self.client_of_node.get(msg.metadata.src_node_id, -1)
        )
        return super().aggregate_train(server_round, ordered)

    def failures(self, replies: list[Message], phase: str) -> list[dict]:
        """Clients whose reply carries an error instead of results."""
        return [
            {
                "cid": self.client_of_node.get(msg.metadata.src_node_id, -1),
                "phase": phase,
                "reason": failure_reason(msg.error.reason),
            }
            for msg in replies
            if msg.has_error()
        ]


def failure_reason(text: str) -> str:
    """The client's own exception message out of the Ray/Flower traceback around it."""
    marker = "Message: "
    if marker in text:
        text = text[text.rindex(marker) + len(marker) :]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else "unknown error").rstrip("'>").strip()


def client_metrics(replies: list[Message]) -> dict[int, dict]:
    """cid -> the metrics a client reported, from the replies that succeeded."""
    out = {}
    for msg in replies:
        if msg.has_error():
            continue
        metrics: MetricRecord = msg.content["metrics"]
        cid = int(metrics["cid"])
        out[cid] = {k: v for k, v in metrics.items() if k != "cid"}
    return out


def summarize_evaluation(per_client: dict[int, dict]) -> dict:
    """The round's numbers: unweighted mean over clients (what the paper plots) and more."""
    if not per_client:
        nan = float("nan")
        return {
            k: nan
            for k in (
                "accuracy",
                "accuracy_weighted",
                "accuracy_std",
                "accuracy_min",
                "loss",
                "loss_weighted",
            )
        }
    acc = np.array([m["accuracy"] for m in per_client.values()])
    loss = np.array([m["loss"] for m in per_client.values()])
    counts = np.array([m["num-examples"] for m in per_client.values()], dtype=float)
    return {
        "accuracy": float(acc.mean()),
        "accuracy_weighted": float((acc * counts).sum() / counts.sum()),
        "accuracy_std": float(acc.std()),
        "accuracy_min": float(acc.min()),
        "loss": float(loss.mean()),
        "loss_weighted": float((loss * counts).sum() / counts.sum()),
    }

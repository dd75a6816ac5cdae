"""The server strategy: Flower's FedAvg applied to whatever part of the model is shared."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedper.errors import FedPerError
from fedper.spec import HEAD_ROUND_KEY, RESTARTED_METRIC


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


def failure_reason(text: str) -> str:
    """The client's own exception message out of the Ray/Flower traceback around it."""
    marker = "Message: "
    if marker in text:
        text = text[text.rindex(marker) + len(marker) :]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else "unknown error").rstrip("'>").strip()


def client_metrics(replies: list[Message]) -> dict[int, dict]:
    """cid -> the metrics a client reported, from the replies that succeeded, by client id."""
    out = {}
    for msg in replies:
        if msg.has_error():
            continue
        metrics: MetricRecord = msg.content["metrics"]
        out[int(metrics["cid"])] = {k: v for k, v in metrics.items() if k != "cid"}
    return dict(sorted(out.items()))


SUMMARY_KEYS = ("accuracy", "accuracy_weighted", "accuracy_std", "accuracy_min", "loss",
                "loss_weighted", "val_accuracy", "val_loss")  # fmt: skip


def summarize_evaluation(per_client: dict[int, dict]) -> dict:
    """The round's numbers: unweighted mean over clients (what the paper plots) and more.

    Sums run over clients in client-id order (`per_client` is sorted), so the same
    per-client numbers always give the same summary, to the last digit.
    """
    nan = float("nan")
    if not per_client:
        return dict.fromkeys(SUMMARY_KEYS, nan)
    rows = [per_client[cid] for cid in sorted(per_client)]
    acc = np.array([m["accuracy"] for m in rows])
    loss = np.array([m["loss"] for m in rows])
    counts = np.array([m["num-examples"] for m in rows], dtype=float)
    val = [m for m in rows if m.get("num_val_examples", 0) > 0]
    return {
        "accuracy": float(acc.mean()),
        "accuracy_weighted": float((acc * counts).sum() / counts.sum()),
        "accuracy_std": float(acc.std()),
        "accuracy_min": float(acc.min()),
        "loss": float(loss.mean()),
        "loss_weighted": float((loss * counts).sum() / counts.sum()),
        "val_accuracy": float(np.mean([m["val_accuracy"] for m in val])) if val else nan,
        "val_loss": float(np.mean([m["val_loss"] for m in val])) if val else nan,
    }


def phase_seconds(per_client: dict[int, dict]) -> dict[str, float]:
    """Seconds the clients spent per phase (data, state, compute), summed."""
    totals: dict[str, float] = {}
    for metrics in per_client.values():
        for key, value in metrics.items():
            if key.startswith("seconds_"):
                phase = key.removeprefix("seconds_")
                totals[phase] = totals.get(phase, 0.0) + float(value)
    return totals


def round_entry(
    strategy: FedPerStrategy,
    round_num: int,
    train_replies: list[Message],
    eval_replies: list[Message],
    min_successful: int,
) -> dict:
    """One round of results.json from the replies; too few successes stop the run."""
    failures = strategy.failures(train_replies, "train")
    trained = client_metrics(train_replies)
    check_enough(round_num, "train", len(trained), min_successful, failures)
    failures += strategy.failures(eval_replies, "evaluate")
    evaluated = client_metrics(eval_replies)
    check_enough(round_num, "evaluate", len(evaluated), min_successful, failures)
    examples = sum(m["num-examples"] for m in trained.values())
    per_client = {}
    for cid, m in evaluated.items():
        per_client[str(cid)] = {
            "accuracy": m["accuracy"],
            "loss": m["loss"],
            "num_examples": int(m["num-examples"]),
            "val_accuracy": m.get("val_accuracy"),
            "val_loss": m.get("val_loss"),
            "num_val_examples": int(m.get("num_val_examples", 0)),
            **({"train_loss": trained[cid]["train_loss"]} if cid in trained else {}),
        }
    return {
        "round": round_num,
        **summarize_evaluation(evaluated),
        "train_loss": sum(m["train_loss"] * m["num-examples"] for m in trained.values())
        / max(examples, 1),
        "bytes_up": sum(
            record_bytes(r.content["arrays"])
            for r in strategy.in_client_order(train_replies)
            if not r.has_error()
        ),
        "clients_expected": len(eval_replies),
        "clients_ok": len(evaluated),
        "clients_failed": len(failures),
        "partial": bool(failures),
        "trained_clients": sorted(trained),
        **restarted_heads(trained, evaluated),
        "per_client": per_client,
        "failures": failures,
        "timing": {
            "train_clients": phase_seconds(trained),
            "evaluate_clients": phase_seconds(evaluated),
        },
    }


def restarted_heads(trained: dict[int, dict], evaluated: dict[int, dict]) -> dict:
    """`restarted_heads`: clients that started over from their initial head this round because
    theirs was lost (`restart_lost_heads`); absent when there are none."""
    phases = (trained, evaluated)
    restarted = sorted({cid for p in phases for cid, m in p.items() if m.get(RESTARTED_METRIC)})
    return {"restarted_heads": restarted} if restarted else {}


def check_enough(
    round_num: int, phase: str, succeeded: int, min_successful: int, failures: list[dict]
) -> None:
    """A round goes on with the clients that succeeded, down to `min_successful_clients`."""
    if succeeded < min_successful:
        detail = "; ".join(f"client {f['cid']}: {f['reason']}" for f in failures[:3])
        raise FedPerError(
            f"round {round_num} {phase}: only {succeeded} client(s) succeeded, fewer than "
            f"min_successful_clients={min_successful} ({detail})"
        )

"""A run's results: each round's entry from the clients' replies, and the files that show them.

results.json (with its checksum), results.csv and results.png are views of one dict (the run's
header and one entry per committed round), which the checkpoint also carries: `fedper.commit`
writes them, and rewrites any of them that a kill left behind or ahead of the checkpoint.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from fedper.errors import FedPerError
from fedper.rundir import RESULTS_JSON, checked_json, read_checked_json
from fedper.spec import RESTARTED_METRIC

if TYPE_CHECKING:  # Flower is imported where messages are made; plots read results without it
    from flwr.app import ArrayRecord, Message, MetricRecord

# per-round columns of results.csv, in order
CSV_COLUMNS = [
    "round", "accuracy", "accuracy_weighted", "accuracy_std", "accuracy_min", "loss",
    "loss_weighted", "val_accuracy", "val_loss", "train_loss", "seconds", "bytes_up",
    "bytes_down", "clients_expected", "clients_ok", "clients_failed", "partial",
]  # fmt: skip


def finite(value):
    """JSON has no NaN: what could not be measured (no validation split, no client) is null."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def partial_rounds(rounds: list[dict]) -> list[int]:
    """Rounds that went on with fewer clients than asked."""
    return [r["round"] for r in rounds if r.get("partial")]


def results_json(body: dict) -> str:
    return checked_json(body) + "\n"


def results_csv(rounds: list[dict]) -> str:
    return pd.DataFrame(rounds).reindex(columns=CSV_COLUMNS).to_csv(index=False)


PARTIAL_LABEL = "partial round (fewer clients)"


def results_png(body: dict) -> bytes:
    import matplotlib.pyplot as plt

    fig = results_figure(body)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def results_figure(body: dict):
    """Accuracy and loss per round; a round that went on with fewer clients is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.DataFrame(body["rounds"])
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    if not table.empty:
        table = table.astype({"accuracy": float, "accuracy_std": float, "loss": float})
        ax_acc.plot(table["round"], table["accuracy"], marker="o", ms=3, label="mean over clients")
        ax_acc.fill_between(
            table["round"],
            table["accuracy"] - table["accuracy_std"],
            table["accuracy"] + table["accuracy_std"],
            alpha=0.2,
            label="± std over clients",
        )
        ax_loss.plot(table["round"], table["loss"], marker="o", ms=3, label="test loss")
        train_loss = table["train_loss"].astype(float)
        if train_loss.notna().any():
            ax_loss.plot(table["round"], train_loss, marker="o", ms=3, label="train loss")
        partial = table[[r["round"] in partial_rounds(body["rounds"]) for r in body["rounds"]]]
        if len(partial):
            ax_acc.plot(partial["round"], partial["accuracy"], "x", color="red", ms=8, mew=2,
                        label=PARTIAL_LABEL)  # fmt: skip
        ax_acc.legend(loc="lower right")
        ax_loss.legend(loc="upper right")
    ax_acc.set(xlabel="round", ylabel="personalized test accuracy", ylim=(0, 1))
    ax_loss.set(xlabel="round", ylabel="cross-entropy per example")
    cfg = body.get("config", {})
    fig.suptitle(
        f"{cfg.get('algorithm')} · {cfg.get('model_name')} · {cfg.get('dataset', {}).get('name')}"
    )
    fig.tight_layout()
    return fig


def load_results(run_dir: str | Path) -> dict:
    """results.json of a run, checked against its checksum."""
    return read_checked_json(
        Path(run_dir) / RESULTS_JSON,
        "start the run again with the same command: fedper rebuilds it from checkpoint.pt",
    )


# ---- one round's entry, from the clients' replies ----------------------------------------


def record_bytes(record: ArrayRecord) -> int:
    """Payload size of the arrays in a message (what travels, headers aside)."""
    return sum(len(array.data) for array in record.values())


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


class ClientOrder(Protocol):
    """What a round's entry needs of the strategy: replies in client order, failures named."""

    def in_client_order(self, replies: Iterable[Message]) -> list[Message]: ...

    def failures(self, replies: list[Message], phase: str) -> list[dict]: ...


def round_entry(
    strategy: ClientOrder,
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

"""A run's results: each round's entry from the clients' replies, and the files that show them.

results.json (with its checksum), results.csv and results.png are views of one dict (the run's
header and one entry per committed round), which the checkpoint also carries: `fedper.commit`
writes them, and rewrites any of them that a kill left behind or ahead of the checkpoint.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fedper.errors import FedPerError, resume_command
from fedper.rundir import PARTITION_JSON, RESULTS_JSON, checked_json, read_checked_json
from fedper.spec import RESTARTED_METRIC

if TYPE_CHECKING:  # Flower is imported where messages are made; plots read results without it
    from flwr.app import ArrayRecord, Message
    from omegaconf import DictConfig

    from fedper.replies import Phase

# per-round columns of results.csv, in order
CSV_COLUMNS = [
    "round", "evaluated", "accuracy", "accuracy_weighted", "accuracy_std", "accuracy_min", "loss",
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
        # a round without evaluation (evaluate_every) has no accuracy: the lines skip it
        evaluated = table if "evaluated" not in table else table[table["evaluated"] != False]  # noqa: E712
        ax_acc.plot(evaluated["round"], evaluated["accuracy"], marker="o", ms=3,
                    label="mean over clients")  # fmt: skip
        ax_acc.fill_between(
            evaluated["round"],
            evaluated["accuracy"] - evaluated["accuracy_std"],
            evaluated["accuracy"] + evaluated["accuracy_std"],
            alpha=0.2,
            label="± std over clients",
        )
        ax_loss.plot(evaluated["round"], evaluated["loss"], marker="o", ms=3, label="test loss")
        train_loss = table["train_loss"].astype(float)
        if train_loss.notna().any():
            ax_loss.plot(table["round"], train_loss, marker="o", ms=3, label="train loss")
        partial = evaluated[evaluated["round"].isin(partial_rounds(body["rounds"]))]
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
    """results.json of a run, checked against its checksum, with the run's partition."""
    way_out = "start the run again with the same command: fedper rebuilds it from checkpoint.pt"
    return with_partition(read_checked_json(Path(run_dir) / RESULTS_JSON, way_out), run_dir)


def with_partition(results: dict, run_dir: str | Path) -> dict:
    """A run's results with its partition under "partition", as results.json held it before
    the list moved to partition.json: it names every client, so it is written once per run
    instead of with every round."""
    path = Path(run_dir) / PARTITION_JSON
    if "partition" in results or not path.is_file():
        return results
    way_out = "start the run again with the same command: fedper writes it again"
    return {**results, "partition": read_checked_json(path, way_out)["partition"]}


# ---- one round's entry, from the clients' checked replies ---------------------------------


def record_bytes(record: ArrayRecord) -> int:
    """Payload size of the arrays in a message (what travels, headers aside)."""
    return sum(len(array.data) for array in record.values())


SUMMARY_KEYS = ("accuracy", "accuracy_weighted", "accuracy_std", "accuracy_min", "loss",
                "loss_weighted", "val_accuracy", "val_loss")  # fmt: skip


def summarize_evaluation(per_client: dict[int, dict]) -> dict:
    """The round's numbers: unweighted mean over clients (what the paper plots) and more.

    Sums run over clients in client-id order (`per_client` is sorted), so the same
    per-client numbers always give the same summary, to the last digit. Without evaluated
    clients every number is NaN (null in results.json).
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


def path_seconds(trips: list[tuple[float, Message, float]], push: float) -> dict[str, float]:
    """A phase's messages on their way, from (sent at, reply, received at) wall times, averaged
    over the replies: `push` (the server handing them to the engine), `to_handler` (from then
    to the ClientApp's handler: polling, delivery and, in a Deployment Engine, a fresh process),
    `handler` (inside it: data, state, compute) and `back` (the reply's way to the server).
    Wall clocks of one machine; on several machines their offsets are in it."""
    rows = []
    for sent_at, reply, received_at in trips:
        if reply.has_error():
            continue
        # every metric record's timers: a training reply may carry a folded evaluation too
        handler = sum(sum(phase_seconds({0: dict(record)}).values())
                      for record in reply.content.metric_records.values())  # fmt: skip
        handler_start = reply.metadata.created_at - handler
        rows.append(
            (handler_start - sent_at - push, handler, received_at - reply.metadata.created_at)
        )
    if not rows:
        return {"push": push}
    columns = np.array(rows).mean(axis=0)
    return {"push": push, "to_handler": float(columns[0]), "handler": float(columns[1]),
            "back": float(columns[2])}  # fmt: skip


def client_entry(trained: dict | None, evaluated: dict | None) -> dict:
    """What results.json keeps of one client in a round: its evaluation, its training loss."""
    entry = {}
    if evaluated is not None:
        entry = {
            "accuracy": evaluated["accuracy"],
            "loss": evaluated["loss"],
            "num_examples": int(evaluated["num-examples"]),
            "val_accuracy": evaluated.get("val_accuracy"),
            "val_loss": evaluated.get("val_loss"),
            "num_val_examples": int(evaluated.get("num_val_examples", 0)),
        }
    if trained is not None:
        entry["train_loss"] = trained["train_loss"]
    return entry


def round_entry(round_num: int, train: Phase, evaluation: Phase | None) -> dict:
    """One round of results.json from its checked phases (`evaluation` None: not evaluated).

    Per client it holds only the clients that took part in the round (trained or evaluated),
    so its size follows the sampled clients, not `num_clients`.
    """
    trained = train.metrics
    evaluated = evaluation.metrics if evaluation is not None else {}
    failures = train.failures + (evaluation.failures if evaluation is not None else [])
    last = evaluation if evaluation is not None else train  # the phase whose clients are counted
    examples = sum(m["num-examples"] for m in trained.values())
    return {
        "round": round_num,
        "evaluated": evaluation is not None,
        **summarize_evaluation(evaluated),
        "train_loss": sum(m["train_loss"] * m["num-examples"] for m in trained.values())
        / max(examples, 1),
        "bytes_up": train.bytes_up,
        "clients_expected": len(last.asked),
        "clients_ok": len(last.metrics),
        "clients_failed": len(failures),
        "partial": bool(failures),
        "trained_clients": sorted(trained),
        **restarted_heads(trained, evaluated),
        "per_client": {
            str(cid): client_entry(trained.get(cid), evaluated.get(cid))
            for cid in sorted(set(trained) | set(evaluated))
        },
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


def check_enough(round_num: int, phase: Phase, min_successful: int, run_dir: str | Path) -> None:
    """A round goes on with the clients that succeeded, down to `min_successful_clients` (or
    all of them, when fewer were asked); below that the run stops, naming who failed."""
    needed = min(min_successful, len(phase.asked))
    if len(phase.metrics) < needed:
        detail = "; ".join(f"partition-id {f['cid']}: {f['reason']}" for f in phase.failures[:3])
        raise FedPerError(
            f"round {round_num} {phase.name}: only {len(phase.metrics)} of {len(phase.asked)} "
            f"client(s) succeeded, fewer than min_successful_clients={min_successful} ({detail}); "
            f"continue with: {resume_command(run_dir)}"
        )


# ---- the first and the last line of a run on the console ------------------------------------


def start_line(cfg: DictConfig, run_dir: Path, done: int, engine: str) -> str:
    """What runs, where it runs and where it writes (and the round it continues after)."""
    return (
        f"{cfg.algorithm} · {cfg.model_name} · {cfg.dataset.name}: {cfg.num_clients} clients, "
        f"{cfg.num_rounds} rounds, engine {engine} -> {run_dir}"
        + (f" (continuing after round {done})" if done else "")
    )


def final_line(results: dict, run_dir: Path) -> str:
    """The last line: where the run is, its final accuracy, and how many rounds were partial."""
    rounds = results["rounds"]
    partial = partial_rounds(rounds)
    accuracy = rounds[-1]["accuracy"] if rounds else None
    return (
        f"finished {len(rounds)} round(s) -> {run_dir}: final accuracy "
        f"{'n/a' if accuracy is None else f'{accuracy:.3f}'}; partial rounds (fewer clients "
        f"than asked): {len(partial)}"
        + (f" (round {', '.join(map(str, partial))})" if partial else "")
    )

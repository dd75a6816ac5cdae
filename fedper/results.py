"""A run's results as files: results.json (with its checksum), results.csv and results.png.

All three are views of one dict (the run's header and one entry per committed round), which
the checkpoint also carries: `fedper.commit` writes them, and rewrites any of them that a
kill left behind or ahead of the checkpoint.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from fedper.rundir import RESULTS_JSON, checked_json, read_checked_json

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

"""A run's results: results.json, results.csv and a PNG, rewritten atomically after every round."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from fedper.state import write_atomic, write_text_atomic

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
RESULTS_PNG = "results.png"
# per-round columns of results.csv, in order
CSV_COLUMNS = [
    "round", "accuracy", "accuracy_weighted", "accuracy_std", "accuracy_min", "loss",
    "loss_weighted", "val_accuracy", "val_loss", "train_loss", "seconds", "bytes_up",
    "bytes_down", "clients_expected", "clients_ok", "clients_failed", "partial",
]  # fmt: skip


def _finite(value):
    """JSON has no NaN: what could not be measured (no validation split, no client) is null."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunResults:
    """The header (config, partition) and one entry per completed round."""

    def __init__(self, run_dir: str | Path, header: dict, rounds: list[dict] | None = None):
        self.run_dir = Path(run_dir)
        self.header = header
        self.rounds: list[dict] = rounds or []

    @classmethod
    def resume(cls, run_dir: str | Path, header: dict, completed_round: int) -> RunResults:
        """Keep the rounds already recorded up to the checkpointed one."""
        path = Path(run_dir) / RESULTS_JSON
        rounds = []
        if path.is_file():
            rounds = [
                r for r in json.loads(path.read_text())["rounds"] if r["round"] <= completed_round
            ]
        return cls(run_dir, header, rounds)

    def add(self, entry: dict) -> None:
        self.rounds.append(_finite(entry))
        self.write()

    def as_dict(self) -> dict:
        return {**self.header, "rounds": self.rounds}

    def write(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(
            self.run_dir / RESULTS_JSON, json.dumps(self.as_dict(), indent=1, allow_nan=False)
        )
        table = pd.DataFrame(self.rounds).reindex(columns=CSV_COLUMNS)
        write_text_atomic(self.run_dir / RESULTS_CSV, table.to_csv(index=False))
        self.plot()

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        table = pd.DataFrame(self.rounds)
        if table.empty:
            return
        fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
        ax_acc.plot(table["round"], table["accuracy"], marker="o", ms=3, label="mean over clients")
        ax_acc.fill_between(
            table["round"],
            table["accuracy"] - table["accuracy_std"],
            table["accuracy"] + table["accuracy_std"],
            alpha=0.2,
            label="± std over clients",
        )
        ax_acc.set(xlabel="round", ylabel="personalized test accuracy", ylim=(0, 1))
        ax_acc.legend(loc="lower right")
        ax_loss.plot(table["round"], table["loss"], marker="o", ms=3, label="test loss")
        if table["train_loss"].notna().any():
            ax_loss.plot(table["round"], table["train_loss"], marker="o", ms=3, label="train loss")
        ax_loss.set(xlabel="round", ylabel="cross-entropy per example")
        ax_loss.legend(loc="upper right")
        cfg = self.header.get("config", {})
        fig.suptitle(
            f"{cfg.get('algorithm')} · {cfg.get('model_name')} · {cfg.get('dataset', {}).get('name')}"
        )
        fig.tight_layout()
        write_atomic(
            self.run_dir / RESULTS_PNG, lambda handle: fig.savefig(handle, format="png", dpi=110)
        )
        plt.close(fig)


def load_results(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / RESULTS_JSON).read_text())

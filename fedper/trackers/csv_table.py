"""`logger=csv`: metrics.csv, one row per round with each client's accuracy as a column, and
hparams.yaml with the settings; needs no package beyond pandas."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from fedper.atomic import write_text_atomic
from fedper.trackers import CLIENT_ACCURACY, TrackedRun, tracker_dir

METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.yaml"


class CsvTracker:
    def __init__(self, folder: Path, rows: list[dict]) -> None:
        self.folder = folder
        self.rows = rows

    def log_round(self, round_num: int, metrics: dict, clients: dict) -> None:
        row = {"round": round_num, **metrics}
        row |= {f"{CLIENT_ACCURACY}_{cid}": value for cid, value in clients.items()}
        self.rows = [r for r in self.rows if r["round"] < round_num] + [row]
        table = pd.DataFrame(self.rows)
        write_text_atomic(self.folder / METRICS_FILE, table.to_csv(index=False))

    def state(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def open_tracker(run: TrackedRun, options: dict, first_round: int) -> CsvTracker:
    """The table so far (rounds before `first_round`), continued."""
    folder = tracker_dir(run, options, "csv")
    folder.mkdir(parents=True, exist_ok=True)
    hparams = {"run_dir": str(run.run_dir), "run_id": run.run_id, **run.settings}
    write_text_atomic(folder / HPARAMS_FILE, OmegaConf.to_yaml(OmegaConf.create(hparams)))
    path = folder / METRICS_FILE
    rows = pd.read_csv(path).to_dict("records") if path.is_file() else []
    return CsvTracker(folder, [r for r in rows if r["round"] < first_round])

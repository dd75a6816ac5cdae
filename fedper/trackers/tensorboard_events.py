"""`logger=tensorboard`: event files with a scalar per metric and round, the clients'
accuracies as a histogram, and the settings as hyperparameters (TensorBoard's HPARAMS tab)."""

from __future__ import annotations

import numpy as np
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from fedper.trackers import CLIENT_ACCURACY, EVALUATION_METRICS, TrackedRun, tracker_dir


class TensorBoardTracker:
    def __init__(self, writer: SummaryWriter) -> None:
        self.writer = writer

    def log_round(self, round_num: int, metrics: dict, clients: dict) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, round_num)
        if clients:
            self.writer.add_histogram(CLIENT_ACCURACY, np.array(list(clients.values())), round_num)
        self.writer.flush()

    def state(self) -> dict:
        return {}

    def close(self) -> None:
        self.writer.close()


def hparam_value(value):
    """What TensorBoard's hyperparameters take: numbers, strings and booleans."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value)


def open_tracker(run: TrackedRun, options: dict, first_round: int) -> TensorBoardTracker:
    """A writer on the run's event folder; on a resume, events of rounds from `first_round`
    on (written before a kill, not yet noted as logged) are dropped and written again."""
    folder = tracker_dir(run, options, "tensorboard")
    writer = SummaryWriter(str(folder), purge_step=first_round if first_round > 1 else None)
    if first_round == 1:
        settings = {key: hparam_value(value) for key, value in run.settings.items()}
        metrics = {EVALUATION_METRICS["accuracy"]: 0.0, EVALUATION_METRICS["val_accuracy"]: 0.0}
        for summary in hparams(settings, metrics):
            writer.file_writer.add_summary(summary)
        writer.add_text("run", f"run directory: {run.run_dir}  \nrun id: {run.run_id}")
    return TensorBoardTracker(writer)

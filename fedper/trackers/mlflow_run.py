"""`logger=mlflow`: one MLflow run per fedper run, named after its run directory, with the
settings as params and a metric per round; a resumed fedper run continues the same MLflow run."""

from __future__ import annotations

import logging
import time

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from fedper.trackers import CLIENT_ACCURACY, TrackedRun

BATCH = 100  # params per request (MLflow's limit)
PARAM_CHARS = 6000  # MLflow's longest param value


class MlflowTracker:
    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_round(self, round_num: int, metrics: dict, clients: dict) -> None:
        now = int(time.time() * 1000)
        values = metrics | {f"{CLIENT_ACCURACY}_{cid}": v for cid, v in clients.items()}
        batch = [Metric(name, value, now, round_num) for name, value in values.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def state(self) -> dict:
        return {"run_id": self.run_id, "tracking_uri": self.client.tracking_uri}

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_tracker(run: TrackedRun, options: dict, first_round: int) -> MlflowTracker:
    """The MLflow run of an earlier start, or a new one with the run's settings as params."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its set-up notes are not the run's
    uri = options.get("tracking_uri") or run.state.get("tracking_uri")
    client = MlflowClient(tracking_uri=uri)
    if run.state.get("run_id"):
        client.update_run(run.state["run_id"], status="RUNNING")
        return MlflowTracker(client, run.state["run_id"])
    name = options.get("experiment_name") or "fedper"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    tags = {"run_dir": str(run.run_dir), "fedper.run_id": run.run_id}
    created = client.create_run(experiment_id, run_name=run.name, tags=tags)
    params = [Param(key, str(value)[:PARAM_CHARS]) for key, value in run.settings.items()]
    for start in range(0, len(params), BATCH):
        client.log_batch(created.info.run_id, params=params[start : start + BATCH])
    client.log_batch(created.info.run_id, tags=[RunTag("mlflow.note.content", run.name)])
    return MlflowTracker(client, created.info.run_id)

"""`logger=wandb`: one Weights & Biases run per fedper run, named after its run directory, with
the settings as its config and the clients' accuracies as a histogram per round; a resumed
fedper run continues the same W&B run (its id is kept in state.json)."""

from __future__ import annotations

import numpy as np
import wandb

from fedper.trackers import CLIENT_ACCURACY, TrackedRun, tracker_dir

BINS = 20  # of the clients' accuracies, over 0-1


class WandbTracker:
    def __init__(self, run) -> None:
        self.run = run

    def log_round(self, round_num: int, metrics: dict, clients: dict) -> None:
        values = dict(metrics)
        if clients:
            counts = np.histogram(list(clients.values()), bins=BINS, range=(0.0, 1.0))
            values[CLIENT_ACCURACY] = wandb.Histogram(np_histogram=counts)
        self.run.log(values, step=round_num)

    def state(self) -> dict:
        return {"id": self.run.id}

    def close(self) -> None:
        self.run.finish()


def open_tracker(run: TrackedRun, options: dict, first_round: int) -> WandbTracker:
    folder = tracker_dir(run, options, "wandb")
    folder.mkdir(parents=True, exist_ok=True)
    started = wandb.init(
        project=options.get("project") or "fedper",
        entity=options.get("entity"),
        mode=options.get("mode"),
        dir=str(folder),
        id=run.state.get("id") or run.run_id,  # unique, and the same at every resume
        resume="allow",
        name=run.name,
        notes=f"run directory: {run.run_dir}",
        config={"run_dir": str(run.run_dir), "run_id": run.run_id, **run.settings},
        settings=wandb.Settings(console="off", silent=True),
        reinit="create_new",
    )
    return WandbTracker(started)

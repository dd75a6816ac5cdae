"""Experiment trackers (`logger=csv|tensorboard|mlflow|wandb`, one or several): each committed
round's metrics, the clients' accuracies and the run's settings, in the tools researchers
compare runs in.

The ServerApp calls `RunTrackers.open` before its first round and `log_round` after each
commit. A resumed run continues the same tracked run: what each tracker needs to find it again
(MLflow's run id, W&B's id) and the last round logged are kept in <run dir>/trackers/state.json,
and rounds committed but not yet logged (a kill between the two) are logged at the next start.
Trackers are optional extras imported only here, never on a client's path.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedper.atomic import write_text_atomic
from fedper.errors import ConfigError
from fedper.settings import settings_only

TRACKERS_DIR = "trackers"  # in the run directory
STATE_FILE = "state.json"
# logger name -> (module in this package, the package it needs, the pip extra that brings it)
TRACKERS = {
    "csv": ("csv_table", None, None),
    "tensorboard": ("tensorboard_events", "tensorboard", "tensorboard"),
    "mlflow": ("mlflow_run", "mlflow", "mlflow"),
    "wandb": ("wandb_run", "wandb", "wandb"),
}
# results.json key -> metric name in every tracker; the first group only for evaluated rounds
EVALUATION_METRICS = {
    "accuracy": "test/accuracy",
    "accuracy_min": "test/accuracy_min",
    "accuracy_weighted": "test/accuracy_weighted",
    "accuracy_std": "test/accuracy_std",
    "loss": "test/loss",
    "val_accuracy": "val/accuracy",
    "val_loss": "val/loss",
}
ROUND_METRICS = {
    "train_loss": "train/loss",
    "seconds": "round/seconds",
    "clients_ok": "round/clients_ok",
    "bytes_up": "round/bytes_up",
    "bytes_down": "round/bytes_down",
}
CLIENT_ACCURACY = "clients/accuracy"  # a histogram, or one metric per client (`_<id>`)


@dataclass(frozen=True)
class TrackedRun:
    """What every tracker is told about the run it tracks."""

    run_dir: Path  # the fedper run directory
    run_id: str
    name: str  # the run directory as the user knows it: the run's name in every tracker
    settings: dict  # the run's settings, flattened (`model.num_head_layers`): hyperparameters
    state: dict  # this tracker's entry in state.json from an earlier start ({} at the first)


def chosen(cfg: DictConfig) -> dict[str, dict]:
    """The configured trackers and their options (`logger=none`: none)."""
    section = cfg.get("logger") or {}
    return {name: dict(options or {}) for name, options in section.items()}


def check_trackers(cfg: DictConfig) -> None:
    """A chosen tracker whose package is missing: one line naming the extra that brings it."""
    for name in chosen(cfg):
        if name not in TRACKERS:
            raise ConfigError(f"logger.{name} is unknown: use one of {', '.join(TRACKERS)}")
        _, package, extra = TRACKERS[name]
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(missing_package(name, package, extra))


def missing_package(name: str, package: str, extra: str) -> str:
    return f"logger={name} needs the {package} package: pip install 'fedper[{extra}]'"


def flat(tree: dict, prefix: str = "") -> dict:
    """{"model": {"num_head_layers": 2}} -> {"model.num_head_layers": 2}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def is_value(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def round_metrics(entry: dict) -> tuple[dict[str, float], dict[str, float]]:
    """A round's metrics and each client's accuracy; a round recorded with `"evaluated": false`
    (sampled evaluation) has no evaluation metrics, and null ones are never logged."""
    evaluated = entry.get("evaluated", True) is not False
    names = {**(EVALUATION_METRICS if evaluated else {}), **ROUND_METRICS}
    metrics = {name: float(entry[key]) for key, name in names.items() if is_value(entry.get(key))}
    per_client = (entry.get("per_client") or {}) if evaluated else {}
    clients = {
        str(cid): float(result["accuracy"])
        for cid, result in sorted(per_client.items(), key=lambda item: int(item[0]))
        if isinstance(result, dict) and is_value(result.get("accuracy"))
    }
    return metrics, clients


def run_name(run_dir: Path) -> str:
    """The run directory relative to the launch folder when it is inside it, else absolute."""
    try:
        return str(run_dir.relative_to(Path.cwd()))
    except ValueError:
        return str(run_dir)


class RunTrackers:
    """The configured trackers of one run, from its first logged round to its last."""

    def __init__(self, run_dir: Path, trackers: dict, state: dict) -> None:
        self.folder = run_dir / TRACKERS_DIR
        self.trackers = trackers
        self.state = state

    @classmethod
    def open(cls, spec, committed: list[dict]) -> RunTrackers:
        """The trackers `spec` configures, each continuing its run of an earlier start; rounds
        in `committed` that they have not logged yet are logged now."""
        cfg = spec.cfg
        run_dir = Path(spec.run_dir)
        state_path = run_dir / TRACKERS_DIR / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        settings = flat(settings_only(OmegaConf.to_container(cfg, resolve=True)))
        trackers = {}
        for name, options in chosen(cfg).items():
            module_name, package, extra = TRACKERS[name]
            try:
                module = importlib.import_module(f"fedper.trackers.{module_name}")
                run = TrackedRun(run_dir, spec.run_id, run_name(run_dir), settings, state.get(name, {}))  # fmt: skip
                trackers[name] = module.open_tracker(run, options, first_round(state))
            except ImportError as error:
                if package is None or error.name != package.split(".")[0]:
                    raise
                raise ConfigError(missing_package(name, package, extra)) from None
        opened = cls(run_dir, trackers, state)
        for entry in committed:
            if entry["round"] >= first_round(state):
                opened.log_round(entry)
        opened.save()
        return opened

    def log_round(self, entry: dict) -> None:
        """Log one committed round to every tracker, then note it as logged."""
        if not self.trackers:
            return
        metrics, clients = round_metrics(entry)
        for tracker in self.trackers.values():
            tracker.log_round(entry["round"], metrics, clients)
        self.state["logged_round"] = entry["round"]
        self.save()

    def save(self) -> None:
        if not self.trackers:
            return
        for name, tracker in self.trackers.items():
            self.state[name] = tracker.state()
        self.folder.mkdir(exist_ok=True)
        write_text_atomic(self.folder / STATE_FILE, json.dumps(self.state, indent=1))

    def close(self) -> None:
        for tracker in self.trackers.values():
            tracker.close()


def first_round(state: dict) -> int:
    """The first round the trackers have not logged."""
    return int(state.get("logged_round", 0)) + 1


def tracker_dir(run: TrackedRun, options: dict, name: str) -> Path:
    """Where a tracker writes: `save_dir/<run name>` if set, else <run dir>/trackers/<name>."""
    save_dir = options.get("save_dir")
    if save_dir:
        return Path(os.path.expanduser(save_dir)) / run.name.strip("/")
    return run.run_dir / TRACKERS_DIR / name

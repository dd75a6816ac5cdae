"""Reading results.json files into one long table: a row per run and round."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fedper.config import is_placement
from fedper.errors import FedPerError
from fedper.results import RESULTS_JSON

log = logging.getLogger("fedper.plot")

# Runs that differ only in where they ran (fedper.config.is_placement), their seed and their
# folders are repeats of one setting.
IGNORED_KEYS = frozenset({"seed", "dataset.seed", "data_dir", "state_dir", "dataset.download"})
# Columns of the long runs table that are bookkeeping, not part of a setting.
RUN_COLUMNS = ("run", "setting", "seed", "round", "accuracy", "val_accuracy", "partial")


class PlotError(FedPerError):
    """No results to plot where the user pointed, or a results file that cannot be read."""


def find_results(folders: Iterable[str | Path]) -> list[Path]:
    """Every results.json below the given folders (a results.json path counts as itself)."""
    found: dict[Path, None] = {}  # ordered and free of the repeats overlapping folders give
    for folder in map(Path, folders):
        if not folder.exists():
            raise PlotError(f"{folder} does not exist: give a run or multirun folder")
        if folder.is_file():
            if folder.name != RESULTS_JSON:
                raise PlotError(f"{folder} is a file: give a folder or a {RESULTS_JSON}")
            paths = [folder]
        else:
            paths = sorted(folder.rglob(RESULTS_JSON))
        if not paths:
            raise PlotError(f"no {RESULTS_JSON} below {folder}: give a run or multirun folder")
        found.update((path.resolve(), None) for path in paths)
    return list(found)


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested config to dotted keys; lists become JSON text so that values can be compared."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def setting_from_config(config: dict) -> dict[str, object]:
    """The part of a run's config that makes it a setting: all of it but seeds, paths, devices."""
    return {
        key: value
        for key, value in flatten(config).items()
        if key not in IGNORED_KEYS and not is_placement(key)
    }


def read_run(path: Path) -> dict:
    """A results.json as a dict, or a PlotError naming the file."""
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PlotError(
            f"{path} is not valid JSON ({error.msg}, line {error.lineno}): remove or rerun it"
        ) from None
    if not isinstance(run, dict) or "config" not in run or "rounds" not in run:
        raise PlotError(f"{path} has no 'config' and 'rounds': it is not a fedper results file")
    return run


def _number(value: object) -> float:
    """A recorded metric as a float; JSON null (nothing measured, or no validation) is NaN."""
    return math.nan if value is None else float(value)


def is_partial(entry: dict) -> bool:
    """A round that went on with fewer clients than asked (`partial`, or older `clients_failed`)."""
    if "partial" in entry:
        return bool(entry["partial"])
    return (entry.get("clients_failed") or 0) > 0


METRICS = {"test": "accuracy", "val": "val_accuracy"}


def load_runs(folders: Iterable[str | Path], metric: str = "test") -> pd.DataFrame:
    """A row per run and round: run, setting, seed, round, accuracy, val_accuracy, partial, keys.

    With `metric="val"`, `accuracy` holds the validation accuracy, so every table and figure
    is computed on validation data (what settings are chosen on); test data stays unread.
    """
    if metric not in METRICS:
        raise PlotError(f"metric={metric} is unknown: use {' or '.join(METRICS)}")
    rows = []
    for path in find_results(folders):
        run = read_run(path)
        config = run["config"]
        setting = setting_from_config(config)
        rounds = [r for r in run["rounds"] if r.get("round") is not None]
        if not rounds:
            log.warning("%s has no finished round yet: left out", path)
            continue
        done, planned = max(r["round"] for r in rounds), config.get("num_rounds")
        if planned is not None and done < planned:
            log.warning("%s: %d of %d rounds; its final accuracy is round %d's", path, done, planned, done)  # fmt: skip
        restarted = [r["round"] for r in rounds if r.get("restarted_heads")]
        if restarted:
            log.warning("%s: clients started over from their initial head in round(s) %s (restart_lost_heads)", path, restarted)  # fmt: skip
        key = json.dumps(setting, sort_keys=True, default=str)
        for entry in rounds:
            rows.append(
                {
                    "run": str(path.parent),
                    "setting": key,
                    "seed": config.get("seed"),
                    "round": int(entry["round"]),
                    "accuracy": _number(entry.get(METRICS[metric])),
                    "val_accuracy": _number(entry.get("val_accuracy")),
                    "partial": is_partial(entry),
                    **setting,
                }
            )
    if not rows:
        raise PlotError("none of the results files has a finished round yet: nothing to plot")
    return pd.DataFrame(rows)

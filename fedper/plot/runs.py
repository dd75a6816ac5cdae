"""Reading runs into one long table, a row per run and evaluated round.

A run comes from a results.json in a run folder, or from a line of a packed sweep file
(`python -m fedper.plot pack`): both hold the same config and rounds.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from fedper.errors import FedPerError
from fedper.results import RESULTS_JSON, with_partition
from fedper.settings import is_setting, with_current_names

log = logging.getLogger("fedper.plot")

# Runs that differ only in their seeds and in keys that are not a setting (fedper.settings)
# are repeats of one setting.
SEED_KEYS = frozenset({"seed", "dataset.seed"})
# Columns of the long runs table that are bookkeeping, not part of a setting.
RUN_COLUMNS = (
    "run", "run_id", "setting", "seed", "round", "accuracy", "accuracy_weighted",
    "val_accuracy", "partial", "reused_from",
)  # fmt: skip
# A packed sweep: JSON Lines, one run per line, gzip-compressed when the name ends in .gz.
PACKED_SUFFIXES = (".jsonl.gz", ".jsonl")
PACKED_FORMAT = "fedper.run/1"
METRICS = {"test": "accuracy", "val": "val_accuracy"}
# per client: the accuracy key and the example count it was measured on, per metric
CLIENT_KEYS = {"test": ("accuracy", "num_examples"), "val": ("val_accuracy", "num_val_examples")}


class PlotError(FedPerError):
    """No results to plot where the user pointed, or a results file that cannot be read."""


def is_packed(path: Path) -> bool:
    return path.name.endswith(PACKED_SUFFIXES)


def find_results(folders: Iterable[str | Path]) -> list[Path]:
    """Every results.json below the given folders; a results.json or a packed file counts as itself."""
    found: dict[Path, None] = {}  # ordered and free of the repeats overlapping folders give
    for folder in map(Path, folders):
        if not folder.exists():
            raise PlotError(f"{folder} does not exist: give a run or multirun folder or a packed file")  # fmt: skip
        if folder.is_file():
            if folder.name != RESULTS_JSON and not is_packed(folder):
                raise PlotError(f"{folder} is a file: give a folder, a {RESULTS_JSON} or a packed *.jsonl.gz")  # fmt: skip
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


def is_machine_path(value: object) -> bool:
    """An absolute path of the machine that ran (`/...`, `~/...`, `C:\\...`): never a setting."""
    return isinstance(value, str) and bool(re.match(r"^(/|~|[A-Za-z]:[\\/])", value))


def setting_from_config(config: dict) -> dict[str, object]:
    """The part of a run's config that makes it a setting: all of it but seeds, paths, devices."""
    return {
        key: value
        for key, value in flatten(with_current_names(config)).items()
        if key not in SEED_KEYS and is_setting(key) and not is_machine_path(value)
    }


def setting_key(config: dict) -> str:
    """A run's setting as one comparable text: runs with equal keys differ only in seed."""
    return json.dumps(setting_from_config(config), sort_keys=True, default=str)


def read_run(path: Path) -> dict:
    """A results.json as a dict, or a PlotError naming the file."""
    try:
        run = with_partition(json.loads(path.read_text()), path.parent)
    except json.JSONDecodeError as error:
        raise PlotError(
            f"{path} is not valid JSON ({error.msg}, line {error.lineno}): remove or rerun it"
        ) from None
    if not isinstance(run, dict) or "config" not in run or "rounds" not in run:
        raise PlotError(f"{path} has no 'config' and 'rounds': it is not a fedper results file")
    return run


def read_packed(path: Path) -> list[dict]:
    """The runs of a packed sweep file, each a results.json-like dict with its `run` name."""
    opener = gzip.open if path.name.endswith(".gz") else open
    runs = []
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                run = json.loads(line)
                if not isinstance(run, dict) or run.get("format") != PACKED_FORMAT:
                    raise PlotError(f"{path}, line {number}: not a packed fedper run ({PACKED_FORMAT}): pack it with `python -m fedper.plot pack`")  # fmt: skip
                runs.append(run)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlotError(f"{path} cannot be read as a packed sweep ({error}): pack it again") from None  # fmt: skip
    if not runs:
        raise PlotError(f"{path} holds no runs: pack a sweep folder that has finished rounds")
    return runs


def iter_runs(sources: Iterable[str | Path]) -> Iterator[tuple[str, dict]]:
    """(name, run) for every run below the sources; a packed run's name is `<file>:<run>`."""
    for path in find_results(sources):
        if is_packed(path):
            for run in read_packed(path):
                yield f"{path}:{run['run']}", run
        else:
            yield str(path.parent), read_run(path)


def _number(value: object) -> float:
    """A recorded metric as a float; JSON null (nothing measured, or no validation) is NaN."""
    return math.nan if value is None else float(value)


def is_partial(entry: dict) -> bool:
    """A round that went on with fewer clients than asked (`partial`, or older `clients_failed`)."""
    if "partial" in entry:
        return bool(entry["partial"])
    return (entry.get("clients_failed") or 0) > 0


def weighted_accuracy(entry: dict, metric: str) -> float:
    """The example-weighted mean over clients: recorded, or from the per-client numbers."""
    recorded = entry.get(f"{METRICS[metric]}_weighted")
    if recorded is not None:
        return float(recorded)
    accuracy_key, count_key = CLIENT_KEYS[metric]
    pairs = [
        (client[accuracy_key], client[count_key])
        for client in (entry.get("per_client") or {}).values()
        if client.get(accuracy_key) is not None and client.get(count_key)
    ]
    total = sum(count for _, count in pairs)
    return sum(a * count for a, count in pairs) / total if total else math.nan


def is_evaluated(entry: dict) -> bool:
    """A round whose clients were evaluated; rounds that only trained say `evaluated: false`."""
    return entry.get("round") is not None and entry.get("evaluated", True) is not False


def run_rows(name: str, run: dict, metric: str) -> list[dict]:
    """The rows of one run: a row per evaluated round, with its setting's keys."""
    config = run["config"]
    setting = setting_from_config(config)
    rounds = [r for r in run["rounds"] if is_evaluated(r)]
    if not rounds:
        log.warning("%s has no evaluated round yet: left out", name)
        return []
    done, planned = max(r["round"] for r in rounds), config.get("num_rounds")
    if planned is not None and done < planned:
        log.warning("%s: last evaluated round %d of %d; its final accuracy is round %d's", name, done, planned, done)  # fmt: skip
    restarted = [r["round"] for r in run["rounds"] if r.get("restarted_heads")]
    if restarted:
        log.warning("%s: clients started over from their initial head in round(s) %s (restart_lost_heads)", name, restarted)  # fmt: skip
    key = setting_key(config)
    return [
        {
            "run": name,
            "run_id": run.get("run_id"),
            "setting": key,
            "seed": config.get("seed"),
            "round": int(entry["round"]),
            "accuracy": _number(entry.get(METRICS[metric])),
            "accuracy_weighted": weighted_accuracy(entry, metric),
            "val_accuracy": _number(entry.get("val_accuracy")),
            "partial": is_partial(entry),
            **setting,
        }
        for entry in rounds
    ]


def load_runs(sources: Iterable[str | Path], metric: str = "test") -> pd.DataFrame:
    """A row per run and evaluated round: run, run_id, setting, seed, round, accuracies, keys.

    Sources are run or multirun folders, results.json files and packed sweep files. Rounds
    that were not evaluated (`evaluated: false`) are left out of every table and figure.
    With `metric="val"`, `accuracy` and `accuracy_weighted` hold validation accuracies, so
    every table and figure is computed on validation data (what settings are chosen on).
    """
    if metric not in METRICS:
        raise PlotError(f"metric={metric} is unknown: use {' or '.join(METRICS)}")
    rows = [row for name, run in iter_runs(sources) for row in run_rows(name, run, metric)]
    if not rows:
        raise PlotError("none of the runs has an evaluated round yet: nothing to plot")
    return pd.DataFrame(rows)

"""`python -m fedper.plot pack`: a sweep folder's runs as one compact file that the tables redraw from.

The file is JSON Lines, gzip-compressed (`*.jsonl.gz`): one run per line, with its settings
(the config without any path of the machine), `run_id`, `code_version`, library versions,
partition, and per round the numbers the tables and figures use, per client too. pandas reads
it with `pd.read_json(path, lines=True)`. Only runs of one clean commit are packed, unless
`--legacy` says to pack them anyway, which every line then records (`"legacy": true`).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fedper.atomic import write_atomic
from fedper.plot.runs import (
    PACKED_FORMAT,
    PACKED_SUFFIXES,
    PlotError,
    find_results,
    is_machine_path,
    read_run,
)

# config keys that only say where files live on the machine that ran
PATH_KEYS = frozenset({"data_dir", "state_dir", "resume", "run_dir"})
RUN_KEYS = ("run_id", "code_version", "versions", "device", "unused_settings", "partition",
            "partition_fingerprint")  # fmt: skip
ROUND_KEYS = (
    "round", "evaluated", "accuracy", "accuracy_weighted", "accuracy_std", "accuracy_min",
    "loss", "loss_weighted", "val_accuracy", "val_accuracy_weighted", "val_loss", "train_loss",
    "seconds", "bytes_up", "bytes_down", "clients_expected", "clients_ok", "clients_failed",
    "partial", "restarted_heads",
)  # fmt: skip
CLIENT_KEYS = ("accuracy", "num_examples", "val_accuracy", "num_val_examples")


@dataclass(frozen=True)
class Packed:
    """What pack_sweep wrote."""

    path: Path
    runs: int
    commits: tuple[str, ...]
    legacy: bool


def without_paths(config: dict) -> dict:
    """The config without the keys and values that are paths of the machine (nested too)."""
    kept = {}
    for key, value in config.items():
        if key in PATH_KEYS or is_machine_path(value):
            continue
        kept[key] = without_paths(value) if isinstance(value, dict) else value
    return kept


def packed_round(entry: dict) -> dict:
    """A round with the keys the tables and figures read, and per client only accuracies and counts."""
    kept = {key: entry[key] for key in ROUND_KEYS if key in entry}
    clients = entry.get("per_client")
    if clients:
        kept["per_client"] = {
            cid: {key: client[key] for key in CLIENT_KEYS if key in client}
            for cid, client in clients.items()
        }
    return kept


def packed_run(name: str, run: dict, legacy: bool) -> dict:
    """A run as one line of the packed file."""
    header = {key: run[key] for key in RUN_KEYS if key in run}
    return {
        "format": PACKED_FORMAT,
        "legacy": legacy,
        "run": name,
        **header,
        "config": without_paths(run["config"]),
        "rounds": [packed_round(entry) for entry in run["rounds"]],
    }


def _commit(run: dict) -> str:
    return str((run.get("code_version") or {}).get("commit") or "unknown")


def provenance_problem(folder: Path, runs: list[tuple[str, dict]]) -> str | None:
    """Why these runs are not from one clean commit, in one sentence; None when they are."""
    dirty = [name for name, run in runs if (run.get("code_version") or {}).get("dirty") is not False]  # fmt: skip
    commits = Counter(_commit(run) for _, run in runs)
    if not dirty and len(commits) == 1 and "unknown" not in commits:
        return None
    problems = []
    if dirty:
        problems.append(f"{len(dirty)} of {len(runs)} runs come from an uncommitted tree or name no commit (e.g. {dirty[0]})")  # fmt: skip
    if len(commits) > 1:
        shown = ", ".join(f"{commit[:10]}: {count}" for commit, count in commits.most_common(3))
        more = ", ..." if len(commits) > 3 else ""
        problems.append(f"the runs come from {len(commits)} commits ({shown}{more})")
    return (
        f"{folder}: {' and '.join(problems)}: rerun them from one clean commit, or pass "
        "--legacy to pack them anyway (every line of the file then says legacy: true)"
    )


def pack_sweep(folder: str | Path, out: str | Path, legacy: bool = False, force: bool = False) -> Packed:  # fmt: skip
    """Pack every run below `folder` into `out`; refuse mixed or uncommitted code unless legacy."""
    folder, out = Path(folder), Path(out)
    if not out.name.endswith(PACKED_SUFFIXES):
        raise PlotError(f"--out {out}: name the packed file *.jsonl.gz (or *.jsonl)")
    if out.exists() and not force:
        raise PlotError(f"--out {out} exists: give another name, or --force to replace it")
    if not folder.is_dir():
        raise PlotError(f"{folder} is not a folder: give a sweep (or run) folder to pack")
    root = folder.resolve()
    runs = [
        (
            (path.parent.relative_to(root).as_posix() if path.parent != root else root.name),
            read_run(path),
        )  # fmt: skip
        for path in find_results([folder])
    ]
    problem = provenance_problem(folder, runs)
    if problem and not legacy:
        raise PlotError(problem)
    lines = [
        json.dumps(packed_run(name, run, legacy=bool(problem)), separators=(",", ":")) + "\n"
        for name, run in sorted(runs, key=lambda item: item[0])
    ]

    def write(stream: IO[bytes]) -> None:
        if not out.name.endswith(".gz"):
            stream.write("".join(lines).encode())
            return
        # mtime 0 and no file name: the same runs always pack to the same bytes
        with gzip.GzipFile(filename="", mode="wb", fileobj=stream, mtime=0) as packed:
            packed.write("".join(lines).encode())

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, write)
    commits = tuple(sorted({_commit(run) for _, run in runs}))
    return Packed(out, len(runs), commits, bool(problem))

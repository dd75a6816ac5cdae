"""A round is committed once: after any kill, the next start finds results.json, results.csv,
results.png and checkpoint.pt describing the same completed rounds.

The checkpoint is the commit record. It holds the global arrays after the round and a copy of
the results up to it (header and round entries), so the three other files are views that can
always be rebuilt from it. The partition, which lists every client, is not in them: it is
written once per start to partition.json (`fedper.results.with_partition` reads it back), so
what a round writes does not grow with the number of clients. One round's commit, in this
order:

1. stage: the next results.csv, results.png, checkpoint.pt and results.json are written to
   temporary files beside them and flushed. A kill here leaves every visible file at the
   previous round (the temporary files are swept at the next start); a write that fails
   (disk full, quota, read-only) removes them and stops the run naming the file and the error.
2. rename results.csv, then results.png: these two views now run one round ahead.
3. rename checkpoint.pt: the round is committed.
4. rename results.json: it now names the checkpoint's round.

At the next start `RoundCommit.restore` reads the checkpoint (checked against its SHA-256) and
rewrites every view that differs from its copy: a view that ran ahead (a kill in step 2) goes
back to the committed round, which then runs again with identical numbers; results.json left
behind (a kill in step 3) catches up. During a run, results.json is never ahead of the
checkpoint and at most one round behind it.

Test hook: `FEDPER_KILL_AT=<step>@<round>` (a step of `STEPS`, e.g. `rename:checkpoint.pt@2`)
ends the process with `os._exit` right after that step, as a kill would. It is an environment
variable and not a config key, so the run that resumes does not inherit it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from fedper.atomic import discard, publish, stage
from fedper.checkpoint import CHECKPOINT, Checkpoint, encode_checkpoint, load_checkpoint
from fedper.errors import StateFileError, StorageError
from fedper.results import finite, results_csv, results_json, results_png
from fedper.rundir import (
    PARTITION_JSON,
    RESULTS_CSV,
    RESULTS_JSON,
    RESULTS_PNG,
    checked_json,
    read_checked_json,
    sweep_temporaries,
)

log = logging.getLogger("fedper")
ORDER = (RESULTS_CSV, RESULTS_PNG, CHECKPOINT, RESULTS_JSON)  # renamed in this order
STEPS = tuple(f"stage:{name}" for name in ORDER) + tuple(f"rename:{name}" for name in ORDER)
KILL_ENV = "FEDPER_KILL_AT"
KILLED_EXIT = 137  # what a shell reports for a process ended by SIGKILL


def fault_point(step: str, round_num: int) -> None:
    """The test-only kill hook (see the module docstring)."""
    if os.environ.get(KILL_ENV) == f"{step}@{round_num}":
        os._exit(KILLED_EXIT)


def committed_round(run_dir: str | Path) -> int:
    """The last round the checkpoint in `run_dir` committed; 0 before round 1."""
    checkpoint = load_checkpoint(run_dir)
    return checkpoint.round if checkpoint is not None else 0


class RoundCommit:
    """A run's results and checkpoint in its run directory, one committed round at a time."""

    def __init__(self, run_dir: str | Path, run_id: str, header: dict | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.partition = (header or {}).get("partition")
        self.header = without_partition(header) if header is not None else None
        self.body: dict = {**(self.header or {}), "rounds": []}

    @property
    def rounds(self) -> list[dict]:
        return self.body["rounds"]

    def restore(self) -> Checkpoint | None:
        """The checkpoint to continue after (None: start at round 1), with every view rewritten
        to match it. Without a header of its own, the run keeps the checkpoint's."""
        sweep_temporaries(self.run_dir)  # of commits a kill interrupted
        checkpoint = load_checkpoint(self.run_dir, self.run_id)
        if checkpoint is not None:
            saved = without_partition(
                {k: v for k, v in checkpoint.results.items() if k != "rounds"}
            )
            self.body = {**(self.header or saved), "rounds": checkpoint.results["rounds"]}
        if self.partition is not None:
            data = (checked_json({"partition": self.partition}) + "\n").encode()
            if not self.holds(PARTITION_JSON, data):
                self.write({PARTITION_JSON: data}, 0)
        self.repair_views(checkpoint.round if checkpoint is not None else 0)
        return checkpoint

    def repair_views(self, round_num: int) -> None:
        """Rewrite results.json, .csv and .png wherever they differ from the committed body."""
        expected = {
            RESULTS_JSON: results_json(self.body).encode(),
            RESULTS_CSV: results_csv(self.rounds).encode(),
        }
        stale = {name: data for name, data in expected.items() if not self.holds(name, data)}
        if stale or not (self.run_dir / RESULTS_PNG).is_file():
            stale[RESULTS_PNG] = results_png(self.body)
        if stale:
            self.warn_if_damaged()
            self.write({name: stale[name] for name in ORDER if name in stale}, round_num)

    def holds(self, name: str, data: bytes) -> bool:
        try:
            return (self.run_dir / name).read_bytes() == data
        except OSError:
            return False

    def warn_if_damaged(self) -> None:
        path = self.run_dir / RESULTS_JSON
        if path.exists():
            try:
                read_checked_json(path, "")
            except StateFileError as error:
                reason = str(error).split(": ")[0].removeprefix(f"{path} ")
                log.warning("%s %s: rebuilt from %s", path, reason, CHECKPOINT)

    def commit(self, entry: dict, arrays: dict[str, torch.Tensor]) -> None:
        """Record one completed round: its entry in the results, its arrays in the checkpoint."""
        round_num = entry["round"]
        body = {**self.body, "rounds": [*self.rounds, finite(entry)]}
        checkpoint = Checkpoint(self.run_id, round_num, dict(arrays), body)
        files = {
            RESULTS_CSV: results_csv(body["rounds"]).encode(),
            RESULTS_PNG: results_png(body),
            CHECKPOINT: encode_checkpoint(checkpoint),
            RESULTS_JSON: results_json(body).encode(),
        }
        self.write(files, round_num)
        self.body = body

    def write(self, files: dict[str, bytes], round_num: int) -> None:
        """Stage every file, then rename them in `ORDER`; a failed write leaves no temporary."""
        staged: dict[str, Path] = {}
        try:
            for name, data in files.items():
                staged[name] = stage(self.run_dir / name, lambda handle, d=data: handle.write(d))
                fault_point(f"stage:{name}", round_num)
            for name, tmp in staged.items():
                publish(tmp, self.run_dir / name)
                fault_point(f"rename:{name}", round_num)
        except StorageError as error:
            raise StorageError(
                f"{error}, then continue with: python -m fedper.main resume={self.run_dir}"
            ) from None
        finally:
            for tmp in staged.values():
                discard(tmp)  # renamed ones are already gone


def without_partition(header: dict) -> dict:
    """A results header without the list of every client (kept in partition.json)."""
    return {key: value for key, value in header.items() if key != "partition"}

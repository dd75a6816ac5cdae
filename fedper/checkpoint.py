"""The server checkpoint: a committed round's global shared arrays and the results up to it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fedper.errors import StateFileError
from fedper.tensor_files import encode_tensors, load_tensors

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class Checkpoint:
    """A committed round: the global shared arrays after it and the run's results up to it."""

    run_id: str
    round: int
    arrays: dict[str, torch.Tensor]
    results: dict  # what results.json holds after this round (header and rounds)


CHECKPOINT_WAY_OUT = "start a fresh run in a new directory"


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    payload = {
        "run_id": checkpoint.run_id,
        "round": checkpoint.round,
        "arrays": dict(checkpoint.arrays),
        "results": json.dumps(checkpoint.results, allow_nan=False),
    }
    return encode_tensors("checkpoint", payload)


def load_checkpoint(run_dir: str | Path, run_id: str | None = None) -> Checkpoint | None:
    """The last committed round of a run; None before round 1. `run_id`: the run it must be."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    record = load_tensors(path, "checkpoint", CHECKPOINT_WAY_OUT)
    if run_id is not None and record.get("run_id") != run_id:
        raise StateFileError(
            f"{path} belongs to run {record.get('run_id')}, not {run_id}: {CHECKPOINT_WAY_OUT}"
        )
    return Checkpoint(
        str(record["run_id"]), int(record["round"]), record["arrays"], json.loads(record["results"])
    )

"""Everything a run keeps on disk: heads, the server checkpoint, and one atomic writer.

Every file fedper writes goes through `write_atomic`: a temporary file with a unique name in
the same folder, flushed to disk, then renamed over the target, so a reader sees the old
file or the new one, never half of one. Head and checkpoint files share one format: a
`torch.save` dict with `format` and a SHA-256 of the tensors, read with
`torch.load(weights_only=True)`, which refuses to execute pickled code.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Protocol

import torch

from fedper.errors import StateFileError

FORMAT = 2
CHECKPOINT = "checkpoint.pt"


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through `write(handle)` so that it appears whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode()))


def tensors_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes: equal digests mean equal tensors."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(path: str | Path, kind: str, payload: dict) -> None:
    """A fedper state file: `payload` plus format, kind and a digest of every tensor in it."""
    tensors = dict(flat_tensors(payload))
    record = {"format": FORMAT, "kind": kind, "digest": tensors_digest(tensors), **payload}
    write_atomic(path, lambda handle: torch.save(record, handle))


def load_tensors(path: str | Path, kind: str, way_out: str) -> dict:
    """Read a state file written by `save_tensors`; any damage is one StateFileError."""
    path = Path(path)
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StateFileError(f"{path} is missing: {way_out}") from None
    except Exception as error:
        raise StateFileError(f"{path} is damaged ({type(error).__name__}): {way_out}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("kind") != kind:
        raise StateFileError(f"{path} is not a fedper {kind} file (format {FORMAT}): {way_out}")
    if tensors_digest(dict(flat_tensors(record))) != record.get("digest"):
        raise StateFileError(f"{path} is damaged (its checksum does not match): {way_out}")
    return record


def flat_tensors(payload: Mapping, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a nested dict, keyed by its path (the digest covers all of them)."""
    out = []
    for key, value in payload.items():
        if isinstance(value, torch.Tensor):
            out.append((f"{prefix}{key}", value))
        elif isinstance(value, Mapping):
            out += flat_tensors(value, f"{prefix}{key}/")
    return out


class HeadStore(Protocol):
    """Where a client's personal parts live between rounds (on disk, or in memory)."""

    def load(self, cid: int, before_round: int) -> dict[str, torch.Tensor] | None: ...

    def save(self, cid: int, round_num: int, state: dict[str, torch.Tensor]) -> None: ...


class DiskHeadStore:
    """Heads of one run on one node: `<state_dir>/<run id>/client_<cid>.pt`.

    Each file keeps the head of the latest round the client trained in and the one before,
    so that after a crash a head written during an unfinished round is never used: a client
    training in round r reads the newest version older than r.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, cid: int) -> Path:
        return self.directory / f"client_{cid}.pt"

    def save(self, cid: int, round_num: int, state: dict[str, torch.Tensor]) -> None:
        """Store the head trained in `round_num`, keeping the newest earlier version."""
        versions = self.versions(cid)
        older = [r for r in versions if r < round_num]
        kept = {max(older): versions[max(older)]} if older else {}
        kept[round_num] = state
        save_tensors(self.path(cid), "head", {"versions": kept})

    def load(self, cid: int, before_round: int) -> dict[str, torch.Tensor] | None:
        """The newest head saved in a round before `before_round`; None if there is none."""
        versions = self.versions(cid)
        usable = [r for r in versions if r < before_round]
        return versions[max(usable)] if usable else None

    def versions(self, cid: int) -> dict[int, dict[str, torch.Tensor]]:
        path = self.path(cid)
        if not path.exists():
            return {}
        record = load_tensors(
            path, "head", "delete it to restart this client from the initial head"
        )
        return {int(r): state for r, state in record["versions"].items()}


class MemoryHeadStore:
    """Heads kept in this process (the benchmark's plain loop and in-process tests)."""

    def __init__(self) -> None:
        self.heads: dict[int, dict[int, dict[str, torch.Tensor]]] = {}

    def save(self, cid: int, round_num: int, state: dict[str, torch.Tensor]) -> None:
        self.heads.setdefault(cid, {})[round_num] = state

    def load(self, cid: int, before_round: int) -> dict[str, torch.Tensor] | None:
        usable = [r for r in self.heads.get(cid, {}) if r < before_round]
        return self.heads[cid][max(usable)] if usable else None


def save_checkpoint(
    run_dir: str | Path, run_id: str, round_num: int, arrays: dict[str, torch.Tensor]
) -> None:
    """The global shared arrays after `round_num`: what a resumed run starts from."""
    save_tensors(
        Path(run_dir) / CHECKPOINT,
        "checkpoint",
        {"run_id": run_id, "round": round_num, "arrays": dict(arrays)},
    )


def load_checkpoint(run_dir: str | Path, run_id: str) -> tuple[int, dict[str, torch.Tensor]] | None:
    """The last completed round and the global arrays after it; None before round 1."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    record = load_tensors(path, "checkpoint", "start a fresh run in a new directory")
    if record.get("run_id") != run_id:
        raise StateFileError(f"{path} belongs to run {record.get('run_id')}, not {run_id}")
    return int(record["round"]), record["arrays"]

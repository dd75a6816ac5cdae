"""Where a client's personal parts (its head) live between rounds: on disk, or in memory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch

from fedper.tensor_files import load_tensors, save_tensors

# what a user can do about a client's head that is damaged, lost or does not fit the model
HEAD_WAY_OUT = (
    "resume with restart_lost_heads=true to start this client over from its initial head, or "
    "start a fresh run"
)


class HeadStore(Protocol):
    """Where a client's personal parts live between rounds (on disk, or in memory)."""

    def load_version(
        self, cid: int, before_round: int
    ) -> tuple[int, dict[str, torch.Tensor]] | None:
        """The newest head saved in a round before `before_round`, with that round; None if
        there is none."""
        ...

    def save(self, cid: int, round_num: int, state: dict[str, torch.Tensor]) -> None: ...

    def location(self, cid: int) -> str:
        """Where the client's heads are, for messages."""
        ...


class DiskHeadStore(HeadStore):
    """Heads of one run on one node: `<state_dir>/<run id>/client_<cid>.pt`.

    Each file keeps the head of the latest round the client trained in and the one before,
    so that after a crash a head written during an unfinished round is never used: a client
    training in round r reads the newest version older than r.

    A client's training call loads its head, trains, then saves the next one, which needs
    the versions it loaded. `load_version` always reads and checks the file; `save` reuses
    what `load_version` read while the file is unchanged (same inode, size and modification time), instead
    of reading and checking it a second time.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._loaded: tuple[int, tuple[int, int, int], dict[int, dict[str, torch.Tensor]]] | None
        self._loaded = None

    def path(self, cid: int) -> Path:
        return self.directory / f"client_{cid}.pt"

    def save(self, cid: int, round_num: int, state: dict[str, torch.Tensor]) -> None:
        """Store the head trained in `round_num`, keeping the newest earlier version."""
        loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded[:2] == (cid, file_identity(self.path(cid))):
            versions = loaded[2]
        else:
            versions = self.versions(cid)
        older = [r for r in versions if r < round_num]
        kept = {max(older): versions[max(older)]} if older else {}
        kept[round_num] = state
        save_tensors(self.path(cid), "head", {"versions": kept})

    def load_version(
        self, cid: int, before_round: int
    ) -> tuple[int, dict[str, torch.Tensor]] | None:
        identity = file_identity(self.path(cid))  # taken first: a later change reads anew
        versions = self.versions(cid)
        self._loaded = (cid, identity, versions) if identity is not None else None
        return newest_before(versions, before_round)

    def location(self, cid: int) -> str:
        return str(self.path(cid))

    def versions(self, cid: int) -> dict[int, dict[str, torch.Tensor]]:
        """Every version in the client's file, read and checked."""
        path = self.path(cid)
        if not path.exists():
            return {}
        record = load_tensors(path, "head", f"restore it, or delete it and {HEAD_WAY_OUT}")
        return {int(r): state for r, state in record["versions"].items()}


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """What changes whenever a file is replaced or written: inode, size, modification time."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


class MemoryHeadStore(HeadStore):
    """Heads kept in this process (the benchmark's plain loop and in-process tests)."""

    def __init__(self) -> None:
        self.heads: dict[int, dict[int, dict[str, torch.Tensor]]] = {}

    def save(self, cid: int, round_num: int, state: dict[str, torch.Tensor]) -> None:
        self.heads.setdefault(cid, {})[round_num] = state

    def load_version(
        self, cid: int, before_round: int
    ) -> tuple[int, dict[str, torch.Tensor]] | None:
        return newest_before(self.heads.get(cid, {}), before_round)

    def location(self, cid: int) -> str:
        return f"the memory of process {os.getpid()}"


def newest_before(
    versions: Mapping[int, dict[str, torch.Tensor]], before_round: int
) -> tuple[int, dict[str, torch.Tensor]] | None:
    """The newest version saved in a round before `before_round`, with that round."""
    usable = [r for r in versions if r < before_round]
    return (max(usable), versions[max(usable)]) if usable else None

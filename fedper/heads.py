"""Where a client's personal parts (its head) live between rounds: on disk, or in memory.

A head file on disk is bound to its owner: it records the run id, the client id, the round
of each version and the names, dtypes and shapes of the head (its layout), and a read checks
all of them, so a file swapped between clients, copied from another run or saved for another
model is refused, never trained on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch

from fedper.atomic import link_target
from fedper.errors import StateFileError
from fedper.tensor_files import load_tensors, save_tensors

# what a user can do about a client's head that is damaged, lost or does not fit the model
HEAD_WAY_OUT = (
    "resume with restart_lost_heads=true to start this client over from its initial head, or "
    "start a fresh run"
)
# ... and about a head file that belongs to another client, run or model
FOREIGN_WAY_OUT = f"put the right file back, or move it away and {HEAD_WAY_OUT}"


class ForeignHeadError(StateFileError):
    """A head file that is intact but not the client's own: another client's, run's or
    model's, or one reached through a link."""


def head_layout(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Each key's dtype and shape, as a head file records them: {"head.w": "torch.float32[2, 2]"}."""
    return {key: f"{value.dtype}{list(value.shape)}" for key, value in sorted(state.items())}


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
    """Heads of one run on one node: `<state_dir>/<run id>/client_<cid>.pt`, each bound to
    `run_id`, its client and, when given, the `layout` of the model's head.

    Each file keeps the head of the latest round the client trained in and `older` versions
    before it, so that after a crash a head written during an unfinished round is never used:
    a client training in round r reads the newest version older than r. One older version
    covers a run that commits each round before the next starts; a run whose round r is
    committed after round r+1's training (`engine.fold_evaluation`) keeps two.

    A client's training call loads its head, trains, then saves the next one, which needs
    the versions it loaded. `load_version` always reads and checks the file; `save` reuses
    what `load_version` read while the file is unchanged (same inode, size and modification time), instead
    of reading and checking it a second time.
    """

    def __init__(
        self,
        directory: str | Path,
        run_id: str,
        layout: Mapping[str, str] | None = None,
        older: int = 1,
    ) -> None:
        self.directory = Path(directory)
        self.older = older
        self.run_id = run_id
        self.layout = dict(layout) if layout is not None else None
        self._loaded: tuple[int, tuple[int, int, int], dict[int, dict[str, torch.Tensor]]] | None
        self._loaded = None

    def path(self, cid: int) -> Path:
        return self.directory / f"client_{cid}.pt"

    def save(self, cid: int, round_num: int, state: dict[str, torch.Tensor]) -> None:
        """Store the head trained in `round_num`, keeping the `older` newest earlier versions."""
        loaded, self._loaded = self._loaded, None
        self.check_no_links(cid)
        if loaded is not None and loaded[:2] == (cid, file_identity(self.path(cid))):
            versions = loaded[2]
        else:
            versions = self.versions(cid)
        older = sorted(r for r in versions if r < round_num)[-self.older :]
        kept = {r: versions[r] for r in older}
        kept[round_num] = state
        layout = self.layout if self.layout is not None else head_layout(state)
        owner = {"run_id": self.run_id, "client": cid, "layout": layout}
        save_tensors(self.path(cid), "head", {**owner, "versions": kept})

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
        self.check_no_links(cid)
        if not path.exists():
            return {}
        record = load_tensors(path, "head", f"restore it, or delete it and {HEAD_WAY_OUT}")
        self.check_owner(path, record, cid)
        return {int(r): state for r, state in record["versions"].items()}

    def check_no_links(self, cid: int) -> None:
        """Heads live in the run's own folder, in files of their own: a symbolic link planted
        for the folder or the file is refused, never followed."""
        for path in (self.directory, self.path(cid)):
            target = link_target(path)
            if target is not None:
                raise ForeignHeadError(
                    f"{path} is a symbolic link (to {target}): fedper keeps heads in the run's "
                    f"own folder and files, never behind a link: {FOREIGN_WAY_OUT}"
                )

    def check_owner(self, path: Path, record: dict, cid: int) -> None:
        """The file is this run's head of client `cid`, each version of its recorded layout,
        and that layout is this model's; else one ForeignHeadError naming the file."""
        run_id, client, layout = (record.get(k) for k in ("run_id", "client", "layout"))
        if not (isinstance(run_id, str) and isinstance(client, int) and isinstance(layout, dict)):
            raise StateFileError(
                f"{path} records no run, client or shapes (written by an older fedper): "
                f"delete it and {HEAD_WAY_OUT}"
            )
        if run_id != self.run_id:
            raise ForeignHeadError(
                f"{path} holds a head of run {run_id}, not of this run {self.run_id} (copied "
                f"from another run's state_dir): {FOREIGN_WAY_OUT}"
            )
        if client != cid:
            raise ForeignHeadError(
                f"{path} holds the head of client {client}, not of client {cid} (files swapped "
                f"or copied between clients): {FOREIGN_WAY_OUT}"
            )
        if self.layout is not None and layout != self.layout:
            key = next(
                k for k in sorted({*layout, *self.layout}) if layout.get(k) != self.layout.get(k)
            )
            raise ForeignHeadError(
                f"{path} holds a head of another model ({key} is {layout.get(key, 'absent')} "
                f"there, {self.layout.get(key, 'absent')} here): {FOREIGN_WAY_OUT}"
            )
        misfit = misfit_version(record.get("versions"), layout)
        if misfit is not None:
            raise ForeignHeadError(
                f"{path} is not a fedper head file: its version of round {misfit} does not "
                f"match its recorded shapes: {FOREIGN_WAY_OUT}"
            )


def misfit_version(versions, layout: dict) -> object | None:
    """The round of the first version whose tensors differ from `layout` (a crafted file can
    carry a valid checksum: anyone can compute one); None when all of them fit."""
    if not isinstance(versions, dict):
        return "(none)"
    for round_num, state in versions.items():
        if not isinstance(state, dict) or head_layout(state) != layout:
            return round_num
    return None


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

"""Client heads on disk: client_states/<run id>/client_<cid>.pt, written atomically.

Each file keeps the head of the latest round the client trained in and the one before, so
that after a crash a head written during an unfinished round is never used: a client
training in round r reads the newest version older than r. Files are read with
`torch.load(weights_only=True)`, which refuses to execute pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fedper.errors import StateFileError

FORMAT = 1
INITIAL = "initial.pt"


class ClientStateStore:
    """The personal parts of every client of one run."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, cid: int) -> Path:
        return self.directory / f"client_{cid}.pt"

    def save_initial(self, state: dict[str, torch.Tensor]) -> None:
        """The global model before round 1: a client's first round starts from its head."""
        write_atomic(self.directory / INITIAL, {"format": FORMAT, "state": state})

    def load_initial(self) -> dict[str, torch.Tensor]:
        path = self.directory / INITIAL
        return read_checked(path, "start a fresh run")["state"]

    def save(self, cid: int, round_num: int, state: dict[str, torch.Tensor]) -> None:
        """Store the head trained in `round_num`, keeping the newest earlier version."""
        versions = self.versions(cid)
        older = [r for r in versions if r < round_num]
        kept = {max(older): versions[max(older)]} if older else {}
        kept[round_num] = state
        write_atomic(self.path(cid), {"format": FORMAT, "versions": kept})

    def load(self, cid: int, before_round: int) -> dict[str, torch.Tensor] | None:
        """The newest head saved in a round before `before_round`; None if there is none."""
        versions = self.versions(cid)  # one read of the file
        usable = [r for r in versions if r < before_round]
        return versions[max(usable)] if usable else None

    def versions(self, cid: int) -> dict[int, dict[str, torch.Tensor]]:
        path = self.path(cid)
        if not path.exists():
            return {}
        payload = read_checked(path, "delete it to restart this client from the global head")
        versions = payload.get("versions")
        if not isinstance(versions, dict):
            raise StateFileError(f"{path} holds no head versions: delete it to restart this client")
        return versions


def write_atomic(path: Path, payload: dict) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_checked(path: Path, way_out: str) -> dict:
    """Load a file this program wrote; damage is reported with the file and the way out."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StateFileError(f"{path} is missing: {way_out}") from None
    except Exception as error:
        raise StateFileError(f"{path} is damaged ({type(error).__name__}): {way_out}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise StateFileError(f"{path} is not a fedper state file (format {FORMAT}): {way_out}")
    return payload

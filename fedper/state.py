"""Everything a run keeps on disk: heads, the server checkpoint, and one atomic writer.

Every file fedper writes goes through `stage` and `publish` (`write_atomic` does both): the
next version goes to a temporary file with a unique name in the same folder, flushed to disk,
then is renamed over the target, so a reader sees the old file or the new one, never half of
one. A write that fails (disk full, quota, read-only folder) removes its temporary file and
raises a `StorageError` naming the file and the OS error. Head and checkpoint files share one
format: a `torch.save` dict with `format`, `kind` and a SHA-256 over every tensor and every
other value in it, read with `torch.load(weights_only=True)`, which refuses to run pickled code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import torch

from fedper.errors import StateFileError, StorageError

FORMAT = 3  # 3: the digest covers every value of the record, not only its tensors
CHECKPOINT = "checkpoint.pt"
# what a user can do about a client's head that is damaged, lost or does not fit the model
HEAD_WAY_OUT = (
    "resume with restart_lost_heads=true to start this client over from its initial head, or "
    "start a fresh run"
)
TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)  # read once: files get the usual permissions, not mkstemp's 0600
os.umask(_UMASK)


def storage_error(path: Path, error: OSError) -> StorageError:
    """One line naming the file and the OS error (ENOSPC, EDQUOT, EROFS, EACCES, EFBIG)."""
    return StorageError(
        f"cannot write {path}: {error.strerror or error} (errno {error.errno}): free space "
        "or make the folder writable"
    )


def temporary_beside(path: Path) -> tuple[int, Path]:
    """A new, uniquely named temporary file beside `path` (parallel jobs never collide), with
    the usual permissions rather than mkstemp's 0600: its descriptor and its path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)
    except OSError as error:
        raise storage_error(path, error) from None
    return fd, Path(tmp)


def stage(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """The next version of `path`, written through `write(handle)` to a temporary file
    beside it and flushed to disk; `publish` puts it in place."""
    path = Path(path)
    fd, tmp = temporary_beside(path)
    with discarded_on_failure(tmp, path):
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    return tmp


def stage_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`stage` for writers that need a file name (numpy's memory-mapped .npy pools)."""
    path = Path(path)
    fd, tmp = temporary_beside(path)
    os.close(fd)
    with discarded_on_failure(tmp, path):
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    return tmp


@contextmanager
def discarded_on_failure(tmp: Path, path: Path) -> Iterator[None]:
    """Any failure removes the temporary; an OS error becomes one line naming `path`."""
    try:
        yield
    except BaseException as error:
        discard(tmp)
        if isinstance(error, OSError):
            raise storage_error(path, error) from None
        raise


def publish(staged: Path, path: str | Path) -> None:
    """Rename a staged file over `path`: the one step a reader can see."""
    path = Path(path)
    try:
        os.replace(staged, path)
    except OSError as error:
        discard(staged)
        raise storage_error(path, error) from None
    sync_folder(path.parent)


def discard(staged: Path) -> None:
    """Remove a temporary file; on a read-only folder there may be nothing to do about it."""
    try:
        staged.unlink(missing_ok=True)
    except OSError:
        pass


def sync_folder(folder: Path) -> None:
    """Make a rename survive a power cut, not only a killed process."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through `write(handle)` so that it appears whole or not at all."""
    publish(stage(path, write), path)


def write_file_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write a file through `write(temporary path)` so that it appears whole or not at all."""
    publish(stage_file(path, write), path)


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


def record_digest(payload: Mapping) -> str:
    """SHA-256 over every tensor (`tensors_digest`) and every other value of a record."""
    others = json.dumps(without_tensors(payload), sort_keys=True)
    return hashlib.sha256(
        f"{tensors_digest(dict(flat_tensors(payload)))}|{others}".encode()
    ).hexdigest()


def without_tensors(payload: Mapping) -> dict:
    out = {}
    for key, value in payload.items():
        if isinstance(value, Mapping):
            out[str(key)] = without_tensors(value)
        elif not isinstance(value, torch.Tensor):
            out[str(key)] = value
    return out


def encode_tensors(kind: str, payload: dict) -> bytes:
    """A fedper state file's bytes: `payload` plus format, kind and its digest.

    Serialized in memory first, so that a full disk surfaces as an OSError of the write, not
    as an error from inside torch's zip writer.
    """
    record = {"format": FORMAT, "kind": kind, "digest": record_digest(payload), **payload}
    buffer = io.BytesIO()
    torch.save(record, buffer)
    return buffer.getvalue()


def save_tensors(path: str | Path, kind: str, payload: dict) -> None:
    data = encode_tensors(kind, payload)
    write_atomic(path, lambda handle: handle.write(data))


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
    payload = {k: v for k, v in record.items() if k not in ("format", "kind", "digest")}
    try:
        intact = record_digest(payload) == record.get("digest")
    except (TypeError, ValueError):
        intact = False
    if not intact:
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

    def load(self, cid: int, before_round: int) -> dict[str, torch.Tensor] | None:
        """The newest head saved in a round before `before_round`; None if there is none."""
        found = self.load_version(cid, before_round)
        return found[1] if found is not None else None


class DiskHeadStore(HeadStore):
    """Heads of one run on one node: `<state_dir>/<run id>/client_<cid>.pt`.

    Each file keeps the head of the latest round the client trained in and the one before,
    so that after a crash a head written during an unfinished round is never used: a client
    training in round r reads the newest version older than r.

    A client's training call loads its head, trains, then saves the next one, which needs
    the versions it loaded. `load` always reads and checks the file; `save` reuses what
    `load` read while the file is unchanged (same inode, size and modification time), instead
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

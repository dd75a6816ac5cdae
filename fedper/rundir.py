"""The run directory: what belongs to fedper in it, the lock that keeps it to one run, and the
checksummed JSON files (run_config.json, run_id, results.json) that fedper reads back.

A run directory holds fedper's files and Hydra's (`.hydra/`, `main.log`), nothing else: a
folder holding anything else is refused rather than written into. While a run lives it holds an
OS lock on `.run.lock`; the kernel drops the lock when the process ends, however it ends, so a
killed run never blocks its resume and a second start is refused, naming the first.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import stat
import time
from pathlib import Path

from fedper.atomic import (
    TMP_SUFFIX,
    NotOwnFile,
    link_refusal,
    link_target,
    open_own,
    storage_error,
    write_text_atomic,
)
from fedper.checkpoint import CHECKPOINT
from fedper.errors import FedPerError, StateFileError
from fedper.trackers import TRACKERS_DIR

RUN_ID_FILE = "run_id"
CONFIG_FILE = "run_config.json"
RESULTS_JSON = "results.json"
PARTITION_JSON = "partition.json"  # every client's classes and split sizes, once per run
RESULTS_CSV = "results.csv"
RESULTS_PNG = "results.png"
LOCK_FILE = ".run.lock"
RUN_FILES = {
    RUN_ID_FILE,
    CONFIG_FILE,
    RESULTS_JSON,
    PARTITION_JSON,
    RESULTS_CSV,
    RESULTS_PNG,
    CHECKPOINT,
    TRACKERS_DIR,
}
HYDRA_FILES = {".hydra", "main.log"}  # Hydra writes them before fedper runs; fedper's here
CHECKSUM_KEY = "sha256"
# what `fedper.spec.new_run_id` makes; the run id names a folder under state_dir
RUN_ID_PATTERN = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{8}")


class RunDirError(FedPerError):
    """The run directory cannot be used as asked (in use, or holding someone else's files)."""


def body_digest(body: dict) -> str:
    """SHA-256 of a JSON body in one canonical form, however the file is laid out."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def checked_json(body: dict) -> str:
    """The text of a JSON file that carries the checksum of the rest of it."""
    return json.dumps({**body, CHECKSUM_KEY: body_digest(body)}, indent=1, allow_nan=False)


def read_checked_json(path: Path, way_out: str) -> dict:
    """A file written with `checked_json`, without its checksum; any damage is one error."""
    try:
        with open_own(path) as handle:
            body = json.loads(handle.read().decode())
    except FileNotFoundError:
        raise StateFileError(f"{path} is missing: {way_out}") from None
    except NotOwnFile as error:
        raise StateFileError(f"{error}: fedper never reads through a link; {way_out}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise StateFileError(f"{path} is damaged ({type(error).__name__}): {way_out}") from None
    if not isinstance(body, dict) or CHECKSUM_KEY not in body:
        raise StateFileError(f"{path} has no checksum (not written by this fedper): {way_out}")
    stored = body.pop(CHECKSUM_KEY)
    try:
        intact = body_digest(body) == stored
    except ValueError:
        intact = False
    if not intact:
        raise StateFileError(f"{path} is damaged (its checksum does not match): {way_out}")
    return body


def write_run_id(run_dir: Path, run_id: str) -> None:
    write_text_atomic(run_dir / RUN_ID_FILE, checked_json({"run_id": run_id}) + "\n")


def read_run_id(run_dir: Path) -> str | None:
    """The id of the run in `run_dir` (None before it has one), checked before it names a folder."""
    path = run_dir / RUN_ID_FILE
    if not path.exists():
        return None
    way_out = "restore it, or start a fresh run in a new directory"
    run_id = read_checked_json(path, way_out).get("run_id")
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise StateFileError(
            f"{path} holds {run_id!r}, not a run id (like 20240131-235959-0123abcd): {way_out}"
        )
    return run_id


def is_temporary(name: str) -> bool:
    """A temporary file of one of fedper's files (`.results.json.x1y2.tmp`), left by a kill."""
    return name.endswith(TMP_SUFFIX) and any(name.startswith(f".{f}.") for f in RUN_FILES)


def check_owned(run_dir: Path) -> None:
    """Never overwrite: refuse a directory holding files fedper did not write.

    fedper's own names count only where a fedper run lives (run_config.json is its first file):
    a folder of someone's results.csv is not a run to continue.
    """
    if not run_dir.is_dir():
        return
    ours = HYDRA_FILES | {LOCK_FILE}
    if (run_dir / CONFIG_FILE).is_file():
        ours |= RUN_FILES
    for name in sorted(ours - HYDRA_FILES):
        if link_target(run_dir / name) is not None:
            raise link_in_run_dir(run_dir / name)
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in ours)
    foreign = [name for name in foreign if not is_temporary(name)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise RunDirError(
            f"{run_dir} holds files fedper did not write ({shown}): choose another "
            "hydra.run.dir (fedper never writes into a folder that is not a fedper run)"
        )


def link_in_run_dir(path: Path) -> RunDirError:
    return RunDirError(link_refusal(path))


def sweep_temporaries(run_dir: Path) -> None:
    """Temporary files of writes a kill interrupted: never part of the run."""
    for path in run_dir.iterdir():
        if is_temporary(path.name):
            path.unlink(missing_ok=True)


class RunLock:
    """One run per run directory: an exclusive `flock` on `.run.lock`, held while in use."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # never through a link; not inherited by children; a FIFO must not block
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise link_in_run_dir(self.path) from None
            raise storage_error(self.path, error) from None
        kind = not_a_file_of_its_own(os.fstat(fd))
        if kind is not None:
            os.close(fd)
            raise RunDirError(
                f"{self.path} is not a file of its own ({kind}): remove it, or choose another "
                "hydra.run.dir"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(fd)
            os.close(fd)
            raise RunDirError(
                f"{self.path.parent} is in use by another fedper run ({holder}): wait for it to "
                "end or stop it, or choose another hydra.run.dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def not_a_file_of_its_own(info: os.stat_result) -> str | None:
    """What the lock file is instead of a regular file with one name (whose bytes fedper may
    replace); None when it is one."""
    if not stat.S_ISREG(info.st_mode):
        return "a FIFO" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
    if info.st_nlink != 1:
        return f"a hard link: {info.st_nlink} names share its bytes"
    return None


def lock_holder(fd: int) -> str:
    """'PID <pid> on <host>' of the process holding the lock.

    The holder writes its PID just after taking the lock: a start racing it may find the
    file empty for a moment, so it looks again for up to a second.
    """
    for _ in range(50):
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
        if len(text) == 2:
            return f"PID {text[0]} on {text[1]}"
        time.sleep(0.02)
    return "PID unknown"

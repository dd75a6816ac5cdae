"""Every file fedper writes appears whole or not at all: stage a temporary, then rename it.

`stage` writes the next version of a file to a temporary file with a unique name in the same
folder and flushes it to disk; `publish` renames it over the target, so a reader sees the old
file or the new one, never half of one (`write_atomic` does both). A write that fails (disk
full, quota, read-only folder) removes its temporary file and raises a `StorageError` naming
the file and the OS error.

No file is written through or over a link: a target that is a symbolic link is refused, not
followed or replaced, and `open_own` reads fedper's own files the same way (`O_NOFOLLOW`,
regular files only).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from fedper.errors import FedPerError, StorageError

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)  # read once: files get the usual permissions, not mkstemp's 0600
os.umask(_UMASK)


def storage_error(path: Path, error: OSError) -> StorageError:
    """One line naming the file and the OS error (ENOSPC, EDQUOT, EROFS, EACCES, EFBIG)."""
    return StorageError(
        f"cannot write {path}: {error.strerror or error} (errno {error.errno}): free space "
        "or make the folder writable"
    )


class NotOwnFile(FedPerError):
    """A path where fedper keeps a file of its own holds a link or something else instead."""


def link_target(path: str | Path) -> str | None:
    """Where `path` points when it is a symbolic link; None when it is not one."""
    try:
        return os.readlink(path)
    except OSError:  # EINVAL: not a link; ENOENT: nothing there
        return None


def link_refusal(path: Path) -> str:
    """The one line for a link where fedper or Hydra would write a file of the run."""
    return (
        f"{path} is a symbolic link (to {link_target(path)}): fedper never reads or writes "
        "through a link; remove it, or choose another hydra.run.dir"
    )


def link_refused(path: Path) -> StorageError:
    return StorageError(
        f"cannot write {path}: it is a symbolic link (to {link_target(path)}), and fedper never "
        "writes through or over a link: remove it"
    )


@contextmanager
def open_own(path: str | Path) -> Iterator[IO[bytes]]:
    """One of fedper's files opened for reading, never through a link: a symbolic link, a
    FIFO or a device there is a `NotOwnFile`; a missing file, FileNotFoundError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO must not block
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise NotOwnFile(f"{path} is a symbolic link (to {link_target(path)})") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotOwnFile(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        yield handle


def temporary_beside(path: Path) -> tuple[int, Path]:
    """A new, uniquely named temporary file beside `path` (parallel jobs never collide), with
    the usual permissions rather than mkstemp's 0600: its descriptor and its path."""
    if link_target(path) is not None:
        raise link_refused(path)
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
    if link_target(path) is not None:  # a rename would replace the link, and the user's name
        discard(staged)
        raise link_refused(path)
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

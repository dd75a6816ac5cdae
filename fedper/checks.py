"""One-line config checks, each naming the key, the value and what would work.

The registries' entries (fedper.registry) and fedper.validation check settings with these.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from pathlib import Path

from omegaconf import ListConfig

from fedper.config_keys import nearest
from fedper.errors import ConfigError

INT64_MAX = 2**63 - 1  # the largest whole number numpy, torch and Flower's records all take


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def show(value) -> str:
    """A value as it is typed on the command line (YAML): true, null, 0.5."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, ListConfig):
        return str(list(value))
    return str(value)


def is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_range(key: str, value, low: int, high: int, context: str = "") -> None:
    """A whole number in low..high, or an error naming the key, the value and the range."""
    check(
        is_whole(value) and low <= value <= high,
        f"{key}={show(value)} is out of range{context}: use {low}-{high}",
    )


def check_whole(key: str, value, low: int, high: int = INT64_MAX) -> None:
    """A whole number (not a bool) in low..high; by default at most what numpy and torch take."""
    what = "not a whole number" if not is_whole(value) else "out of range"
    check(is_whole(value) and value >= low, f"{key}={show(value)} is {what}: use a whole number >= {low}")  # fmt: skip
    check(value <= high, f"{key}={show(value)} is out of range: use a whole number in {low}-{high}")


def check_number(key: str, value, low: float, high: float | None = None, low_open=False) -> None:
    """A finite number (not a bool) in [low, high) or [low, inf); (low, ...) with low_open."""
    lower = f"> {low}" if low_open else f">= {low}"
    use = f"a number {lower}" if high is None else f"a number in {'(' if low_open else '['}{low}, {high})"  # fmt: skip
    if not is_number(value):
        raise ConfigError(f"{key}={show(value)} is not a number: use {use}")
    inside = (value > low if low_open else value >= low) and (high is None or value < high)
    check(inside, f"{key}={show(value)} is out of range: use {use}")


def check_bool(key: str, value) -> None:
    check(isinstance(value, bool), f"{key}={show(value)} is not true or false: use true or false")


def check_choice(key: str, value, choices) -> None:
    """One of `choices`, or an error naming the nearest one and all of them."""
    if value in choices:
        return
    names = [show(c) for c in choices]
    close = nearest(show(value), names)
    hint = f" (did you mean {key}={close}?)" if close else ""
    raise ConfigError(f"{key}={show(value)} is unknown: use one of {', '.join(names)}{hint}")


def check_folder(key: str, value, must_create: bool = True, must_write: bool = False) -> None:
    """A folder that exists or can be created here (`must_create`), and that this process may
    write when it exists (`must_write`); a file, a dangling symlink, a symlink loop or a
    read-only folder there is refused in one line naming the key."""
    check(isinstance(value, str) and value.strip() != "", f"{key}={show(value)} is not a folder path: use a path")  # fmt: skip
    problem = folder_problem(Path(value).expanduser(), must_create, must_write)
    check(problem is None, f"{key}={value} {problem}")


def folder_problem(path: Path, must_create: bool = True, must_write: bool = False) -> str | None:
    """Why `path` cannot serve as a folder, worded to follow it ("is a file, not a folder:
    name a folder ..."); None when it can. Nothing is created."""
    if os.path.lexists(path):
        reason = not_a_folder(path, must_write)
        if reason is None:
            return None
        if reason == "is a file":
            return "is a file, not a folder: name a folder (created if missing)"
        if reason.endswith("does not exist"):
            return f"{reason}: create that folder, or name another"
        if reason == "is a symbolic link loop":
            return f"{reason}: name a folder"
        return f"{reason}: name a folder you can write"
    if not must_create:
        return None
    parent = next(p for p in path.absolute().parents if os.path.lexists(p))
    reason = not_a_folder(parent, must_write=True)
    if reason is None:
        return None
    return f"cannot be created ({parent} {reason}): name a folder you can write"


def not_a_folder(path: Path, must_write: bool) -> str | None:
    """What an existing `path` is instead of a (writable) folder, e.g. "is a file"."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be read ({error.strerror})"
    if not stat.S_ISDIR(info.st_mode):
        return "is a file"
    if must_write and not os.access(path, os.W_OK | os.X_OK):
        return f"is not writable ({why_not_writable(path)})"
    return None


def why_not_writable(path: Path) -> str:
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "read-only file system" if read_only else "no write permission"


def resolved_folder(key: str, value: str) -> Path:
    """`value` made absolute with every link followed; a symlink loop is one ConfigError."""
    try:
        return Path(value).expanduser().resolve()
    except (RuntimeError, OSError):  # a loop: RuntimeError up to Python 3.12, OSError after
        raise ConfigError(f"{key}={value} is a symbolic link loop: name a run directory") from None

"""One-line config checks, each naming the key, the value and what would work.

The registries' entries (fedper.registry) and fedper.validation check settings with these.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from omegaconf import ListConfig

from fedper.config_keys import nearest
from fedper.errors import ConfigError


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


def check_whole(key: str, value, low: int) -> None:
    what = "not a whole number" if not is_whole(value) else "out of range"
    check(is_whole(value) and value >= low, f"{key}={show(value)} is {what}: use a whole number >= {low}")  # fmt: skip


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


def check_folder(key: str, value, must_create: bool = True) -> None:
    """A folder that exists or can be created here; naming a file is refused."""
    check(isinstance(value, str) and value.strip() != "", f"{key}={show(value)} is not a folder path: use a path")  # fmt: skip
    path = Path(value).expanduser()
    if path.exists():
        check(path.is_dir(), f"{key}={value} is a file, not a folder: name a folder (created if missing)")  # fmt: skip
        return
    if not must_create:
        return
    parent = next(p for p in path.absolute().parents if p.exists())
    check(
        parent.is_dir() and os.access(parent, os.W_OK | os.X_OK),
        f"{key}={value} cannot be created ({parent} is {'not writable' if parent.is_dir() else 'a file'}): "
        "name a folder you can write",
    )  # fmt: skip

"""One registry style for what a config names: algorithms, models, datasets, partitions, engines.

An entry has a `name` (what the config says), a `label` (what figures and tables say) and
`check(cfg)`, the config checks that belong to it alone; `fedper.validation` runs the generic
checks, then the chosen entries'. A registry is a read-only mapping name -> entry in the order
entries were added (figures and tables list them so); `add` registers one, also as a class
decorator.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol, TypeVar

from omegaconf import DictConfig

from fedper.errors import ConfigError


class Entry(Protocol):
    name: str
    label: str

    def check(self, cfg: DictConfig) -> None:
        """One-line ConfigErrors for the settings only this entry reads."""
        ...


E = TypeVar("E", bound=Entry)


class Registry(Mapping[str, E]):
    """Entries by name; `key` is the config setting that picks one (`algorithm`, `dataset`...)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: dict[str, E] = {}

    def add(self, entry: E) -> E:
        """Register `entry` under its name; a second entry with a taken name is refused."""
        if entry.name in self._entries:
            raise ValueError(f"{self.key}={entry.name} is registered already")
        self._entries[entry.name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Unregister an entry (tests that add a toy one take it out again)."""
        del self._entries[name]

    def pick(self, name: object) -> E:
        """The entry a config names, or a ConfigError listing the names that would work."""
        if name not in self._entries:
            raise ConfigError(f"{self.key}={name} is unknown: use one of {', '.join(self)}")
        return self._entries[name]

    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

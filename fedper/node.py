"""One client node's side of a run, apart from the model: its folders, its name, a clock for
the phases of a call, and the errors that make a client unfit for the run (which stop it)."""

from __future__ import annotations

import socket
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedper.errors import FedPerError
from fedper.gpu import out_of_memory_error
from fedper.spec import RunSpec


class ClientSetupError(FedPerError):
    """A client cannot take part as configured; the server stops the run with this message."""


@dataclass(frozen=True)
class NodePaths:
    """Where one node keeps its datasets and its heads (`data-dir`, `state-dir`)."""

    data_dir: Path
    state_dir: Path

    @classmethod
    def of(cls, spec: RunSpec, node_config: Mapping) -> NodePaths:
        """The node's own folders from its node config, else the run's (shared) folders."""
        return cls(
            Path(str(node_config.get("data-dir") or spec.data_dir)).expanduser(),
            Path(str(node_config.get("state-dir") or spec.state_dir)).expanduser(),
        )


def node_name() -> str:
    return socket.gethostname()


class Stopwatch:
    """Seconds spent per phase of one call, reported to the server with the metrics."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started

    def metrics(self) -> dict[str, float]:
        return {f"seconds_{phase}": value for phase, value in self.seconds.items()}


@contextmanager
def stop_on_out_of_memory(cfg) -> Iterator[None]:
    """A CUDA out-of-memory error stops the run with what to change, instead of being
    tolerated as one failed client round after round."""
    try:
        yield
    except Exception as error:
        stop = out_of_memory_error(error, cfg)
        if stop is None:
            raise
        raise ClientSetupError(str(stop)) from None


def check_folders(paths: NodePaths) -> None:
    """The node sees its data folder and can write its head folder, or the run stops."""
    if not paths.data_dir.is_dir():
        raise ClientSetupError(
            f"data_dir {paths.data_dir} does not exist on node {node_name()}: give every node "
            "a path it sees (a shared file system for engine=ray, or the SuperNode's "
            "--node-config data-dir=...)"
        )
    try:
        paths.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ClientSetupError(
            f"state_dir {paths.state_dir} cannot be created on node {node_name()} "
            f"({error.strerror}): give every node a folder it can write"
        ) from None

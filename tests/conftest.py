"""Shared fixtures; the helpers are in tests/helpers (`from helpers import ...`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from helpers import set_task_identity

from fedper import client

# tests run offline and quietly
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# A suite started in the background of a non-interactive shell inherits SIGINT as ignored, and so
# would every run it starts (fedper.interrupts keeps an ignored signal ignored, as a launcher
# asks). The interrupt tests need SIGINT as a terminal delivers it, however the suite is started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def fresh_worker():
    """Each test starts as a new worker process would: no worker cached, a task identity."""
    set_task_identity()
    client._WORKERS.clear()
    yield
    client._WORKERS.clear()

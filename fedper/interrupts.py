"""SIGTERM and SIGINT: one clean path for the whole run, however they are sent.

The first signal becomes a KeyboardInterrupt in the main thread (`fedper.experiment` turns it
into "interrupted after round k of N; continue with: ..."); later ones are ignored so that
they cannot cut the clean-up short (SIGKILL still ends it).

While Ray starts (`fedper.ray_local.ray_starting`), a signal is only recorded and raised once
`ray.init` has returned: Ray forks its processes then, and an exception raised inside a fork
hook is swallowed with a lock held (the signal is lost and the run hangs later).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fedper.errors import ERROR_PREFIX

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupts:
    """This process's handler of SIGTERM and SIGINT (see the module docstring)."""

    def __init__(self) -> None:
        self.requested = False
        self.deferring = False
        self.owner = os.getpid()

    def handle(self, signum, frame) -> None:
        if os.getpid() != self.owner:
            return  # a child Ray forked, between fork and exec: its own program decides
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        self.requested = True
        if not self.deferring:
            raise KeyboardInterrupt

    def take(self) -> None:
        """Route SIGTERM and SIGINT here (again after a library took them), unless one came."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only
        for sig in SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, self.handle)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A stretch where a signal is only recorded; it is raised when the stretch ends."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
            self.take()
        if self.requested:
            raise KeyboardInterrupt


INTERRUPTS = Interrupts()


def exit_on_signal(message: str) -> None:
    """Until a run takes the signals (`signals_interrupt`), SIGTERM and SIGINT end the process
    with `message` as its one line and status 2: nothing of a run is being written then."""

    def leave(signum, frame) -> None:
        sys.stderr.write(f"{ERROR_PREFIX}{message}\n")
        sys.stderr.flush()
        os._exit(2)

    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, leave)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM (what schedulers send) takes the same clean path as Ctrl-C, for the whole run;
    the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; its owner handles them
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    INTERRUPTS.requested = False
    INTERRUPTS.owner = os.getpid()
    INTERRUPTS.take()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

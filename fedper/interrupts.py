"""SIGTERM and SIGINT: one clean path for the whole run, however they are sent.

The first signal becomes a KeyboardInterrupt in the main thread (`fedper.experiment` turns it
into "interrupted after round k of N; continue with: ..."); later ones are ignored so that
they cannot cut the clean-up short (SIGKILL still ends it).

Two moments need care. While Ray starts, the driver forks its processes, and an exception
raised inside a fork hook is swallowed with a lock held (the signal is lost and the run hangs
later): there the signal is only recorded, and raised once `ray.init` has returned. And Ray
installs SIGTERM handlers of its own (Python's calls `sys.exit`; the core worker's dumps a
stack and aborts): the first is kept out while Ray starts, the second is disabled by
`RAY_DISABLE_FAILURE_SIGNAL_HANDLER`, and ours are taken back once Ray runs.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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


def quiet_ray_signals() -> None:
    """Before Ray is imported: no core-worker handler that turns SIGTERM into a dump and abort."""
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")


@contextmanager
def ray_starting() -> Iterator[None]:
    """Around `ray.init` in this process: signals recorded, not raised; Ray's `sys.exit` handler
    kept out; and Ray's processes started in a session of their own, so that a SIGTERM to the
    run's process group reaches only this process, which then shuts Ray down in order. They
    still end with this process, however it ends (Ray's kernel fate-sharing, PR_SET_PDEATHSIG);
    where that is missing, they stay in this group, as Ray's own clean-up needs."""
    import ray._private.services as services
    import ray._private.utils as utils

    swaps = {(utils, "set_sigterm_handler"): lambda handler: None}
    if utils.detect_fate_sharing_support():
        swaps[(services, "ConsolePopen")] = in_own_session(services.ConsolePopen)
    with INTERRUPTS.deferred(), swapped(swaps):
        yield


def in_own_session(popen: type) -> type:
    class OwnSession(popen):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **{**kwargs, "start_new_session": True})

    return OwnSession


@contextmanager
def swapped(swaps: dict) -> Iterator[None]:
    """Module attributes replaced for a while, where the module still has them (Ray's private
    API may change: then Ray's own behaviour stays)."""
    saved = {}
    for (module, name), value in swaps.items():
        if hasattr(module, name):
            saved[(module, name)] = getattr(module, name)
            setattr(module, name, value)
    try:
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)

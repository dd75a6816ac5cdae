"""This run's own Ray, started so that signals and clean-up stay fedper's, and only this
machine's user can reach it.

Each local Ray instance keeps its session files in a temp folder of its own, marked in use by
a lock its run holds: removed when the run ends (also after Ctrl-C or SIGTERM), and by the next
run on the machine when its run was killed. Ray installs SIGTERM handlers of its own (Python's
calls `sys.exit`; the core worker's dumps a stack and aborts): the first is kept out while Ray
starts, the second is disabled, and fedper's are taken back once Ray runs
(`fedper.interrupts`). Ray 2.55's servers listen on every interface, with no switch for
loopback: Ray's token authentication (`RAY_AUTH_MODE=token`) with a random token of the run's
own makes each of them refuse a caller without it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedper.interrupts import INTERRUPTS

RAY_TEMP_PREFIX = "fedper-ray-"
RAY_AUTH_KEYS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
OWNER_LOCK = "fedper-owner.lock"


def ray_temp_dir() -> tuple[Path, int]:
    """A temp folder for this run's Ray session, and the descriptor of the lock that marks it
    as in use; folders whose owner died (SIGKILL) are removed first.

    The folder gets its final name only once its lock is held, so a sweep by a run starting at
    the same moment never mistakes it for a dead one.
    """
    sweep_ray_temp_dirs()
    staging = Path(tempfile.mkdtemp(prefix=f".{RAY_TEMP_PREFIX}new-"))
    owner = os.open(staging / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(owner, fcntl.LOCK_EX)
    final = staging.with_name(RAY_TEMP_PREFIX + staging.name.rpartition("-")[2])
    os.rename(staging, final)
    return final, owner


def sweep_ray_temp_dirs() -> None:
    """Remove the Ray temp folders of fedper runs that ended without cleaning up (killed)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{RAY_TEMP_PREFIX}*"):
        try:
            fd = os.open(folder / OWNER_LOCK, os.O_RDWR)
        except OSError:
            continue  # not a folder of this fedper version, or someone else's
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its run is alive
        finally:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)


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


@contextmanager
def token_authentication() -> Iterator[None]:
    """While a Ray instance of this run's own starts and runs: Ray's token authentication with
    a new random token, in this process's environment (which Ray's processes inherit) and in
    Ray's settings here; the environment as it was, afterwards."""
    saved = {key: os.environ.get(key) for key in RAY_AUTH_KEYS}
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    reload_ray_auth()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reload_ray_auth()


def reload_ray_auth() -> None:
    """Ray reads its authentication mode and token once per process (when it is imported):
    read them again from the environment."""
    from ray._raylet import AuthenticationTokenLoader, Config

    AuthenticationTokenLoader.instance().reset_cache()
    Config.initialize("")

"""Errors a user can cause and fix: each carries one sentence that says what would work."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

# how a one-line error reads on the console (the launcher finds the ServerApp's by it)
ERROR_PREFIX = "fedper: error: "


def resume_command(run_dir) -> str:
    """The command that continues a run after its last committed round."""
    return f"python -m fedper.main resume={run_dir}"


class FedPerError(Exception):
    """A problem with the user's settings or files, reported without a traceback."""


class ConfigError(FedPerError):
    """A configuration value is out of range or unknown."""


class DatasetNotFoundError(FedPerError):
    """Dataset files are missing and cannot be downloaded."""


class StateFileError(FedPerError):
    """A head or checkpoint file on disk is damaged or does not fit the model."""


class Interrupted(FedPerError):
    """Ctrl-C or SIGTERM: the files of every completed round are intact; the run can resume."""


class StorageError(FedPerError):
    """A file cannot be written: disk full, quota, read-only folder, missing permission."""


def exit_with_error(program: str, error: FedPerError) -> NoReturn:
    """Print `error` as the run's last line and end the process with status 2, now.

    Flower's message threads may still wait on replies from Ray actors that are gone, and the
    interpreter would wait for them at exit, forever: leave without joining them. Every caller
    reaches here after Ray is shut down and every file is committed and closed.
    """
    line = f"{program}: error: {error}"
    for handler in logging.getLogger().handlers:  # the run's log file (Hydra's main.log)
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.ERROR}))
            handler.flush()
    print(line, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)

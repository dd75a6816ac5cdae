"""Errors a user can cause and fix: each carries one sentence that says what would work."""


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

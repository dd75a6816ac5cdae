"""The folders Hydra makes for a run (`hydra.run.dir`, `hydra.sweep.dir`), checked before
Hydra makes them or writes its files there: a file, a dangling symlink, a symlink loop or a
read-only folder, and a link planted where Hydra writes (`main.log`, `.hydra/`), end the start
in one line instead of a traceback from inside Hydra, with nothing written."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fedper.atomic import link_refusal, link_target
from fedper.checks import check, check_folder
from fedper.errors import ConfigError, exit_with_error

# what Hydra writes into a run folder before fedper runs (fedper.rundir.HYDRA_FILES)
HYDRA_WRITES = ("main.log", ".hydra", ".hydra/config.yaml", ".hydra/hydra.yaml",
                ".hydra/overrides.yaml")  # fmt: skip


def check_hydra_folder(key: str, value) -> None:
    """The folder Hydra is about to make and write into, as `check_folder` checks a folder key."""
    check_folder(key, value, must_write=True)
    for name in HYDRA_WRITES:
        path = Path(value).expanduser() / name
        check(link_target(path) is None, link_refusal(path))


class CheckRunFolders(Callback):
    """Hydra callback (conf/base.yaml): the run's or the sweep's folder is usable, or the
    start ends with one line (`<program>: error: ...`) and exit status 2."""

    def __init__(self, program: str = "fedper") -> None:
        self.program = program

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.refuse_unusable("hydra.run.dir", config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.refuse_unusable("hydra.sweep.dir", config)

    def refuse_unusable(self, key: str, config: DictConfig) -> None:
        try:
            check_hydra_folder(key, OmegaConf.select(config, key))
        except ConfigError as error:
            exit_with_error(self.program, error)

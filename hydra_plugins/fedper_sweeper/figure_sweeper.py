"""The figure sweeper: Hydra's basic sweeper over a union of grids, with seeds and filters.

Configured in `conf/hydra/sweeper/figure.yaml`; every figure selects it through
`conf/figure/common/sweep.yaml`. Options, all under `hydra.sweeper`: `params` (swept in every grid, as in the basic sweeper), `grids` (the
sweep is the union of their products with `params`), `tied` (settings that go with a value),
`only` (keep these values), `seeds` (repeats of each setting), `dry_run` (list, run nothing).
The logic is in fedper.sweeps; this class reads the options and talks to the launcher.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from fedper.errors import ERROR_PREFIX, FedPerError
from fedper.progress import SWEEP_JOBS_ENV
from fedper.sweeps import (
    check_only,
    expand_jobs,
    prepare_datasets,
    resource_overrides,
    run_status,
)

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


class FigureSweeper(BasicSweeper):
    """Runs every job of a figure through the configured launcher, then reports failures."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        grids: list[dict[str, str]] | None = None,
        tied: dict[str, dict[str, dict[str, Any]]] | None = None,
        only: dict[str, list[Any]] | None = None,
        seeds: int | None = None,
        dry_run: bool = False,
    ) -> None:
        super().__init__(max_batch_size, _plain(params) or {})
        self.grids = _plain(grids) or [{}]
        self.tied = _plain(tied) or {}
        self.only = {key: list(values) for key, values in (_plain(only) or {}).items()}
        self.seeds = seeds
        self.dry_run = dry_run

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        jobs = self._jobs(arguments)
        if not jobs:
            log.info("No runs: hydra.sweeper.only=%s leaves none of this sweep's runs", self.only)
            return []
        client_cpus = self.config.client_resources.num_cpus
        extra = resource_overrides(self.config.hydra.launcher, os.cpu_count() or 1, client_cpus)
        jobs = [job + extra for job in jobs]
        folders, statuses, configs = zip(*(self._plan(job) for job in jobs), strict=True)
        each = f" (each with {' '.join(extra)})" if extra else ""
        if self.dry_run:
            print(f"{len(jobs)} runs in {sweep_dir}{each}:")
            for folder, status in zip(folders, statuses, strict=True):
                print(f"  {status:<26} {folder}")
            return []
        finished, new = statuses.count("finished"), statuses.count("to run")
        log.info(
            "%d runs in %s%s: %d finished (they return at once), %d to continue, %d to start",
            len(jobs), sweep_dir, each, finished, len(jobs) - finished - new, new,
        )  # fmt: skip
        try:
            prepare_datasets(c for c, s in zip(configs, statuses, strict=True) if s != "finished")
        except FedPerError as error:  # e.g. a dataset that is not there: once, not per run
            print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
            sys.exit(2)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        os.environ[SWEEP_JOBS_ENV] = str(len(jobs))  # "job k of N" (fedper.progress)
        self.overrides = list(self.split_overrides_to_chunks(jobs, self.max_batch_size))
        results: list[JobReturn] = []
        while not self.is_done():
            results += self.launcher.launch(self.get_job_batch(), initial_job_idx=len(results))
        self._report_failures(folders, results, sweep_dir)
        return [results]

    def _jobs(self, arguments: list[str]) -> list[list[str]]:
        """Every run's overrides; a bad setting ends the sweep in one line, as fedper.main does."""
        try:
            check_only(self.only)
            return expand_jobs(
                self.params, self.grids, arguments, tied=self.tied, only=self.only,
                seeds=self.seeds, first_seed=self.config.seed,
            )  # fmt: skip
        except FedPerError as error:
            print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
            sys.exit(2)

    def _plan(self, job: list[str]) -> tuple[str, str, DictConfig]:
        """The job's folder name (from its overrides), what launching it will do, its config."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, job)
        folder = str(cfg.hydra.sweep.subdir)
        return folder, run_status(Path(str(cfg.hydra.sweep.dir)) / folder, cfg.num_rounds), cfg

    @staticmethod
    def _report_failures(
        folders: tuple[str, ...], results: list[JobReturn], sweep_dir: Path
    ) -> None:
        """Every run was tried; name the ones that failed and exit 1 (Hydra raises the first)."""
        failed = [
            (folder, result._return_value)  # the exception (return_value would raise it)
            for folder, result in zip(folders, results, strict=True)
            if result.status == JobStatus.FAILED
        ]
        for folder, error in failed:
            log.error("Failed: %s: %s: %s", folder, type(error).__name__, error)
        if failed:
            print(
                f"fedper: {len(failed)} of {len(results)} runs failed (see main.log in their "
                f"folders under {sweep_dir}); rerun the same command to retry them",
                file=sys.stderr,
            )
            sys.exit(1)

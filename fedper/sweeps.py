"""The figure sweeps' logic: grids, filters and seeds turned into jobs, and each job's share.

The sweeps themselves are configs (`conf/figure/`), run by the figure sweeper in
`hydra_plugins/fedper_sweeper/`. Importing this module is cheap: Hydra imports the sweeper,
and with it this module, whenever it starts.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fedper.errors import FedPerError
from fedper.settings import not_setting_overrides  # noqa: F401  (registers fedper.not_settings)

log = logging.getLogger(__name__)
SLOTS_DIR = ".slots"  # in the sweep folder: one lock file per parallel job slot


class FigureError(FedPerError):
    """A figure sweep's settings (hydra.sweeper.*) cannot be used."""


# ---- for figure configs: `${fedper.head_layers:mobile}` ------------------------------------


def head_layer_counts(model_name: str) -> str:
    """Every head-layer count a model allows (1 to its max_head_layers), as a sweep value."""
    # the registries (with torch) load here, not when Hydra imports this module at every start
    from fedper.models import MODELS

    if model_name not in MODELS:
        raise FigureError(
            f"${{fedper.head_layers:{model_name}}}: no such model; use one of {', '.join(MODELS)}"
        )
    return ",".join(str(h) for h in range(1, MODELS[model_name].max_head_layers + 1))


OmegaConf.register_new_resolver("fedper.head_layers", head_layer_counts, replace=True)


# ---- a figure's jobs --------------------------------------------------------------------------


def check_only(only: Mapping[str, Sequence[Any]]) -> None:
    """Filter values of keys with a registry must be registered names (a typo is an error)."""
    from fedper.algorithms import ALGORITHMS
    from fedper.models import MODELS

    for key, registry in (("algorithm", ALGORITHMS), ("model_name", MODELS)):
        for value in only.get(key) or ():
            if str(value) not in registry:
                raise FigureError(
                    f"hydra.sweeper.only: {key}={value} is unknown: use one of "
                    f"{', '.join(registry)}"
                )


def expand_jobs(
    params: Mapping[str, Any],
    grids: Sequence[Mapping[str, Any]],
    arguments: Sequence[str],
    *,
    tied: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    only: Mapping[str, Sequence[Any]] | None = None,
    seeds: int | None = None,
    first_seed: int = 0,
) -> list[list[str]]:
    """Every job of a figure sweep, as the override list of one run.

    The sweep is the union over `grids` of cartesian products of `params`, the grid and the
    command-line `arguments` (for a key given twice the later wins, as with Hydra's basic
    sweeper). Then, in this order: unless the arguments sweep `seed` or the grid sets it, each
    setting runs with `seeds` seeds from `first_seed` on; `only` keeps the listed values of a key in the grids
    that set it (a grid without the key is untouched: FedAvg's reference run has no head
    count to filter); `tied` adds the settings that go with a value (e.g. a model's rounds at
    CPU scale) unless the arguments set them. Jobs listed twice are run once.
    """
    parser = OverridesParser.create()
    cli = parser.parse_overrides(list(arguments))
    cli_keys = {override.get_key_element() for override in cli}
    cli_sweeps_seed = any(o.get_key_element() == "seed" and o.is_sweep_override() for o in cli)
    jobs: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for grid in grids:
        figure_keys = set(params) | set(grid)
        lines = [f"{key}={value}" for key, value in {**params, **grid}.items()]
        values: dict[str, list[str]] = {}
        for override in parser.parse_overrides(lines) + cli:
            key = override.get_key_element()  # a later override of a key replaces the earlier
            if override.is_sweep_override():
                values[key] = list(override.sweep_string_iterator())
            else:
                values[key] = [override.get_value_element_as_str()]
        if seeds and not cli_sweeps_seed and "seed" not in figure_keys:
            values.pop("seed", None)
            values["seed"] = [str(seed) for seed in range(first_seed, first_seed + seeds)]
        for key, allowed in (only or {}).items():
            if key in figure_keys and key in values:
                keep = {str(value) for value in allowed}
                values[key] = [value for value in values[key] if value in keep]
        for combination in itertools.product(*values.values()):
            job = dict(zip(values, combination, strict=True))
            for key, table in (tied or {}).items():
                for tied_key, tied_value in (table.get(job.get(key)) or {}).items():
                    if tied_key not in cli_keys:
                        job[tied_key] = str(tied_value)
            line = tuple(f"{key}={value}" for key, value in job.items())
            if line not in seen:
                seen.add(line)
                jobs.append(list(line))
    return jobs


def rounds_done(run_dir: Path) -> int:
    """Rounds recorded in a run folder's results.json (0 when there is none yet)."""
    from fedper.results import RESULTS_JSON

    try:
        return len(json.loads((run_dir / RESULTS_JSON).read_text())["rounds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def run_status(run_dir: Path, num_rounds: int) -> str:
    """What a launch does with this run folder (the run itself decides; this only reports)."""
    done = rounds_done(run_dir)
    if done >= num_rounds:
        return "finished"
    return f"continues after round {done}" if done else "to run"


def prepare_datasets(configs: Iterable[DictConfig]) -> None:
    """Build each distinct dataset cache once, here, before the runs start.

    Runs that start together would all download or build the same cache, which is not safe
    to race; on a cluster the submitting machine is often the only one online. Keys that only
    change the partition (classes per client, seed, fraction) do not make a new cache.
    """
    from fedper.data import prepare_dataset

    seen = set()
    for cfg in configs:
        dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
        for key in ("num_classes", "seed", "fraction"):
            dataset.pop(key, None)
        key = json.dumps([cfg.data_dir, dataset], sort_keys=True)
        if key not in seen:
            seen.add(key)
            prepare_dataset(cfg)


# ---- each parallel job's share of the machine ------------------------------------------------


@dataclass(frozen=True)
class JobShare:
    """What one of several jobs running side by side on one machine may use."""

    num_cpus: int  # Ray's CPUs for the job (engine.num_cpus), and the most a client may ask
    cuda_visible_devices: str | None  # the job's GPU; None on a machine without GPUs


def job_share(slot: int, parallel_jobs: int, cpu_count: int, gpu_ids: Sequence[str]) -> JobShare:
    """The share of job slot `slot` (0-based) when `parallel_jobs` jobs run at once.

    Cores are split evenly, at least one each (a remainder stays idle rather than making jobs
    unequal); with GPUs, slot i gets GPU i, round robin when there are more jobs than GPUs.
    """
    if not 0 <= slot < parallel_jobs:
        raise ValueError(f"slot {slot} is not one of {parallel_jobs} parallel jobs")
    gpu = gpu_ids[slot % len(gpu_ids)] if gpu_ids else None
    return JobShare(num_cpus=max(1, cpu_count // parallel_jobs), cuda_visible_devices=gpu)


def parallel_jobs(launcher: Mapping[str, Any], cpu_count: int) -> int:
    """How many jobs the launcher runs at once on this machine (joblib's n_jobs; else one)."""
    n_jobs = launcher.get("n_jobs")
    if n_jobs is None:
        return 1  # the basic launcher runs jobs one by one; submitit runs each elsewhere
    return max(1, n_jobs if n_jobs > 0 else cpu_count + 1 + n_jobs)  # joblib: -1 = all cores


def resource_overrides(
    launcher: Mapping[str, Any], cpu_count: int, client_cpus: float
) -> list[str]:
    """The CPU settings every job of a launch gets: its share on this machine, or its allocation
    on a cluster (submitit's cpus_per_task). Empty when a job may use the whole machine."""
    n = parallel_jobs(launcher, cpu_count)
    if n > 1:
        cpus = job_share(0, n, cpu_count, ()).num_cpus  # the same for every slot
    elif launcher.get("cpus_per_task"):
        cpus = int(launcher["cpus_per_task"])
    else:
        return []
    overrides = [f"++engine.num_cpus={cpus}"]
    if client_cpus > cpus:
        overrides.append(f"client_resources.num_cpus={cpus}")
    return overrides


def visible_gpu_ids() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else every device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


_held_slot: tuple[Path, int, IO] | None = None  # this process's slot, kept while it lives


def claim_slot(lock_dir: Path, parallel: int) -> int:
    """A job slot no other live process of the sweep holds, kept for this process's lifetime.

    Slots belong to worker processes, not jobs: a worker keeps its GPU for every job it runs,
    because CUDA cannot switch devices in a process once initialised. The lock (flock) goes
    away with the process, so a replaced worker frees its slot.
    """
    global _held_slot
    if _held_slot is not None:
        if _held_slot[0] == lock_dir:
            return _held_slot[1]
        _held_slot[2].close()
        _held_slot = None
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(parallel):
        handle = open_slot(lock_dir, slot)  # stays open: the lock is the slot
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held_slot = (lock_dir, slot, handle)
        return slot
    # every slot is held: a worker that is being replaced has not exited yet; wait for one
    slot = os.getpid() % parallel
    handle = open_slot(lock_dir, slot)
    fcntl.flock(handle, fcntl.LOCK_EX)
    _held_slot = (lock_dir, slot, handle)
    return slot


def open_slot(lock_dir: Path, slot: int) -> IO:
    """A slot's lock file, created if missing; never truncated, never opened through a link."""

    def no_follow(path: str, flags: int) -> int:
        return os.open(path, flags | os.O_NOFOLLOW, 0o644)

    return open(lock_dir / f"slot{slot}.lock", "a", opener=no_follow)


class PinParallelJobs(Callback):
    """Hydra callback: each job of a parallel (joblib) sweep runs on its own GPU.

    Sets CUDA_VISIBLE_DEVICES in the job's process before the job starts Ray. The CPU share
    is not set here but by the sweeper as overrides (resource_overrides), so it is recorded
    with the run's settings.
    """

    def __init__(self) -> None:
        self.gpu_ids: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # counted once, in the launching process, which never trains
        n = parallel_jobs(config.hydra.launcher, os.cpu_count() or 1)
        if n > 1:
            self.gpu_ids = visible_gpu_ids()
        if len(self.gpu_ids) and n > len(self.gpu_ids):
            log.warning(
                "hydra.launcher.n_jobs=%d but %d GPU(s): runs share GPUs; n_jobs=%d gives each "
                "its own", n, len(self.gpu_ids), len(self.gpu_ids),
            )  # fmt: skip

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        cpu_count = os.cpu_count() or 1
        n = parallel_jobs(config.hydra.launcher, cpu_count)
        if n <= 1 or not self.gpu_ids:
            return
        slot = claim_slot(Path(config.hydra.sweep.dir) / SLOTS_DIR, n)
        share = job_share(slot, n, cpu_count, self.gpu_ids)
        os.environ["CUDA_VISIBLE_DEVICES"] = share.cuda_visible_devices

"""Progress people expect: round k/N with elapsed time and ETA for a run, job k of N for a sweep,
and the phase a benchmark is in.

In a terminal a run shows a live bar (rich) under its round lines; elsewhere (a log file, CI, a
pipe) each round line ends with the elapsed time and the ETA. A sweep's jobs say "job k of N"
through a Hydra callback (`SweepProgress`, configured in conf/base.yaml).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("fedper")
SWEEP_JOBS_ENV = "FEDPER_SWEEP_JOBS"  # how many jobs the running sweep has (set by its start)
SWEEP_STARTED_ENV = "FEDPER_SWEEP_STARTED"  # when it started (time.time())
JOBS_DONE_FILE = ".jobs_done"  # in the sweep folder: a line per finished job (parallel jobs too)


def clock(seconds: float) -> str:
    """1:02:03, 2:03."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def eta(elapsed: float, done: int, left: int) -> str:
    """What remains at the pace so far; unknown before the first step is done."""
    return clock(elapsed / done * left) if done > 0 else "?"


def is_terminal() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


class RunProgress:
    """Rounds of one run: a live bar in a terminal, an elapsed/ETA note for the round lines."""

    def __init__(self, num_rounds: int, first_round: int, live: bool | None = None) -> None:
        self.num_rounds = num_rounds
        self.first_round = first_round
        self.started = time.monotonic()
        live = is_terminal() if live is None else live
        self.bar = LiveBar(num_rounds, first_round - 1) if live else None

    def note(self, round_num: int) -> str:
        """`elapsed 1:05, ETA 4:20` after `round_num` (rounds of an earlier start not counted)."""
        elapsed = time.monotonic() - self.started
        done, left = round_num - self.first_round + 1, self.num_rounds - round_num
        return f"elapsed {clock(elapsed)}, ETA {eta(elapsed, done, left)}"

    def advance(self, round_num: int, accuracy: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(round_num, "" if accuracy is None else f"accuracy {accuracy:.3f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LiveBar:
    """rich's progress bar on stderr; the console log lines print above it meanwhile."""

    def __init__(self, total: int, completed: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("round"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[summary]}"),
            console=Console(stderr=True), transient=False,
        )  # fmt: skip
        self.task = self.progress.add_task("run", total=total, completed=completed, summary="")
        self.progress.start()
        self.moved = redirect_console_handlers(sys.stdout)

    def update(self, round_num: int, summary: str) -> None:
        self.progress.update(self.task, completed=round_num, summary=summary)

    def close(self) -> None:
        for handler, stream in self.moved:
            handler.setStream(stream)
        self.progress.stop()


def redirect_console_handlers(stream) -> list[tuple[logging.StreamHandler, Any]]:
    """Point the console log handlers at `stream` (rich's proxy, which prints above the bar)."""
    moved = []
    for logger in (logging.getLogger(), log):
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and handler.stream in (sys.__stdout__, sys.__stderr__):  # fmt: skip
                moved.append((handler, handler.setStream(stream)))
    return moved


@contextmanager
def phase(number: int, total: int, what: str) -> Iterator[None]:
    """`phase 2 of 3: the plain loop ...`, then how long it took."""
    log.info("phase %d of %d: %s", number, total, what)
    started = time.monotonic()
    yield
    log.info("phase %d of %d done in %s", number, total, clock(time.monotonic() - started))


def sweep_size(config: DictConfig) -> int | None:
    """The job count of a basic-sweeper multirun, from its overrides (a sweeper of its own,
    like the figure sweeper, sets it instead)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides([*config.hydra.overrides.task, *params])
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # an override only the sweeper itself can expand
        return None


class SweepProgress(Callback):
    """Hydra callback: each job of a multirun says `job k of N`, with the sweep's elapsed time
    and ETA (jobs finished so far, counted in the sweep folder, parallel jobs included)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEEP_STARTED_ENV] = str(time.time())
        done_file = Path(config.hydra.sweep.dir) / JOBS_DONE_FILE
        done_file.unlink(missing_ok=True)  # an earlier sweep's count
        if config.hydra.sweeper.get("_target_", "").endswith("BasicSweeper"):
            size = sweep_size(config)
            if size:
                os.environ[SWEEP_JOBS_ENV] = str(size)
        for name in ("hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_joblib_launcher._core"):  # fmt: skip
            logging.getLogger(name).setLevel(logging.WARNING)  # its `#k : ...` lines: ours say more

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if SWEEP_STARTED_ENV not in os.environ or config.hydra.mode.name != "MULTIRUN":
            return
        number = int(config.hydra.job.num) + 1
        total = os.environ.get(SWEEP_JOBS_ENV, "?")
        elapsed = time.time() - float(os.environ[SWEEP_STARTED_ENV])
        done = jobs_done(Path(config.hydra.sweep.dir))
        left = int(total) - done if total != "?" else 0
        log.info(
            "== job %d of %s: %s (sweep elapsed %s, ETA %s) ==", number, total,
            " ".join(config.hydra.overrides.task) or "defaults", clock(elapsed),
            eta(elapsed, done, left) if total != "?" else "?",
        )  # fmt: skip

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if SWEEP_STARTED_ENV in os.environ and config.hydra.mode.name == "MULTIRUN":
            with open(Path(config.hydra.sweep.dir) / JOBS_DONE_FILE, "a") as handle:
                handle.write(f"{config.hydra.job.num}\n")  # one short append: atomic


def jobs_done(sweep_dir: Path) -> int:
    try:
        return len((sweep_dir / JOBS_DONE_FILE).read_text().split())
    except OSError:
        return 0

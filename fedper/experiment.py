"""One experiment, start to end: check, claim the run directory, plan, hand to an engine.

Starting again in the same directory (or with `resume=<dir>`) continues after the last
committed round (fedper.planning says what a run directory holds). Clients keep their heads on
their own nodes; nothing in the run directory is read by a client. While it runs, the launcher
holds the directory's lock (`fedper.rundir`), whatever the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig

from fedper.checkpoint import load_checkpoint
from fedper.checks import check, resolved_folder, show
from fedper.commit import RoundCommit, committed_round
from fedper.device import describe_line
from fedper.engines import check_engine, run_on_engine
from fedper.errors import ConfigError, FedPerError, Interrupted
from fedper.interrupts import signals_interrupt
from fedper.planning import (
    claim_run_dir,
    prepare_run,
    resumed_config,
    save_settings,
    saved_settings,
    settings_of,
)
from fedper.results import final_line, load_results, start_line
from fedper.rundir import CONFIG_FILE, RunLock, check_owned, read_run_id, sweep_temporaries
from fedper.spec import RunPlan
from fedper.validation import validate_config

log = logging.getLogger("fedper")


def run_experiment(
    cfg: DictConfig,
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    engine: Callable[[RunPlan], None] | None = None,
) -> dict:
    """Everything `python -m fedper.main` does after Hydra composed the config.

    `overrides` are the command line's (what `resume=` may change); `engine` runs a plan
    (default: the configured engine; tests pass an in-process one).
    """
    resume = cfg.get("resume")
    check(resume is None or isinstance(resume, str), f"resume={show(resume)} is not a run directory: use resume=<dir>")  # fmt: skip
    run_dir = resolved_folder("resume", resume) if resume else Path(run_dir).resolve()
    if resume and not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"resume={run_dir} holds no fedper run ({CONFIG_FILE} is missing)")
    if not resume:
        check_start(cfg)  # before anything is written; a resumed config once it is read
    check_owned(run_dir)
    with signals_interrupt(), RunLock(run_dir):
        try:
            sweep_temporaries(run_dir)
            if resume:
                cfg = resumed_config(run_dir, cfg, overrides)
                check_start(cfg)
                if saved_settings(run_dir)["num_rounds"] != cfg.num_rounds:
                    save_settings(run_dir, settings_of(cfg))
            claim_run_dir(cfg, run_dir)
            if finished(cfg, run_dir):
                return load_results(run_dir)
            plan = prepare_run(cfg, run_dir)
            done = committed_round(run_dir)
            log.info(start_line(cfg, run_dir, done, cfg.engine.name))
            log.info(describe_line(plan.header["device"]))
            (engine or run_on_engine)(plan)
            check_complete(cfg, run_dir)
        except KeyboardInterrupt:
            raise interrupted(run_dir, cfg.num_rounds) from None
    results = load_results(run_dir)
    log.info(final_line(results, run_dir))
    return results


def check_start(cfg: DictConfig) -> None:
    """The whole config, once per start: the generic checks and the chosen entries' (the
    algorithm's, model's, dataset's and partition's in validation; the engine's here)."""
    validate_config(cfg)
    check_engine(cfg)


def finished(cfg: DictConfig, run_dir: Path) -> bool:
    """A run whose checkpoint has every round is not run again; its views are brought up to it."""
    run_id = read_run_id(run_dir)
    checkpoint = load_checkpoint(run_dir, run_id) if run_id is not None else None
    if checkpoint is None or checkpoint.round < cfg.num_rounds:
        return False
    RoundCommit(run_dir, run_id).restore()
    log.info("%s is complete (%d rounds): nothing to run", run_dir, checkpoint.round)
    return True


def interrupted(run_dir: Path, num_rounds: int) -> Interrupted:
    """Ctrl-C or SIGTERM: what is on disk, and the command that continues it."""
    if not (run_dir / CONFIG_FILE).is_file():
        return Interrupted("interrupted before the run started: run the same command again")
    return Interrupted(
        f"interrupted after round {committed_round(run_dir)} of {num_rounds}; continue with: "
        f"python -m fedper.main resume={run_dir}"
    )


def check_complete(cfg: DictConfig, run_dir: Path) -> None:
    """An engine that returned before the last round is a failure, never a finished run."""
    done = committed_round(run_dir)
    if done < cfg.num_rounds:
        raise FedPerError(
            f"the {cfg.engine.name} engine returned, but {run_dir} holds {done} of "
            f"{cfg.num_rounds} round(s); continue with: python -m fedper.main resume={run_dir}"
        )

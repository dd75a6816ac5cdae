"""Test helpers, imported as `from helpers import ...` (pytest puts tests/ on the path)."""

from helpers.config import ROOT, TINY, make_config
from helpers.harness import (
    SMALL,
    LocalGrid,
    newest_head,
    node_configs,
    plan_local,
    resume_run,
    run_local,
    run_settings,
    set_task_identity,
    start_run,
)
from helpers.processes import read_results, run_main

__all__ = [
    "ROOT",
    "SMALL",
    "TINY",
    "LocalGrid",
    "make_config",
    "newest_head",
    "node_configs",
    "plan_local",
    "read_results",
    "resume_run",
    "run_local",
    "run_main",
    "run_settings",
    "set_task_identity",
    "start_run",
]

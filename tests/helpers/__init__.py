"""Test helpers, imported as `from helpers import ...` (pytest puts tests/ on the path)."""

from helpers.config import ROOT, TINY, make_config
from helpers.harness import (
    SMALL,
    LocalGrid,
    newest_head,
    node_configs,
    plan_local,
    run_local,
    set_task_identity,
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
    "run_local",
    "run_main",
    "set_task_identity",
]

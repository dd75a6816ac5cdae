"""`python -m fedper.main` as a user runs it: a subprocess, and the results it leaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fedper.results import with_partition


def run_main(
    workdir: Path,
    overrides: list[str],
    run_dir: Path | None = None,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`python -m fedper.main` in `workdir` (datasets/ and client_states/ land there)."""
    args = [sys.executable, "-m", "fedper.main", *overrides]
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    return subprocess.run(
        args, cwd=workdir, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def read_results(run_dir: Path) -> dict:
    """results.json, with the partition the run keeps beside it (as load_results gives it)."""
    return with_partition(json.loads((run_dir / "results.json").read_text()), run_dir)

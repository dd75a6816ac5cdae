"""Ctrl-C or SIGTERM while `python -m fedper.main` starts (loading its libraries, composing the
config, checking it) is one line and status 2, never a traceback, and leaves no run files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY

# The child sends itself the signal when it reaches a chosen point (an audit event), so the
# test needs no timing: the signal lands at that point on a busy machine as on a quiet one.
SIGNAL_AT = """
import os, runpy, sys
signum, event, needle = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def hook(name, args, fired=[]):
    if name == event and not fired and needle in str(args[0]):
        fired.append(True)
        os.kill(os.getpid(), signum)
sys.addaudithook(hook)
sys.argv = ["fedper.main", *sys.argv[4:]]
runpy.run_module("fedper.main", run_name="__main__", alter_sys=True)
"""

POINTS = {
    "loading torch": ("import", "torch"),
    "composing the config": ("open", "base.yaml"),
    "writing Hydra's record": ("open", "overrides.yaml"),
}


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("point", list(POINTS))
def test_a_signal_during_start_up_is_one_line(tmp_path: Path, signum, point):
    event, needle = POINTS[point]
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_AT, str(int(signum)), event, needle, "dataset=digits",
         *TINY, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.splitlines()[-1] == (
        "fedper: error: interrupted before the run started: run the same command again"
    ), done.stderr
    assert not (run_dir / "run_config.json").exists()

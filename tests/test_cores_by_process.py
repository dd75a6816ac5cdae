"""scripts/cores_by_process.py: who used the CPU while a command ran, and its exit status."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import ROOT

SCRIPT = ROOT / "scripts" / "cores_by_process.py"


def watch(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--every", "0.05", "--window", "0.5", "--", *command],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_busy_child_is_counted_under_its_program_and_the_exit_status_passes_through():
    spin = "x = 0\nfor i in range(4 * 10**7):\n    x += i"
    parent = (
        f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}]); sys.exit(3)"
    )
    done = watch(sys.executable, "-c", parent)
    assert done.returncode == 3, done.stderr
    child = re.escape(sys.executable.rsplit("/", 1)[-1])
    spinning = [float(v) for v in re.findall(rf"\b{child}=([0-9.]+)", done.stdout)]
    waiting = [float(v) for v in re.findall(r"\bdriver=([0-9.]+)", done.stdout)]
    # CPU seconds, not shares of the machine: a loaded machine stretches both over more
    # windows but cannot make the waiting parent use more than the child that spins
    assert spinning and sum(spinning) > sum(waiting), done.stdout


def test_no_command_is_a_usage_error():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 2 and "give the command to watch" in done.stderr

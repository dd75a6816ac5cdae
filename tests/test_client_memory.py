"""scripts/client_memory.py: a client core's private memory, stage by stage."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import ROOT

SCRIPT = ROOT / "scripts" / "client_memory.py"
SMALL = ["dataset.size=240", "num_clients=2", "clients_per_round=2", "model.width_multiplier=0.25",
         "batch_size=16", "client_device=cpu"]  # fmt: skip


def test_every_stage_is_reported_and_importing_torch_takes_memory():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "2", *SMALL],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    stages = dict(re.findall(r"^(.+?)\s+(\d+) MB private$", done.stdout, re.MULTILINE))
    expected = ["python", "import torch", "import fedper.client_app", "client core built",
                "round 1: trained 1", "round 2: evaluated 1"]  # fmt: skip
    assert all(stage in stages for stage in expected), done.stdout
    # torch's libraries write tens of megabytes of their own while they load
    assert int(stages["import torch"]) > int(stages["python"]) + 20, done.stdout

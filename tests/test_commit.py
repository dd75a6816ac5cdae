"""A round is committed once: a kill after any write of the commit, then a resume, ends with
exactly the results of an uninterrupted run; in between, the files never disagree for long."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import plan_local, run_local

from fedper.checkpoint import load_checkpoint
from fedper.commit import KILL_ENV, KILLED_EXIT, STEPS, RoundCommit
from fedper.results import load_results
from fedper.rundir import read_run_id

TESTS = Path(__file__).resolve().parent
RUN = ["num_rounds=2"]
TIMING = ("seconds", "timing")  # wall-clock measurements: the only numbers that may differ
# a run of the harness in a process of its own, ended by the kill hook
CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from helpers import plan_local, run_local
run_local(plan_local(Path(sys.argv[2]), sys.argv[4:], name=sys.argv[3]))
"""


def comparable(rounds):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rounds]


def on_disk(run_dir):
    """Rounds named by results.json, rows of results.csv, and the checkpoint's round."""
    import json

    rounds = len(json.loads((run_dir / "results.json").read_text())["rounds"])
    rows = len(pd.read_csv(run_dir / "results.csv"))
    checkpoint = load_checkpoint(run_dir)
    return rounds, rows, checkpoint.round if checkpoint else 0


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("commit")


@pytest.fixture(scope="module")
def reference(root):
    run_local(plan_local(root, RUN, name="reference"))
    return root / "reference"


# every step of round 2's commit, and the step of round 1 that commits its first checkpoint
KILLS = [f"{step}@2" for step in STEPS] + ["rename:checkpoint.pt@1"]


@pytest.mark.slow
@pytest.mark.parametrize("kill", KILLS)
def test_a_kill_at_any_write_of_the_commit_then_resume_is_bit_identical(root, reference, kill):
    name = "run-" + kill.replace(":", "-").replace("@", "-")
    env = {**os.environ, KILL_ENV: kill, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(TESTS), str(root), name, *RUN],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert child.returncode == KILLED_EXIT, child.stderr[-3000:]
    run_dir = root / name
    step, round_num = kill.split("@")
    round_num = int(round_num)
    # what the kill left: the checkpoint is the commit; views may be one round off, never more
    committed = (
        round_num if STEPS.index(step) >= STEPS.index("rename:checkpoint.pt") else round_num - 1
    )
    json_rounds = round_num if step == "rename:results.json" else round_num - 1
    csv_rows = (
        round_num if STEPS.index(step) >= STEPS.index("rename:results.csv") else round_num - 1
    )
    assert on_disk(run_dir) == (json_rounds, csv_rows, committed)
    temporaries = [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert bool(temporaries) == (step != "rename:results.json")  # the last rename leaves none

    # the next start brings every view to the checkpoint before it runs anything
    RoundCommit(run_dir, read_run_id(run_dir)).restore()
    assert on_disk(run_dir) == (committed, committed, committed)

    run_local(plan_local(root, RUN, name=name))
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    resumed, expected = load_results(run_dir)["rounds"], load_results(reference)["rounds"]
    assert len(resumed) == 2 and comparable(resumed) == comparable(expected)
    columns = [c for c in pd.read_csv(reference / "results.csv").columns if c != "seconds"]
    pd.testing.assert_frame_equal(
        pd.read_csv(run_dir / "results.csv")[columns],
        pd.read_csv(reference / "results.csv")[columns],
    )
    assert torch_equal(load_checkpoint(run_dir).arrays, load_checkpoint(reference).arrays)


def torch_equal(a, b):
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_write_of_the_commit_has_a_kill_point():
    assert STEPS == (
        "stage:results.csv", "stage:results.png", "stage:checkpoint.pt", "stage:results.json",
        "rename:results.csv", "rename:results.png", "rename:checkpoint.pt", "rename:results.json",
    )  # fmt: skip

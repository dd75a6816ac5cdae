"""When things go wrong across a process boundary: kills, signals to a process or its group,
Ray's processes and temp folders, parallel runs, a full disk. (Failures inside one process are
in test_run_directory.py and test_commit.py.)"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, make_config, plan_local, read_results, run_local, run_main

from fedper.experiment import run_experiment
from fedper.results import load_results

pytestmark = pytest.mark.slow
RUN = ["dataset=digits", *TINY, "num_rounds=4"]
TIMING = ("seconds", "timing")
TESTS = Path(__file__).resolve().parent


def comparable(results):
    """Every number of every round but the wall-clock ones: summaries, per client, failures."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in results["rounds"]]


@pytest.fixture
def ray_tmp():
    """A private, short TMPDIR (Ray's socket paths must stay under 108 bytes), and an
    RAY_ADDRESS naming no cluster: a run that tried to join one would fail."""
    folder = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))
    env = {**os.environ, "TMPDIR": str(folder), "RAY_ADDRESS": "127.0.0.1:1"}
    yield folder, env
    shutil.rmtree(folder, ignore_errors=True)


def start(workdir, run_dir, env, extra=()):
    """`python -m fedper.main` in a session (and process group) of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "fedper.main", *RUN, *extra, f"hydra.run.dir={run_dir}"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def run_main_with(env, workdir, overrides, run_dir=None):
    """`run_main` with this test's environment."""
    extra = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    return subprocess.run(
        [sys.executable, "-m", "fedper.main", *overrides, *extra],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def wait_for(condition, process, what, timeout=300):
    """Poll a file-system condition with a deadline (no sleep stands in for an event)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    raise AssertionError(f"run did not reach: {what}")


def rounds_in(run_dir):
    path = run_dir / "results.json"
    return len(json.loads(path.read_text())["rounds"]) if path.is_file() else 0


def processes_of(folder):
    """Live processes started under this test's TMPDIR: the run and everything it started
    (Ray's processes run in sessions of their own, but inherit the environment)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            zombie = (proc / "stat").read_text().rpartition(")")[2].split()[0] == "Z"
        except OSError:
            continue
        if f"TMPDIR={folder}".encode() in environ and not zombie:
            found.append(int(proc.name))
    return found


def wait_until_gone(folder, timeout=180):
    # Ray's own processes notice a SIGKILLed driver by polling: on a busy machine that can
    # take more than a minute
    deadline = time.monotonic() + timeout
    while processes_of(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    return processes_of(folder)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    result = run_main(workdir, RUN, workdir / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    return read_results(workdir / "run")


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, reference, ray_tmp):
    temp, env = ray_tmp
    run_dir = tmp_path / "run"
    process = start(tmp_path, run_dir, env)
    wait_for(lambda: rounds_in(run_dir) >= 2, process, "round 2")
    heads = tmp_path / "client_states" / read_results(run_dir)["run_id"]

    def round_3_heads_on_disk():  # a kill in the middle of round 3, after some heads were saved
        try:
            return any(3 in torch.load(p, weights_only=True)["versions"] for p in heads.iterdir())
        except (OSError, RuntimeError, EOFError):
            return False

    wait_for(round_3_heads_on_disk, process, "a head of round 3")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 2 <= rounds_in(run_dir) < 4
    assert wait_until_gone(temp) == [], "Ray processes outlived a killed run"
    assert [p.name for p in temp.glob("fedper-ray-*")], "SIGKILL leaves the Ray folder behind"

    result = run_main_with(env, tmp_path, RUN, run_dir)  # the same command continues the run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "continuing after round" in result.stdout + result.stderr
    assert not list(temp.glob("fedper-ray-*")), "the killed run's Ray folder was not swept"
    assert comparable(read_results(run_dir)) == comparable(reference)


@pytest.mark.parametrize(
    ("sig", "to_group", "when"),
    [
        (signal.SIGTERM, True, "round 1"),
        (signal.SIGTERM, False, "round 1"),
        (signal.SIGINT, False, "round 1"),
        (signal.SIGTERM, True, "Ray starting"),  # while ray.init runs, Ray's own handler is set
    ],
)
def test_sigterm_and_sigint_stop_cleanly_leaving_nothing(
    tmp_path, reference, ray_tmp, sig, to_group, when
):
    temp, env = ray_tmp
    run_dir = tmp_path / "run"
    process = start(tmp_path, run_dir, env)
    if when == "round 1":
        wait_for(lambda: rounds_in(run_dir) >= 1, process, when)
    else:
        wait_for(lambda: list(temp.glob("fedper-ray-*/session_*")), process, when)
    (os.killpg if to_group else os.kill)(process.pid, sig)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 2, output[-3000:]
    done = rounds_in(run_dir)
    assert output.splitlines()[-1] == (
        f"fedper: error: interrupted after round {done} of 4; continue with: "
        f"python -m fedper.main resume={run_dir}"
    )
    for dump in ("Traceback", "*** SIGTERM received", "Aborted"):
        assert dump not in output[: output.rindex("fedper: error:")], output[-3000:]
    assert wait_until_gone(temp) == [], "processes of the run outlived it"
    ray_folders = [*temp.glob("*fedper-ray-*"), *temp.glob("ray*")]
    assert not ray_folders, "the run's Ray temp folder was left behind"
    if to_group:  # the run goes on from where it stopped, to the same numbers
        result = run_main_with(env, tmp_path, [f"resume={run_dir}"])
        assert result.returncode == 0, result.stderr[-3000:]
        assert comparable(read_results(run_dir)) == comparable(reference)


@pytest.mark.parametrize(
    ("module", "extra", "program"),
    [
        (
            "fedper.bench",
            ["dataset.size=400", "bench.prep_repeats=1", "hydra.run.dir=bench"],
            "fedper.bench",
        ),
        ("fedper.demo", [], "fedper"),  # writes under outputs/demo/
    ],
)
def test_the_benchmark_and_the_demo_end_on_sigterm_too(tmp_path, ray_tmp, module, extra, program):
    """Both run the experiment in-process, as `fedper.main` does, and must leave as promptly
    (Flower's message threads, still waiting on the stopped actors, are not joined)."""
    temp, env = ray_tmp
    process = subprocess.Popen(
        [sys.executable, "-m", module, *TINY, "num_rounds=4", *extra],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip

    def a_round_is_committed():
        return any(rounds_in(p.parent) >= 1 for p in tmp_path.rglob("results.json"))

    wait_for(a_round_is_committed, process, "round 1")
    os.killpg(process.pid, signal.SIGTERM)
    try:
        output = process.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"{module} did not end after SIGTERM") from None
    assert process.returncode == 2, output[-3000:]
    assert output.splitlines()[-1].startswith(f"{program}: error: interrupted after round ")
    assert wait_until_gone(temp) == [], "processes of the run outlived it"


def test_two_concurrent_runs_with_the_same_seed_keep_separate_state(tmp_path, reference, ray_tmp):
    _, env = ray_tmp
    first, second = start(tmp_path, tmp_path / "a", env), start(tmp_path, tmp_path / "b", env)
    for process in (first, second):
        output = process.communicate(timeout=900)[0]
        assert process.returncode == 0, output[-3000:]
    a, b = read_results(tmp_path / "a"), read_results(tmp_path / "b")
    assert a["run_id"] != b["run_id"]
    states = tmp_path / "client_states"
    assert {p.name for p in states.iterdir()} == {a["run_id"], b["run_id"]}
    for run_id in (a["run_id"], b["run_id"]):
        saved = torch.load(states / run_id / "client_0.pt", weights_only=True)
        assert sorted(saved["versions"]) == [3, 4]
    assert comparable(a) == comparable(b) == comparable(reference)


# round 1 as usual, then round 2 with a file-size limit below the checkpoint's size
FULL_DISK_CHILD = """
import resource, signal, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from helpers import make_config
from helpers import SMALL, run_local
from fedper.errors import FedPerError
from fedper.experiment import run_experiment

root, limit = Path(sys.argv[2]), int(sys.argv[3])
engine = lambda plan: run_local(plan)
first = [*SMALL, f"data_dir={root}/datasets", f"state_dir={root}/states", *sys.argv[4:]]
run_experiment(make_config(first), root / "run", first, engine=engine)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
again = [f"resume={root / 'run'}", "num_rounds=2"]
try:
    run_experiment(make_config(again), root / "unused", again, engine=engine)
except FedPerError as error:
    print(f"fedper: error: {error}")
    sys.exit(2)
"""


def test_a_full_disk_is_one_line_leaves_no_temporary_and_the_run_resumes(tmp_path):
    fedavg = ["algorithm=fedavg", "num_rounds=1"]  # no heads: the server's files meet the limit
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, str(TESTS), str(tmp_path), "200000", *fedavg],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    run_dir = tmp_path / "run"
    assert child.returncode == 2, child.stderr[-3000:]
    assert child.stdout.splitlines()[-1] == (
        f"fedper: error: cannot write {run_dir / 'checkpoint.pt'}: File too large (errno 27): "
        f"free space or make the folder writable, then continue with: python -m fedper.main "
        f"resume={run_dir}"
    )
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(load_results(run_dir)["rounds"]) == 1

    given = [f"resume={run_dir}"]  # space is back
    resumed = run_experiment(make_config(given), tmp_path / "unused", given,
                             engine=lambda plan: run_local(plan))  # fmt: skip
    reference = run_local(plan_local(tmp_path, ["algorithm=fedavg", "num_rounds=2"], "reference"))
    assert comparable(resumed) == comparable(reference.body)

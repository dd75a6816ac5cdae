"""When things go wrong: kills, interrupts, failing clients, damaged files, parallel runs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY, read_results, run_main

RUN = ["dataset=digits", *TINY, "num_rounds=4"]


def metrics(results):
    return [(r["round"], r["per_client"], r["train_loss"]) for r in results["rounds"]]


def start(workdir, run_dir, extra=()):
    return subprocess.Popen(
        [sys.executable, "-m", "fedper.main", *RUN, *extra, f"hydra.run.dir={run_dir}"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_round(run_dir, round_num, process, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = run_dir / "results.json"
        if path.is_file() and len(json.loads(path.read_text())["rounds"]) >= round_num:
            return
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    raise AssertionError(f"run did not reach round {round_num}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    result = run_main(workdir, RUN, workdir / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    return read_results(workdir / "run")


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, reference):
    run_dir = tmp_path / "run"
    process = start(tmp_path, run_dir)
    wait_for_round(run_dir, 2, process)
    time.sleep(0.3)  # let round 3 start, so some heads of the unfinished round reach disk
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = read_results(run_dir)
    assert 2 <= len(partial["rounds"]) < 4
    # the same command in the same run directory continues the run
    result = run_main(tmp_path, RUN, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "continuing after round" in result.stdout + result.stderr
    resumed = read_results(run_dir)
    assert resumed["run_id"] == partial["run_id"]
    assert metrics(resumed) == metrics(reference)


def test_ctrl_c_stops_cleanly_and_resume_finishes_the_run(tmp_path, reference):
    run_dir = tmp_path / "run"
    process = start(tmp_path, run_dir)
    wait_for_round(run_dir, 1, process)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 2
    assert f"resume={run_dir}" in output and "Traceback" not in output
    # no Ray worker of this run survives it
    ray_workers = subprocess.run(["pgrep", "-f", "ray::ClientAppActor", "-s", str(process.pid)],
                                 capture_output=True, text=True)  # fmt: skip
    assert ray_workers.stdout.strip() == ""
    result = run_main(tmp_path, [f"resume={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics(read_results(run_dir)) == metrics(reference)


def test_a_failing_client_leaves_the_round_to_the_others(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*RUN, "num_rounds=3", "debug.fail_client=1", "debug.fail_round=2"]
    result = run_main(tmp_path, overrides, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = read_results(run_dir)["rounds"]
    assert [r["clients_failed"] for r in rounds] == [0, 1, 0]
    failure = rounds[1]["failures"][0]
    assert failure["cid"] == 1 and failure["phase"] == "train"
    assert failure["reason"] == "injected failure of client 1 in round 2 train"
    assert rounds[1]["trained_clients"] == [0, 2, 3]
    assert "client 1 failed in train: injected failure" in result.stdout + result.stderr


def test_too_few_successful_clients_stop_the_run_with_a_clear_message(tmp_path):
    overrides = [*RUN, "num_rounds=2", "debug.fail_client=0", "debug.fail_round=1",
                 "debug.fail_phase=evaluate", "min_successful_clients=4"]  # fmt: skip
    result = run_main(tmp_path, overrides, tmp_path / "run")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "only 3 client(s) succeeded, fewer than min_successful_clients=4" in result.stderr


def test_a_truncated_checkpoint_is_reported_before_ray_starts(tmp_path):
    run_dir = tmp_path / "run"
    assert run_main(tmp_path, [*RUN, "num_rounds=2"], run_dir).returncode == 0
    checkpoint = run_dir / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:64])
    # an unfinished run (one round recorded) must read its checkpoint to go on
    results = read_results(run_dir)
    (run_dir / "results.json").write_text(json.dumps({**results, "rounds": results["rounds"][:1]}))
    result = run_main(tmp_path, [f"resume={run_dir}"])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "checkpoint.pt is damaged" in result.stderr and "fresh run" in result.stderr
    assert checkpoint.stat().st_size == 64, "the damaged file was replaced"


def test_a_run_directory_with_other_settings_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    assert run_main(tmp_path, [*RUN, "num_rounds=1"], run_dir).returncode == 0
    result = run_main(tmp_path, [*RUN, "num_rounds=1", "learning_rate=0.1"], run_dir)
    assert result.returncode == 2
    assert "learning_rate: 0.01 then, 0.1 now" in result.stderr


def test_two_concurrent_runs_with_the_same_seed_keep_separate_state(tmp_path, reference):
    first, second = start(tmp_path, tmp_path / "a"), start(tmp_path, tmp_path / "b")
    for process in (first, second):
        output = process.communicate(timeout=600)[0]
        assert process.returncode == 0, output[-3000:]
    a, b = read_results(tmp_path / "a"), read_results(tmp_path / "b")
    assert a["run_id"] != b["run_id"]
    states = tmp_path / "client_states"
    assert {p.name for p in states.iterdir()} == {a["run_id"], b["run_id"]}
    for run_id in (a["run_id"], b["run_id"]):
        saved = torch.load(states / run_id / "client_0.pt", weights_only=True)
        assert sorted(saved["versions"]) == [3, 4]
    assert metrics(a) == metrics(b) == metrics(reference)

"""The launcher in one process (clients through the in-process harness, no Ray): one run per
directory, never overwriting, damaged files reported before any engine, resume with overrides,
interrupts, and partial rounds said out loud."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys

import pandas as pd
import pytest
from helpers import SMALL, make_config, resume_run, run_local, start_run

from fedper.commit import RoundCommit
from fedper.errors import ConfigError, FedPerError, Interrupted, StateFileError
from fedper.experiment import run_experiment
from fedper.results import PARTIAL_LABEL, load_results, results_figure
from fedper.rundir import RunDirError, RunLock, checked_json

TIMING = ("seconds", "timing")


def comparable(results):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in results["rounds"]]


def no_engine(plan):
    raise AssertionError("the engine must not start")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A complete 2-round run, copied by tests that damage it."""
    root = tmp_path_factory.mktemp("finished")
    return root, start_run(root, run="run")


def copy_of(finished, name):
    root, _ = finished
    shutil.copytree(root / "run", root / name)
    return root / name


def test_a_second_start_in_a_directory_in_use_is_refused_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        with pytest.raises(RunDirError) as error:
            start_run(tmp_path, engine=no_engine)
    assert str(error.value) == (
        f"{run_dir} is in use by another fedper run (PID {os.getpid()} on "
        f"{socket.gethostname()}): wait for it to end or stop it, or choose another hydra.run.dir"
    )


@pytest.mark.slow
def test_a_lock_held_by_another_process_names_it_and_dies_with_it(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from fedper.rundir import RunLock\n"
         f"with RunLock({str(run_dir)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunDirError, match=rf"\(PID {holder.pid} on "):
            start_run(tmp_path, engine=no_engine)
    finally:
        holder.kill()  # SIGKILL: no clean-up of any kind
        holder.wait()
    start_run(tmp_path)  # the lock went with the process
    assert len(load_results(run_dir)["rounds"]) == 2


@pytest.mark.parametrize("foreign", ["results.csv", "notes.txt"])
def test_a_folder_of_someone_elses_files_is_refused_and_left_alone(tmp_path, foreign):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / foreign).write_text("my own numbers\n")
    with pytest.raises(RunDirError) as error:
        start_run(tmp_path, run="mine", engine=no_engine)
    assert str(error.value) == (
        f"{run_dir} holds files fedper did not write ({foreign}): choose another hydra.run.dir "
        "(fedper never writes into a folder that is not a fedper run)"
    )
    assert [p.name for p in run_dir.iterdir()] == [foreign]
    assert (run_dir / foreign).read_text() == "my own numbers\n"


def test_hydras_files_do_not_count_as_foreign(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "main.log").write_text("")
    start_run(tmp_path, ["num_rounds=1"])
    assert len(load_results(run_dir)["rounds"]) == 1


def damage_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = os.urandom(64)
    path.write_bytes(bytes(data))


def test_damaged_run_files_are_reported_before_any_engine_and_never_used(finished):
    root, _ = finished
    cases = {
        "run_config.json": (lambda p: p.write_text(p.read_text().replace("0.01", "0.02")),
                            "is damaged (its checksum does not match): restore it, or start a "
                            "fresh run in a new directory"),
        "run_id": (lambda p: p.write_text(p.read_text()[:20]),
                   "is damaged (JSONDecodeError): restore it, or start a fresh run in a new "
                   "directory"),
        "checkpoint.pt": (damage_middle, "start a fresh run in a new directory"),
    }  # fmt: skip
    for name, (damage, way_out) in cases.items():
        run_dir = copy_of(finished, f"damaged-{name}")
        damage(run_dir / name)
        before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        with pytest.raises(StateFileError) as error:
            start_run(root, run=run_dir.name, engine=no_engine)
        message = str(error.value)
        assert message.startswith(f"{run_dir / name} is damaged (") and message.endswith(way_out)
        after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        assert after == before, f"{name}: a file changed"


def test_a_run_id_that_is_not_one_never_names_a_folder(finished):
    root, _ = finished
    run_dir = copy_of(finished, "escape")
    body = {"run_id": "../../escaped"}
    from fedper.rundir import checked_json

    (run_dir / "run_id").write_text(checked_json(body))
    with pytest.raises(StateFileError) as error:
        resume_run(run_dir, ["num_rounds=3"], engine=no_engine)
    assert str(error.value) == (
        f"{run_dir / 'run_id'} holds '../../escaped', not a run id (like 20240131-235959-0123abcd):"
        " restore it, or start a fresh run in a new directory"
    )
    assert not (root / "escaped").exists() and not (root.parent / "escaped").exists()


def test_a_damaged_results_json_is_rebuilt_from_the_checkpoint(finished, caplog):
    root, results = finished
    run_dir = copy_of(finished, "damaged-results")
    path = run_dir / "results.json"
    path.write_text(path.read_text()[:-200])
    with caplog.at_level(logging.INFO, logger="fedper"):
        again = start_run(root, run=run_dir.name, engine=no_engine)
    assert f"{path} is damaged (JSONDecodeError): rebuilt from checkpoint.pt" in caplog.text
    assert again == load_results(run_dir) and comparable(again) == comparable(results)


def test_resume_refuses_any_override_but_a_higher_num_rounds(finished):
    run_dir = copy_of(finished, "overrides")
    with pytest.raises(ConfigError) as error:
        resume_run(run_dir, ["num_rounds=3", "learning_rate=0.5"], engine=no_engine)
    assert str(error.value) == (
        f"resume={run_dir} continues a run with its own settings, and learning_rate=0.5 would "
        "change them: only num_rounds may be raised (and where it runs: engine, devices, "
        "client_resources, performance, data_dir, state_dir; and restart_lost_heads); start a "
        "new run for other settings"
    )
    with pytest.raises(ConfigError) as error:
        resume_run(run_dir, ["num_rounds=1"], engine=no_engine)
    assert str(error.value) == (
        f"num_rounds=1 is below the run's num_rounds=2: resume={run_dir} may only raise it"
    )
    with pytest.raises(ConfigError, match=f"resume={run_dir} continues .* dataset=cifar10 would"):
        resume_run(run_dir, ["dataset=cifar10"], engine=no_engine)


def test_resume_from_another_folder_raises_num_rounds_bit_identically(tmp_path, monkeypatch):
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(first)
    relative = [*SMALL, "data_dir=datasets", "state_dir=states", "num_rounds=1"]
    run_experiment(make_config(relative), first / "run", relative, engine=run_local)
    run_id = load_results(first / "run")["run_id"]

    monkeypatch.chdir(elsewhere)
    resumed = resume_run(first / "run", ["num_rounds=2"])
    assert not any(elsewhere.iterdir()), "the resumed run looked for its folders here"
    heads = sorted(p.name for p in (first / "states" / run_id).iterdir())
    assert heads == ["client_0.pt", "client_1.pt", "client_2.pt"]
    saved = json.loads((first / "run" / "run_config.json").read_text())["config"]
    assert (saved["num_rounds"], saved["state_dir"]) == (2, str(first / "states"))

    monkeypatch.chdir(first)
    straight = [*SMALL, "data_dir=datasets", "state_dir=states", "num_rounds=2"]
    reference = run_experiment(make_config(straight), first / "ref", straight, engine=run_local)
    assert comparable(resumed) == comparable(reference)


def test_sigterm_and_sigint_take_the_clean_path_and_resume_is_bit_identical(
    tmp_path, finished, monkeypatch
):
    _, reference = finished
    commit = RoundCommit.commit
    for sig, name in ((signal.SIGTERM, "term"), (signal.SIGINT, "int")):

        def commit_then_signal(self, entry, arrays, sig=sig):
            commit(self, entry, arrays)
            os.kill(os.getpid(), sig)  # arrives in the middle of the run, as from a scheduler

        monkeypatch.setattr(RoundCommit, "commit", commit_then_signal)
        handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        with pytest.raises(Interrupted) as error:
            start_run(tmp_path, run=name)
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
        run_dir = tmp_path / name
        assert str(error.value) == (
            f"interrupted after round 1 of 2; continue with: python -m fedper.main resume={run_dir}"
        )
        monkeypatch.setattr(RoundCommit, "commit", commit)
        assert comparable(resume_run(run_dir)) == comparable(reference)


def test_scheduled_sampled_evaluation_is_marked_everywhere_and_resumes_bit_identically(
    tmp_path, caplog, monkeypatch
):
    schedule = ["num_rounds=3", "evaluate_every=2", "clients_per_evaluation=2"]
    with caplog.at_level(logging.INFO, logger="fedper"):
        reference = start_run(tmp_path, schedule, run="ref")
    rounds = reference["rounds"]
    assert [r["evaluated"] for r in rounds] == [False, True, True]
    assert rounds[0]["accuracy"] is None and rounds[0]["loss"] is None
    assert set(rounds[0]["per_client"]) == {"0", "1", "2"}  # trained, not evaluated
    assert all("accuracy" not in c for c in rounds[0]["per_client"].values())
    assert rounds[1]["clients_expected"] == 2 and rounds[1]["clients_ok"] == 2
    assert sum("accuracy" in c for c in rounds[1]["per_client"].values()) == 2
    assert rounds[2]["clients_ok"] == 3  # the last round evaluates every client
    table = pd.read_csv(tmp_path / "ref" / "results.csv")
    assert table["evaluated"].tolist() == [False, True, True] and pd.isna(table["accuracy"][0])
    assert "round 1/3  not evaluated  train loss" in caplog.text
    [accuracy_line] = results_figure(reference).axes[0].lines
    assert list(accuracy_line.get_xdata()) == [2, 3]  # no point for round 1
    # a run stopped after its unevaluated round resumes to the same numbers
    commit = RoundCommit.commit

    def commit_then_stop(self, entry, arrays):
        commit(self, entry, arrays)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(RoundCommit, "commit", commit_then_stop)
    with pytest.raises(Interrupted):
        start_run(tmp_path, schedule, run="stopped")
    monkeypatch.setattr(RoundCommit, "commit", commit)
    assert comparable(resume_run(tmp_path / "stopped")) == comparable(reference)


def test_a_partial_round_is_marked_everywhere_and_counted_at_the_end(tmp_path, caplog):
    failing = ["faults.fail_client=1", "faults.fail_round=2", "min_successful_clients=2"]
    with caplog.at_level(logging.INFO, logger="fedper"):
        results = start_run(tmp_path, failing)
    run_dir = tmp_path / "run"
    assert [r["partial"] for r in results["rounds"]] == [False, True]
    assert results["rounds"][1]["failures"] == [
        {"cid": 1, "phase": "train", "reason": "injected failure of client 1 in round 2 train"}
    ]
    assert pd.read_csv(run_dir / "results.csv")["partial"].tolist() == [False, True]
    assert "round 2/2  accuracy" in caplog.text
    assert "PARTIAL: 1 client failure(s), 3 of 3 evaluated" in caplog.text
    assert (
        caplog.records[-1]
        .getMessage()
        .endswith("partial rounds (fewer clients than asked): 1 (round 2)")
    )
    figure = results_figure(results)
    marked = [line for line in figure.axes[0].lines if line.get_label() == PARTIAL_LABEL]
    assert [list(line.get_xdata()) for line in marked] == [[2]]


def test_by_default_a_failing_client_stops_the_run_with_its_reason(tmp_path):
    with pytest.raises(Exception) as error:
        start_run(tmp_path, ["faults.fail_client=1", "faults.fail_round=2"])
    assert str(error.value) == (
        "round 2 train: only 2 of 3 client(s) succeeded, fewer than min_successful_clients=3 "
        "(partition-id 1: injected failure of client 1 in round 2 train); "
        f"continue with: python -m fedper.main resume={tmp_path / 'run'}"
    )
    assert len(load_results(tmp_path / "run")["rounds"]) == 1


def test_held_clients_wait_for_their_release_file_and_give_up_after_the_most_seconds(tmp_path):
    release = tmp_path / "release"
    hold = ["faults.hold_round=2", "faults.hold_phase=train", f"faults.hold_until={release}",
            "faults.hold_seconds_max=1"]  # fmt: skip
    with pytest.raises(Exception) as error:
        start_run(tmp_path, hold, run="never_released")
    assert f"(partition-id 0: held 1 s and {release} never appeared" in str(error.value)
    assert len(load_results(tmp_path / "never_released")["rounds"]) == 1
    release.touch()
    assert len(start_run(tmp_path, hold, run="released")["rounds"]) == 2


def test_a_run_directory_with_other_settings_is_refused(finished):
    root, _ = finished
    with pytest.raises(ConfigError) as error:
        start_run(root, ["learning_rate=0.1"], engine=no_engine)
    assert str(error.value) == (
        f"{root / 'run'} holds a run with other settings (learning_rate: 0.01 then, 0.1 now): "
        f"choose another hydra.run.dir, or continue that run with resume={root / 'run'}"
    )


def test_a_complete_run_is_not_run_again(finished, caplog):
    root, results = finished
    with caplog.at_level(logging.INFO, logger="fedper"):
        again = start_run(root, engine=no_engine)
    assert (
        again == results and f"{root / 'run'} is complete (2 rounds): nothing to run" in caplog.text
    )


def test_where_a_run_runs_may_change_between_legs_and_on_resume(tmp_path):
    first = start_run(tmp_path, ["num_rounds=1", "engine.num_cpus=1"])
    # the same command with another CPU share (a sweep continued with other --jobs) continues
    second = start_run(tmp_path, ["num_rounds=1", "client_resources.num_cpus=2"])
    assert comparable(second) == comparable(first)
    # resume may move it (engine, devices, resources) and raise num_rounds, nothing else
    resumed = resume_run(tmp_path / "run", ["num_rounds=2", "engine.num_cpus=2"])
    assert [r["round"] for r in resumed["rounds"]] == [1, 2]
    with pytest.raises(ConfigError, match="learning_rate=0.5 would change them"):
        resume_run(tmp_path / "run", ["learning_rate=0.5"], engine=no_engine)


def heads_of(root, run_dir):
    return root / "states" / load_results(run_dir)["run_id"]


def test_a_head_lost_between_legs_stops_the_resume_until_the_client_is_restarted(tmp_path):
    first = start_run(tmp_path, ["num_rounds=1"])
    run_dir = tmp_path / "run"
    assert first["rounds"][0]["trained_clients"] == [0, 1, 2]
    lost = heads_of(tmp_path, run_dir) / "client_1.pt"
    lost.unlink()  # a wiped state_dir, or a node started with another one
    with pytest.raises(FedPerError) as error:
        resume_run(run_dir, ["num_rounds=2"])
    assert str(error.value) == (
        f"client 1 trained in round 1, but its head from that round is not in {lost} (there is "
        "none): restore the node's state_dir, or resume with restart_lost_heads=true to start "
        "this client over from its initial head, or start a fresh run"
    )
    assert len(load_results(run_dir)["rounds"]) == 1, "a round was committed without client 1"

    resumed = resume_run(run_dir, ["num_rounds=2", "restart_lost_heads=true"])
    assert [r.get("restarted_heads") for r in resumed["rounds"]] == [None, [1]]
    assert resumed["config"]["restart_lost_heads"] is True
    resume_run(run_dir, ["num_rounds=3"])  # client 1 has a head from round 2 again


def test_a_head_file_restored_from_an_older_copy_stops_the_resume(tmp_path):
    start_run(tmp_path, ["num_rounds=1"])
    run_dir = tmp_path / "run"
    head = heads_of(tmp_path, run_dir) / "client_2.pt"
    after_round_1 = head.read_bytes()
    resume_run(run_dir, ["num_rounds=2"])
    head.write_bytes(after_round_1)  # versions {1}, where the server counts round 2
    with pytest.raises(FedPerError, match=r"^client 2 trained in round 2, but .*\(its newest is "
                       r"from round 1\): restore the node's state_dir, or resume with "
                       "restart_lost_heads=true"):  # fmt: skip
        resume_run(run_dir, ["num_rounds=3"])


@pytest.mark.parametrize("resumed", [False, True])
def test_a_start_checks_its_config_and_claims_its_directory_once(tmp_path, monkeypatch, resumed):
    import fedper.experiment
    import fedper.planning

    calls = []
    for module in (fedper.experiment, fedper.planning):
        for name in ("validate_config", "claim_run_dir"):
            real = getattr(fedper.planning if name == "claim_run_dir" else fedper.validation, name)
            counted = lambda *a, _n=name, _f=real: calls.append(_n) or _f(*a)  # noqa: E731
            monkeypatch.setattr(module, name, counted, raising=False)
    if resumed:
        start_run(tmp_path, ["num_rounds=1"])
        calls.clear()
        resume_run(tmp_path / "run", ["num_rounds=2"])
    else:
        start_run(tmp_path)
    assert sorted(calls) == ["claim_run_dir", "validate_config"]


def test_a_run_folder_is_the_same_run_wherever_its_data_and_heads_live(tmp_path):
    """A fresh clone or another machine has other absolute folders: same run, not refused."""
    start_run(tmp_path, ["num_rounds=1"])
    shutil.copytree(tmp_path / "datasets", tmp_path / "elsewhere")
    moved = [f"data_dir={tmp_path / 'elsewhere'}", "num_rounds=1"]
    assert start_run(tmp_path, moved, engine=no_engine)["rounds"]  # finished: returns at once


def test_a_run_folder_written_with_a_debug_section_is_still_the_same_run(finished):
    run_dir = copy_of(finished, "debug")
    stored = json.loads((run_dir / "run_config.json").read_text())
    body = stored["config"]
    body["debug"] = body.pop("faults")
    del body["evaluate_every"], body["clients_per_evaluation"]  # written before they existed
    (run_dir / "run_config.json").write_text(checked_json({"config": body}))
    assert resume_run(run_dir, engine=no_engine)["rounds"]
    assert start_run(run_dir.parent, run="debug", engine=no_engine)["rounds"]

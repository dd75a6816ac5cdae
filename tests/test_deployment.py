"""Flower's Deployment Engine end to end on loopback, on federations shared by the module (the
restart test starts one with a database of its own), whose SuperNodes fork their ClientApps
warm (`fedper.engines.warm`): a run matches the simulation with heads on their nodes, and so
does one on SuperNodes that start ClientApps with Flower's own launcher; a SuperLink killed
mid-run, or a killed `flwr run`, is one line and never "finished"; the SuperLink restarted
with its database keeps its nodes and `resume=` finishes as an uninterrupted run; a plain
`flwr run` prints the launcher's first and last lines; TLS with SuperNode authentication
finishes a run, refuses an unregistered node and tells a launcher without the CA what to set."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, read_results, run_main

from fedper.bench.local_federation import Federation, flower_env
from fedper.bench.sampling import psutil_module
from fedper.certificates import make_certificates
from fedper.engines.deployment import FLOWER_CONNECTION, flwr_command, write_flower_config

pytestmark = pytest.mark.slow
RUN = ["dataset=digits", "model.width_multiplier=0.25", "num_clients=2", "clients_per_round=2",
       "num_rounds=2", "num_epochs=1", "batch_size=16", "client_device=cpu",
       "engine.connect_timeout=300"]  # fmt: skip
START_TIMEOUT = 300  # seconds a SuperLink or SuperNode may take to listen on a loaded machine


def per_client(results: dict) -> list[dict]:
    return [entry["per_client"] for entry in results["rounds"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The same run in the simulation: what every deployed run must give, client by client."""
    folder = tmp_path_factory.mktemp("simulated")
    done = run_main(folder, RUN, folder / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    return per_client(read_results(folder / "run"))


def clean_stop(fed: Federation) -> None:
    """Nothing of the federation is left, and its warm launchers never failed."""
    assert fed.flower_processes() == []
    for log in fed.folder.glob("*-clientapps.log"):
        text = log.read_text()
        assert "Traceback" not in text and "Warning" not in text, text[-3000:]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """A SuperLink and two SuperNodes over plain HTTP on loopback, ClientApps forked warm."""
    with Federation(tmp_path_factory.mktemp("fed"), 2, START_TIMEOUT, warm=True) as fed:
        yield fed
        assert fed.orphans() == []
    clean_stop(fed)


def launch(folder: Path, overrides: list[str]) -> subprocess.Popen:
    """`python -m fedper.main` in the background, its output read as it comes."""
    return subprocess.Popen(
        [sys.executable, "-m", "fedper.main", *overrides], cwd=folder, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def read_until(process: subprocess.Popen, text: str) -> list[str]:
    """The launcher's lines up to the first that holds `text` (or to its end)."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            break
    assert text in "".join(lines), "".join(lines) + process.stderr.read()[-3000:]
    return lines


def hold_round_2(folder: Path) -> list[str]:
    """Overrides that keep every client in round 2's evaluation until `folder/release` exists
    (round 1 is committed once round 2's training replies are in): whatever the test stops
    after round 1's line, it stops during round 2."""
    return ["faults.hold_round=2", "faults.hold_phase=evaluate",
            f"faults.hold_until={folder / 'release'}"]  # fmt: skip


def finish(process: subprocess.Popen, lines: list[str]) -> tuple[str, str]:
    out, err = process.communicate(timeout=900)
    return "".join(lines) + out, err


def test_a_deployed_run_matches_the_simulation_and_heads_stay_on_their_nodes(
    tmp_path, federation, reference
):
    deployed = run_main(tmp_path, [*RUN, *federation.engine_overrides()], tmp_path / "run")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    assert "round 2/2  accuracy" in deployed.stdout and "finished 2 round(s)" in deployed.stdout
    results = read_results(tmp_path / "run")
    assert per_client(results) == reference
    # each head lives only under its own node's state-dir, never with the launcher
    for cid, node in enumerate(federation.nodes):
        heads = sorted(p.relative_to(node) for p in node.rglob(f"{results['run_id']}/*.pt"))
        assert heads == [Path("states") / results["run_id"] / f"client_{cid}.pt"]
        assert list((node / "data").rglob("*.npy"))  # each node built its own dataset cache
    assert not (tmp_path / "client_states").exists()
    # a message's way, timed in parts, each part measured
    path = results["rounds"][-1]["timing"]["train_path"]
    assert set(path) == {"push", "to_handler", "handler", "back"}
    assert all(seconds > 0 for seconds in path.values()), path


def test_flowers_own_clientapp_launcher_gives_the_simulations_run(tmp_path, reference):
    # SuperNodes as Flower starts them by default: a flwr-clientapp process per message
    with Federation(tmp_path / "fed", 2, START_TIMEOUT) as fed:
        deployed = run_main(tmp_path, [*RUN, *fed.engine_overrides()], tmp_path / "run")
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        assert per_client(read_results(tmp_path / "run")) == reference
        assert fed.orphans() == []
    assert fed.flower_processes() == []


@pytest.fixture
def federation_with_database(tmp_path):
    """A SuperLink keeping its state in a database file (so it can restart), and two nodes."""
    with Federation(tmp_path / "fed", 2, START_TIMEOUT, database=True, warm=True) as fed:
        yield fed
    clean_stop(fed)


def test_a_killed_superlink_is_one_line_and_after_its_restart_resume_matches(
    tmp_path, federation_with_database, reference
):
    federation, run_dir = federation_with_database, tmp_path / "run"
    overrides = [*RUN, *federation.engine_overrides(), *hold_round_2(tmp_path)]
    launcher = launch(tmp_path, [*overrides, f"hydra.run.dir={run_dir}"])
    lines = read_until(launcher, "round 1/2")
    federation.stop_superlink(signal.SIGKILL)  # the clients wait in round 2's evaluation
    out, err = finish(launcher, lines)
    (tmp_path / "release").touch()
    assert launcher.returncode == 2 and "finished" not in out, out + err
    (line,) = err.strip().splitlines()
    assert re.fullmatch(
        rf"fedper: error: lost the SuperLink at engine.superlink={federation.superlink}: "
        r"`flwr run` exited 1: Error: Connection to the SuperLink is unavailable\..*, and the "
        r"SuperLink does not answer `flwr ls` about Flower run \d+; 1 of 2 round\(s\) "
        rf"committed; continue with: python -m fedper.main resume={run_dir}",
        line,
    ), line
    # the restarted SuperLink finds its nodes in its database; they reconnect by themselves
    federation.start_superlink()
    resumed = run_main(tmp_path, [f"resume={run_dir}"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "(continuing after round 1)" in resumed.stdout
    assert per_client(read_results(run_dir)) == reference
    assert federation.orphans() == []


def test_a_killed_flwr_run_stops_the_run_and_is_one_line(tmp_path, federation):
    run_dir = tmp_path / "run"
    overrides = [*RUN, *federation.engine_overrides(), *hold_round_2(tmp_path)]
    launcher = launch(tmp_path, [*overrides, f"hydra.run.dir={run_dir}"])
    lines = read_until(launcher, "round 1/2")
    psutil = psutil_module()
    (flwr_run,) = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                   if "run" in p.cmdline() and "--stream" in p.cmdline()]  # fmt: skip
    flwr_run.send_signal(signal.SIGKILL)  # the clients wait in round 2's evaluation
    out, err = finish(launcher, lines)
    # the held ClientApps belong to a stopped run: those still alive (on a loaded machine Flower
    # may not have ended them yet) would, released, answer a run that no longer takes replies (a
    # push Flower logs as failed), so they are ended instead
    held = federation.clientapp_tasks()
    for task in held:
        try:
            task.kill()
        except psutil.NoSuchProcess:
            pass  # it ended between the listing and the kill
    _, alive = psutil.wait_procs(held, timeout=START_TIMEOUT)
    assert alive == [], alive
    assert launcher.returncode == 2 and "finished" not in out, out + err
    (line,) = err.strip().splitlines()
    assert re.fullmatch(
        r"fedper: error: lost `flwr run` while Flower run \d+ was running \(`flwr run` was "
        r"killed \(signal 9\)\); the run was stopped with `flwr stop`; 1 of 2 round\(s\) "
        rf"committed; continue with: python -m fedper.main resume={run_dir}",
        line,
    ), line


def test_a_plain_flwr_run_prints_the_launchers_first_and_last_lines(tmp_path, federation):
    home, run_dir = tmp_path / "flwr-home", tmp_path / "run"
    write_flower_config(home, federation.superlink, insecure=True)
    run_config = f'preset="base" overrides="{" ".join(RUN)}" run-dir="{run_dir}"'
    done = subprocess.run(
        flwr_command("run", str(ROOT), FLOWER_CONNECTION, "--stream", "--run-config", run_config),
        env=flower_env(home), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (
        f"fedper · mobile · digits: 2 clients, 2 rounds, engine deployment (flwr run) -> {run_dir}"
        in done.stdout
    ), done.stdout[-3000:]
    assert f"finished 2 round(s) -> {run_dir}: final accuracy" in done.stdout
    assert read_results(run_dir)["rounds"][-1]["round"] == 2


def test_a_rogue_nodes_arrays_are_refused_and_the_run_goes_on_without_them(tmp_path):
    """Client 1's node forges non-finite arrays (the test-only node config `rogue="nan"`)."""
    rogue = {1: 'rogue="nan"'}
    with Federation(tmp_path / "fed", 2, START_TIMEOUT, node_extra=rogue, warm=True) as fed:
        deployed = run_main(
            tmp_path, [*RUN, *fed.engine_overrides(), "min_successful_clients=1"], tmp_path / "run"
        )
        assert fed.orphans() == []
    clean_stop(fed)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    for entry in read_results(tmp_path / "run")["rounds"]:
        assert entry["partial"] and entry["trained_clients"] == [0]
        [failure] = entry["failures"]
        assert (failure["cid"], failure["phase"]) == (1, "train")
        assert failure["reason"].startswith("reply refused: ")
        assert failure["reason"].endswith("holds non-finite values")
    assert "PARTIAL: 1 client failure(s)" in deployed.stdout


def test_a_run_without_its_nodes_names_the_missing_clients(tmp_path):
    with Federation(tmp_path / "fed", 0, START_TIMEOUT) as bare:
        result = run_main(tmp_path, [*RUN, *bare.engine_overrides(), "engine.connect_timeout=3"],
                          tmp_path / "run")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "client(s) [0, 1] did not connect within engine.connect_timeout=3 s" in result.stderr
    assert bare.flower_processes() == []


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """TLS and SuperNode authentication: nodes 0 and 1 registered, a third key that is not."""
    folder = tmp_path_factory.mktemp("secure")
    make_certificates(folder / "certs", ["127.0.0.1"], nodes=3)
    with Federation(folder / "fed", 2, START_TIMEOUT, secure=folder / "certs", warm=True) as fed:
        yield fed
    clean_stop(fed)


def test_tls_with_node_authentication_finishes_a_run(tmp_path, secure, reference):
    deployed = run_main(tmp_path, [*RUN, *secure.engine_overrides()], tmp_path / "run")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    assert per_client(read_results(tmp_path / "run")) == reference


def test_an_unregistered_node_is_refused(secure):
    secure.start_node(0, "intruder", secure.secure / "supernode-2.key")
    intruder = secure.processes["intruder"]
    assert intruder.wait(timeout=300) != 0
    assert "Failed to activate SuperNode" in (secure.folder / "intruder.log").read_text()


def test_a_launcher_without_the_ca_is_told_to_set_it(tmp_path, secure):
    result = run_main(tmp_path, [*RUN, "engine=deployment", f"engine.superlink={secure.superlink}"],
                      tmp_path / "run")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fedper: error: `flwr run` could not submit the run to the SuperLink at "
        f"{secure.superlink}: the SuperLink speaks TLS: set engine.root_certificates=<the CA "
        "certificate that signed its certificate, e.g. the lab's ca.crt from python -m "
        "fedper.certificates>"
    ]

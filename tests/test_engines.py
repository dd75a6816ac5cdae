"""The engines end to end on loopback: Flower's Deployment Engine with real SuperLink and
SuperNode processes, and a Ray cluster of the test's own; each must match the simulation."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import read_results, run_main

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
RUN = ["dataset=digits", "model.width_multiplier=0.25", "num_clients=2", "clients_per_round=2",
       "num_rounds=2", "num_epochs=1", "batch_size=16", "client_device=cpu"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until something accepts connections on the port (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}: {log.read_text()[-3000:]}")


class Processes:
    """Servers started in process groups of their own, stopped by their group id."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], **kwargs) -> tuple[subprocess.Popen, Path]:
        log = self.folder / f"{name}.log"
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", **kwargs.pop("env", {})}
        # Flower's servers start their helpers (flower-superexec, flwr-clientapp) by name
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        process = subprocess.Popen(
            args, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            env=env, **kwargs,
        )  # fmt: skip
        self.started.append(process)
        return process, log

    def stop(self) -> None:
        for process in self.started:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in self.started:
            process.wait(timeout=60)

    def leftovers(self) -> list[int]:
        """Process groups that still have a member after stop()."""
        left = []
        for process in self.started:
            deadline = time.monotonic() + 30  # children may need a moment to exit after SIGTERM
            while True:
                try:
                    os.killpg(process.pid, 0)
                except ProcessLookupError:
                    break
                if time.monotonic() > deadline:
                    left.append(process.pid)
                    break
                time.sleep(0.1)
        return left


@pytest.fixture
def federation(tmp_path, request):
    """A SuperLink and two SuperNodes on 127.0.0.1, each node with its own folders; a test
    marked `rogue(cid)` starts that node with the test-only `rogue="nan"` node config."""
    marker = request.node.get_closest_marker("rogue")
    rogue = marker.args[0] if marker else None
    servers = Processes(tmp_path)
    link_port = free_port()
    link, link_log = servers.start(
        "superlink",
        [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
         "--port", str(link_port), "--disable-runtime-dependency-installation"],
        env={"FLWR_HOME": str(tmp_path / "link-home")}, cwd=tmp_path,
    )  # fmt: skip
    wait_for_port(link_port, link, link_log)
    nodes = []
    for cid in range(2):
        node = tmp_path / f"node{cid}"
        (node / "data").mkdir(parents=True)
        config = (f'partition-id={cid} num-partitions=2 data-dir="{node / "data"}" '
                  f'state-dir="{node / "states"}"' + (' rogue="nan"' if cid == rogue else ""))  # fmt: skip
        port = free_port()
        process, log = servers.start(
            f"supernode{cid}",
            [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
             "--port", str(port), "--node-config", config],
            env={"FLWR_HOME": str(node / "home")}, cwd=node,
        )  # fmt: skip
        wait_for_port(port, process, log)
        nodes.append(node)
    try:
        yield f"127.0.0.1:{link_port}", nodes, servers
    finally:
        servers.stop()


def per_client(results: dict) -> list[dict]:
    return [entry["per_client"] for entry in results["rounds"]]


def test_deployment_engine_matches_the_simulation_and_heads_stay_on_their_nodes(
    tmp_path, federation
):
    address, nodes, servers = federation
    launcher = tmp_path / "launcher"
    launcher.mkdir()
    deployed = run_main(
        launcher,
        [*RUN, "engine=deployment", f"engine.superlink={address}", "engine.connect_timeout=120"],
        launcher / "deployed",
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    assert "round 1/2  accuracy" in deployed.stdout and "round 2/2  accuracy" in deployed.stdout
    simulated = run_main(launcher, RUN, launcher / "simulated")
    assert simulated.returncode == 0, simulated.stderr[-3000:]
    deployed_results = read_results(launcher / "deployed")
    assert per_client(deployed_results) == per_client(read_results(launcher / "simulated"))
    # each head lives only under its own node's state-dir, never with the launcher
    run_id = deployed_results["run_id"]
    for cid, node in enumerate(nodes):
        heads = sorted(p.relative_to(node) for p in node.rglob("*.pt"))
        assert heads == [Path("states") / run_id / f"client_{cid}.pt"]
        # each node built its own dataset cache from its own data-dir
        assert list((node / "data").rglob("*.npy"))
    assert not (launcher / "client_states" / run_id).exists()
    servers.stop()
    assert servers.leftovers() == []


@pytest.mark.rogue(1)
def test_deployment_refuses_a_rogue_nodes_arrays_and_goes_on_without_them(tmp_path, federation):
    address, _, servers = federation
    deployed = run_main(
        tmp_path,
        [*RUN, "engine=deployment", f"engine.superlink={address}", "engine.connect_timeout=120",
         "min_successful_clients=1"],
        tmp_path / "deployed",
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    for entry in read_results(tmp_path / "deployed")["rounds"]:
        assert entry["partial"] and entry["trained_clients"] == [0]
        [failure] = entry["failures"]
        assert (failure["cid"], failure["phase"]) == (1, "train")
        assert failure["reason"].startswith("reply refused: ")
        assert failure["reason"].endswith("holds non-finite values")
    assert "PARTIAL: 1 client failure(s)" in deployed.stdout
    servers.stop()
    assert servers.leftovers() == []


def test_deployment_without_the_nodes_fails_naming_the_missing_clients(tmp_path):
    servers = Processes(tmp_path)
    port = free_port()
    link, log = servers.start(
        "superlink",
        [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
         "--disable-runtime-dependency-installation"],
        env={"FLWR_HOME": str(tmp_path / "home")}, cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_for_port(port, link, log)
        result = run_main(
            tmp_path,
            [*RUN, "engine=deployment", f"engine.superlink=127.0.0.1:{port}",
             "engine.connect_timeout=3"],
            tmp_path / "run",
        )  # fmt: skip
    finally:
        servers.stop()
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "client(s) [0, 1] did not connect within engine.connect_timeout=3 s" in output
    assert "Traceback" not in result.stderr
    assert servers.leftovers() == []


@pytest.fixture
def ray_cluster():
    """A Ray head node of the test's own: own temp dir, own process group, stopped by PID."""
    folder = Path(tempfile.mkdtemp(prefix="fr-"))  # short: Ray's socket paths are length-limited
    servers = Processes(folder)
    port = free_port()
    head, log = servers.start(
        "ray-head",
        [str(BIN / "ray"), "start", "--head", "--temp-dir", str(folder / "t"), "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false",
         "--disable-usage-stats", "--block"],
    )  # fmt: skip
    try:
        wait_for_port(port, head, log)
        yield f"127.0.0.1:{port}", servers
    finally:
        servers.stop()
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def cluster_jobs(address: str) -> list[dict]:
    """The drivers that ever connected to the cluster, read from its GCS by a new driver."""
    script = (
        "import json, ray; from ray._private import state; "
        f"ray.init(address='{address}', logging_level='ERROR', log_to_driver=False); "
        "print(json.dumps([{'id': j['JobID'], 'dead': j['IsDead']} for j in state.jobs()]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ray_engine_joins_the_cluster_and_simulation_never_does(tmp_path, ray_cluster):
    address, servers = ray_cluster
    simulated = run_main(tmp_path, RUN, tmp_path / "simulated", env={"RAY_ADDRESS": address})
    assert simulated.returncode == 0, simulated.stderr[-3000:]
    # only the inspecting driver itself: the simulation started a Ray instance of its own
    assert len(cluster_jobs(address)) == 1
    on_cluster = run_main(tmp_path, [*RUN, "engine=ray", f"engine.address={address}"],
                          tmp_path / "cluster")  # fmt: skip
    assert on_cluster.returncode == 0, on_cluster.stderr[-3000:]
    assert per_client(read_results(tmp_path / "cluster")) == per_client(
        read_results(tmp_path / "simulated")
    )
    jobs = cluster_jobs(address)
    assert len(jobs) == 3 and sum(job["dead"] for job in jobs) == 2  # both inspectors and the run
    servers.stop()
    assert servers.leftovers() == []


def test_ray_engine_without_a_cluster_is_one_line(tmp_path):
    result = run_main(tmp_path, [*RUN, "engine=ray", f"engine.address=127.0.0.1:{free_port()}"],
                      tmp_path / "run")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nothing answers at engine.address=127.0.0.1:" in result.stderr
    assert "start it with `ray start --head`" in result.stderr


@pytest.fixture
def not_ray():
    """Something that accepts connections on a free port and never speaks Ray's protocol."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_an_address_where_something_else_listens_is_one_line(tmp_path, not_ray):
    result = run_main(tmp_path, [*RUN, "engine=ray", f"engine.address={not_ray}",
                                 "engine.join_timeout=2"], tmp_path / "run")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"fedper: error: engine.address={not_ray} does not answer as a Ray cluster's head node "
        "within engine.join_timeout=2 s (DEADLINE_EXCEEDED): give the address `ray start --head` "
        "printed, or raise engine.join_timeout"
    )

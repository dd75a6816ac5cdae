"""The Ray engines end to end on this machine: a Ray cluster of the test's own (with Ray's token
authentication, as docs/deployment.md sets one up) must match the simulation, and a local
simulation's servers listen on loopback or refuse a caller without its token
(tests/test_deployment.py has the Deployment Engine's)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import make_config, read_results, run_main

from fedper.bench.local_federation import free_port, group_alive, listening, stop_group
from fedper.bench.sampling import process_tree, psutil_module
from fedper.engines.simulation import ray_for
from fedper.planning import plan_run

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
RUN = ["dataset=digits", "model.width_multiplier=0.25", "num_clients=2", "clients_per_round=2",
       "num_rounds=2", "num_epochs=1", "batch_size=16", "client_device=cpu"]  # fmt: skip
# one method of each kind of server a Ray node runs: GCS, raylet (node and object manager),
# core worker (drivers, workers, actors)
RAY_METHODS = ("/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
               "/ray.rpc.NodeManagerService/GetNodeStats",
               "/ray.rpc.ObjectManagerService/FreeObjects",
               "/ray.rpc.CoreWorkerService/NumPendingTasks")  # fmt: skip


def per_client(results: dict) -> list[dict]:
    return [entry["per_client"] for entry in results["rounds"]]


@pytest.fixture
def ray_cluster():
    """A Ray head node of the test's own with token authentication: own temp dir, own process
    group, stopped by PID; yields its address and the environment that reaches it."""
    folder = Path(tempfile.mkdtemp(prefix="fr-"))  # short: Ray's socket paths are length-limited
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = free_port()
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--temp-dir", str(folder / "t"), "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false",
         "--disable-usage-stats", "--block"],
        stdout=(folder / "head.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True, env={**os.environ, **token},
    )  # fmt: skip
    try:
        while not listening(port):
            assert head.poll() is None, (folder / "head.log").read_text()[-3000:]
            time.sleep(0.1)
        yield f"127.0.0.1:{port}", token
    finally:
        stop_group(head, signal.SIGTERM)
        assert not group_alive(head.pid)
        shutil.rmtree(folder, ignore_errors=True)


def cluster_jobs(address: str, env: dict) -> subprocess.CompletedProcess:
    """The drivers that ever connected to the cluster, read from its GCS by a new driver."""
    script = (
        "import json, ray; from ray._private import state; "
        f"ray.init(address='{address}', logging_level='ERROR', log_to_driver=False); "
        "print(json.dumps([{'id': j['JobID'], 'dead': j['IsDead']} for j in state.jobs()]))"
    )
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **env}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def jobs(done: subprocess.CompletedProcess) -> list[dict]:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ray_engine_joins_the_cluster_and_simulation_never_does(tmp_path, ray_cluster):
    address, token = ray_cluster
    simulated = run_main(tmp_path, RUN, tmp_path / "simulated", env={"RAY_ADDRESS": address})
    assert simulated.returncode == 0, simulated.stderr[-3000:]
    # only the inspecting driver itself: the simulation started a Ray instance of its own
    assert len(jobs(cluster_jobs(address, token))) == 1
    tokenless = run_main(tmp_path, [*RUN, "engine=ray", f"engine.address={address}"],
                         tmp_path / "tokenless")  # fmt: skip
    assert tokenless.returncode == 2 and "Traceback" not in tokenless.stderr
    assert "asks for a token: export RAY_AUTH_MODE=token" in tokenless.stderr.splitlines()[-1]
    on_cluster = run_main(tmp_path, [*RUN, "engine=ray", f"engine.address={address}"],
                          tmp_path / "cluster", env=token)  # fmt: skip
    assert on_cluster.returncode == 0, on_cluster.stderr[-3000:]
    assert per_client(read_results(tmp_path / "cluster")) == per_client(
        read_results(tmp_path / "simulated")
    )
    found = jobs(cluster_jobs(address, token))
    assert len(found) == 3 and sum(job["dead"] for job in found) == 2  # both inspectors and the run
    # a driver without the cluster's token is refused
    stranger = cluster_jobs(address, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong"})
    assert stranger.returncode != 0 and "AuthenticationError" in stranger.stderr


def test_more_clients_than_simulation_nodes_compute_what_one_node_per_client_does(tmp_path):
    run = [*RUN, "num_clients=6", "clients_per_round=3", "clients_per_evaluation=2",
           "num_rounds=3", f"data_dir={tmp_path / 'data'}"]  # fmt: skip
    shared = run_main(tmp_path, [*run, "engine.max_nodes=2", f"state_dir={tmp_path / 's2'}"],
                      tmp_path / "shared")  # fmt: skip
    own = run_main(tmp_path, [*run, "engine.max_nodes=null", f"state_dir={tmp_path / 's6'}"],
                   tmp_path / "own")  # fmt: skip
    assert shared.returncode == 0 and own.returncode == 0, (
        shared.stderr[-3000:] + own.stderr[-3000:]
    )
    assert "6 clients on 2 simulation nodes, each serving clients in turn" in shared.stdout
    assert "simulation nodes" not in own.stdout
    results = read_results(tmp_path / "shared")
    assert per_client(results) == per_client(read_results(tmp_path / "own"))
    # three trained and two evaluated in rounds 1-2; all six evaluated in the last round, in
    # three waves of two
    assert [len(entry["trained_clients"]) for entry in results["rounds"]] == [3, 3, 3]
    assert [len(entry["per_client"]) < 6 for entry in results["rounds"]] == [True, True, False]


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


def answers(host: str, port: int) -> set[str]:
    """How a server answers a caller without a token: a gRPC status per Ray service tried
    (UNIMPLEMENTED: not that service) and the HTTP status of the runtime-env agent's API."""
    import grpc

    said = set()
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        for method in RAY_METHODS:
            try:
                channel.unary_unary(method)(b"", timeout=30)
                said.add("OK")
            except grpc.RpcError as error:
                said.add(error.code().name)
    request = urllib.request.Request(f"http://{host}:{port}/get_runtime_envs_info", b"")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            said.add(f"HTTP {response.status}")
    except urllib.error.HTTPError as error:
        said.add(f"HTTP {error.code}")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        pass  # not an HTTP server
    return said


def listening_sockets() -> list[tuple[str, str, int]]:
    """(process name, ip, port) of every socket this process and its descendants listen on;
    a process that ends while it is looked at has none."""
    psutil = psutil_module()
    sockets = []
    for process in process_tree():
        try:
            name, connections = process.name(), process.net_connections("inet")
        except psutil.NoSuchProcess:
            continue
        sockets += [(name, c.laddr.ip, c.laddr.port) for c in connections if c.status == "LISTEN"]
    return sockets


def reached(server: tuple[str, str, int]) -> set[str]:
    """What a server listening on (name, ip, port) answers, over IPv4 and IPv6 loopback when it
    listens on every interface."""
    _, ip, port = server
    hosts = {"0.0.0.0": ["127.0.0.1"], "::": ["127.0.0.1", "[::1]"]}.get(ip, [ip])
    return set().union(*(answers(host, port) for host in hosts))


def test_a_local_simulation_listens_on_loopback_or_refuses_callers_without_its_token(tmp_path):
    cfg = make_config([*RUN, f"data_dir={tmp_path / 'data'}", f"state_dir={tmp_path / 's'}"])
    plan = plan_run(cfg, tmp_path / "run")
    before = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    with ray_for(plan):
        import ray

        # an actor, as each client slot of the simulation is one
        actor = ray.remote(num_cpus=1)(type("Client", (), {"ping": lambda self: 1})).remote()
        assert ray.get(actor.ping.remote()) == 1
        sockets = listening_sockets()
        kinds = {name for name, _, _ in sockets}
        exposed = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]
        said = {s: reached(s) for s in exposed}
        # an idle worker Ray prestarted may be reaped while it is probed: a socket that no
        # longer listens refuses everyone, so only the ones still listening are judged
        still = set(listening_sockets())
        said = {s: statuses for s, statuses in said.items() if s in still}
    assert {"gcs_server", "raylet"} <= kinds and len(sockets) >= 4, sockets
    for server, statuses in said.items():
        assert "OK" not in statuses and "HTTP 200" not in statuses, (server, statuses)
        assert statuses & {"UNAUTHENTICATED", "HTTP 401", "HTTP 403"}, (server, statuses)
    # the token was the run's own: this process's environment is as it was
    assert {key: os.environ.get(key) for key in before} == before

"""A Flower federation on 127.0.0.1 for the benchmark and the tests: one SuperLink and one
SuperNode per client, each in a process group of its own with its own FLWR_HOME and folders,
stopped by its PID (never by name: other Flower processes on the machine are not ours).

With `warm=True` each SuperNode runs with `--isolation process` and its ClientApps are started
by `fedper.engines.warm` (forked from a process that imported Flower and torch once) instead of
Flower's `flower-superexec`.

Optionally the SuperLink keeps its state in a database file (`database=True`, so it can be
restarted), and speaks TLS with SuperNode authentication (`secure=<folder>` made by
`fedper.certificates`: the nodes' public keys are registered before they start).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedper.bench.sampling import psutil_module
from fedper.engines.deployment import FLOWER_CONNECTION, flwr_command, write_flower_config
from fedper.errors import FedPerError

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flower-superexec
SUPERLINK = "superlink"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# how often a SuperNode's SuperExec looks for a ClientApp process to start (Flower's default:
# 1 s, on every message's way); docs/deployment.md recommends the same to labs
SUPEREXEC_POLL_SECONDS = "0.1"


def flower_env(home: Path) -> dict[str, str]:
    """The environment of a Flower process with its own FLWR_HOME and a SuperExec that looks
    for work every 0.1 s; Flower's servers start their helpers (flower-superexec,
    flwr-clientapp) by name, so this environment's bin comes first."""
    return {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL_SECONDS,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip


class Federation:
    """SuperLink and SuperNodes started on free ports; `nodes[cid]` is client cid's folder."""

    def __init__(
        self,
        folder: Path,
        num_clients: int,
        start_timeout: float,
        *,
        database: bool = False,
        secure: Path | None = None,
        node_extra: dict[int, str] | None = None,
        warm: bool = False,
    ) -> None:
        self.folder = folder
        self.start_timeout = start_timeout
        self.processes: dict[str, subprocess.Popen] = {}
        self.nodes: list[Path] = []
        self.port = free_port()
        self.superlink = f"127.0.0.1:{self.port}"
        self.num_clients = num_clients
        self.database = folder / SUPERLINK / "state.db" if database else None
        self.secure = secure
        self.node_extra = node_extra or {}  # cid -> more node config (tests: rogue="nan")
        self.warm = warm

    def engine_overrides(self) -> list[str]:
        """`python -m fedper.main` overrides that reach this SuperLink."""
        out = ["engine=deployment", f"engine.superlink={self.superlink}"]
        if self.secure is None:
            return [*out, "engine.insecure=true"]
        return [*out, f"engine.root_certificates={self.secure / 'ca.crt'}"]

    def launch(self, name: str, args: list[str], home: Path) -> subprocess.Popen:
        """One process in its own session (so its children stop with it), logging to name.log."""
        home.mkdir(parents=True, exist_ok=True)
        log = (self.folder / f"{name}.log").open("a")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=flower_env(home), cwd=home)  # fmt: skip
        self.processes[name] = process
        return process

    def start(self, name: str, args: list[str], home: Path, port: int) -> subprocess.Popen:
        """One server (a command in this environment's bin), listening on port."""
        process = self.launch(name, [str(BIN / args[0]), *args[1:]], home)
        deadline = time.monotonic() + self.start_timeout
        while not listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise FedPerError(
                    f"{args[0]} did not listen on port {port} within {self.start_timeout:.0f} s"
                    f": see {self.folder / name}.log"
                )
            time.sleep(0.1)
        return process

    def start_superlink(self) -> None:
        """The SuperLink (again, after `stop_superlink`: with its database, if it has one)."""
        args = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-runtime-dependency-installation"]  # fmt: skip
        if self.database is not None:
            args += ["--database", str(self.database)]
        if self.secure is None:
            args.append("--insecure")
        else:
            args += ["--ssl-ca-certfile", str(self.secure / "ca.crt"),
                     "--ssl-certfile", str(self.secure / "superlink.crt"),
                     "--ssl-keyfile", str(self.secure / "superlink.key"),
                     "--enable-supernode-auth"]  # fmt: skip
        self.start(SUPERLINK, args, self.folder / SUPERLINK, self.port)

    def stop_superlink(self, signum: int = signal.SIGTERM) -> None:
        """Signal the SuperLink's process group and wait until every process in it is gone."""
        stop_group(self.processes.pop(SUPERLINK), signum)

    def register(self, public_key: Path) -> subprocess.CompletedProcess:
        """`flwr supernode register <key>` against this SuperLink."""
        home = self.folder / "cli"
        certificates = None if self.secure is None else self.secure / "ca.crt"
        write_flower_config(home, self.superlink, self.secure is None, certificates)
        return subprocess.run(
            flwr_command("supernode", "register", str(public_key), FLOWER_CONNECTION),
            env=flower_env(home), capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def start_node(self, cid: int, name: str, private_key: Path | None = None) -> Path:
        """A SuperNode serving client `cid` with folders of its own under `name`."""
        node = self.folder / name
        (node / "data").mkdir(parents=True, exist_ok=True)
        config = (f'partition-id={cid} num-partitions={self.num_clients} '
                  f'data-dir="{node / "data"}" state-dir="{node / "states"}"')  # fmt: skip
        if cid in self.node_extra:
            config += f" {self.node_extra[cid]}"
        port = free_port()
        args = ["flower-supernode", "--superlink", self.superlink, "--port", str(port),
                "--node-config", config]  # fmt: skip
        if self.secure is None:
            args.append("--insecure")
        else:
            args += ["--root-certificates", str(self.secure / "ca.crt")]
        if private_key is not None:
            args += ["--auth-supernode-private-key", str(private_key)]
        if self.warm:
            args += ["--isolation", "process"]
        supernode = self.start(name, args, node / "home", port)
        if self.warm:
            self.launch(f"{name}-clientapps", [sys.executable, "-m", "fedper.engines.warm",
                        "--runtime-api-address", f"127.0.0.1:{port}", "--insecure",
                        "--parent-pid", str(supernode.pid)], node / "home")  # fmt: skip
        return node

    def __enter__(self) -> Federation:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.start_superlink()
            for cid in range(self.num_clients):
                key = None
                if self.secure is not None:
                    key = self.secure / f"supernode-{cid}.key"
                    registered = self.register(key.with_suffix(".pub"))
                    if registered.returncode != 0:
                        raise FedPerError(f"flwr supernode register failed: {registered.stdout}")
                self.nodes.append(self.start_node(cid, f"node{cid}", key))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def flower_processes(self) -> list:
        """Every live process Flower started for this federation (SuperLink, SuperNodes and
        what they start: SuperExecs, ServerApp and ClientApp processes, also those that left
        the process group), found by the FLWR_HOME under this folder that they inherit."""
        psutil = psutil_module()
        found = []
        for process in psutil.process_iter(["pid", "status"]):
            try:
                home = process.environ().get("FLWR_HOME", "")
            except psutil.Error:
                continue
            if home.startswith(str(self.folder)) and process.info["status"] != "zombie":
                found.append(process)
        return found

    def clientapp_tasks(self) -> list:
        """The live ClientApp processes the warm launchers forked (children of their fork
        servers): each answers one message and ends, or ends when its run is stopped."""
        psutil = psutil_module()
        tasks = []
        for name, launcher in self.processes.items():
            if not name.endswith("-clientapps"):
                continue
            try:
                for server in psutil.Process(launcher.pid).children():
                    tasks += server.children()
            except psutil.NoSuchProcess:
                continue
        return tasks

    def orphans(self) -> list[str]:
        """Flower processes of this federation that outlived their parent (re-parented), and
        what they run."""
        found = self.flower_processes()
        ours = {process.pid for process in found}
        started = {process.pid for process in self.processes.values()}
        return [
            " ".join(process.cmdline()[:2])
            for process in found
            if process.pid not in started and process.ppid() not in ours
        ]

    def stop(self) -> None:
        """SIGTERM to each process group we started, SIGKILL to what is left after 30 s; then
        up to 30 s for Flower's helpers outside those groups (a SuperExec started in a session
        of its own), which end once they see their parent gone."""
        while self.processes:
            stop_group(self.processes.popitem()[1], signal.SIGTERM)
        psutil_module().wait_procs(self.flower_processes(), timeout=30)


def stop_group(process: subprocess.Popen, signum: int) -> None:
    """Signal a process group we started, and make sure none of its processes is left
    (children such as flower-superexec or a ClientApp may outlive the leader by a moment)."""
    signal_group(process.pid, signum)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_alive(process.pid):
        signal_group(process.pid, signal.SIGKILL)


def signal_group(pgid: int, signum: int) -> None:
    """Signal every process of a group we started (gone already: nothing to do)."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """A process of this group still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True

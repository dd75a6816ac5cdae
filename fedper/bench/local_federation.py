"""A Flower federation on 127.0.0.1 for the benchmark: one SuperLink and one SuperNode per
client, each in a process group of its own with its own FLWR_HOME and folders, stopped by
its PID (never by name: other Flower processes on the machine are not ours)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedper.errors import FedPerError

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flower-superexec


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Federation:
    """SuperLink and SuperNodes started on free ports; `nodes[cid]` is client cid's folder."""

    def __init__(self, folder: Path, num_clients: int, start_timeout: float) -> None:
        self.folder = folder
        self.start_timeout = start_timeout
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.nodes: list[Path] = []
        self.port = free_port()
        self.superlink = f"127.0.0.1:{self.port}"
        self.num_clients = num_clients

    def start(self, name: str, args: list[str], home: Path, port: int) -> None:
        """One server in its own session (so its children stop with it), listening on port."""
        home.mkdir(parents=True, exist_ok=True)
        # the SuperNode starts `flower-superexec` by name: this environment's bin comes first
        env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
        log = (self.folder / f"{name}.log").open("w")
        process = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                   cwd=home)  # fmt: skip
        self.processes.append((name, process))
        deadline = time.monotonic() + self.start_timeout
        while not listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise FedPerError(
                    f"{args[0]} did not listen on port {port} within bench.start_timeout="
                    f"{self.start_timeout:.0f} s: see {self.folder / name}.log"
                )
            time.sleep(0.1)

    def __enter__(self) -> Federation:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1",
                                     "--port", str(self.port),
                                     "--disable-runtime-dependency-installation"],
                       self.folder / "superlink", self.port)  # fmt: skip
            for cid in range(self.num_clients):
                node = self.folder / f"node{cid}"
                (node / "data").mkdir(parents=True, exist_ok=True)
                config = (f'partition-id={cid} num-partitions={self.num_clients} '
                          f'data-dir="{node / "data"}" state-dir="{node / "states"}"')  # fmt: skip
                port = free_port()
                self.start(f"supernode{cid}", ["flower-supernode", "--insecure", "--superlink",
                                               self.superlink, "--port", str(port),
                                               "--node-config", config],
                           node / "home", port)  # fmt: skip
                self.nodes.append(node)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM to each process group we started, SIGKILL to what is left after 30 s."""
        for _, process in self.processes:
            signal_group(process.pid, signal.SIGTERM)
        for _, process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
            # children (flower-superexec, a ClientApp) may outlive the leader by a moment
            deadline = time.monotonic() + 30
            while group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if group_alive(process.pid):
                signal_group(process.pid, signal.SIGKILL)
        self.processes.clear()


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

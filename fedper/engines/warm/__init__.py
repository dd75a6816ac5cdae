"""Warm ClientApp processes for a SuperNode started with `--isolation process`:
`python -m fedper.engines.warm --runtime-api-address 127.0.0.1:9094 --insecure`.
With `--parent-pid <the SuperNode's pid>` it stops when the SuperNode does.

A SuperNode answers every message in a fresh ClientApp process. Started the default way, its
`flower-superexec` launches `flwr-clientapp`, which imports Python, Flower and torch again for
each message (about 3 s of a 2-core machine's time). This launcher takes the SuperExec's
place: it asks the SuperNode's Runtime API for ClientApp tasks, as `flower-superexec` does, and
forks each task's process from one that has imported Flower, torch and fedper's ClientApp
once (a `multiprocessing` fork server). The forked process forgets fedper's own modules before
Flower loads the ClientApp, so the code that runs is the run's FAB, as with `flwr-clientapp`;
only the libraries stay imported. Everything after the fork is Flower's `run_clientapp`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.forkserver
import os
import sys
import time
from pathlib import Path

from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supercore.superexec.plugin.base_exec_plugin import BaseExecPlugin
from flwr.supercore.tls import validate_and_resolve_root_certificates

# what the fork server imports once; its children inherit the libraries these pull in
PRELOAD = ["flwr.supernode.runtime.run_clientapp", "fedper.client_app", "fedper.engines.warm"]
APP_PACKAGE = "fedper"  # its modules come from the run's FAB in each task process
POLL_SECONDS = 0.1  # between Runtime API polls while no task waits (flower-superexec: 1 s)


def serve_task(spec: ExecutionSpec, certificates: bytes | None) -> None:
    """In a process forked for one task: drop the app's own modules, then run the ClientApp
    as `flwr-clientapp` would (Flower loads it from the run's FAB and answers the message)."""
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    for name in [m for m in sys.modules if m == APP_PACKAGE or m.startswith(APP_PACKAGE + ".")]:
        del sys.modules[name]
    run_clientapp(
        runtime_api_address=spec.runtime_api_address,
        token=spec.token,
        insecure=spec.insecure,
        certificates=certificates,
        parent_pid=spec.parent_pid,
        runtime_dependency_install=False,
    )


class ForkServerExecutor:
    """Starts each task Flower's plugin hands it (`launch`, as a SuperExec executor does) in a
    process forked from the warm fork server."""

    def __init__(self, certificates: bytes | None) -> None:
        self.certificates = certificates
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        process = self.context.Process(target=serve_task, args=(spec, self.certificates))
        process.start()
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        multiprocessing.active_children()  # reaps the task processes that have ended


class ClientAppPlugin(BaseExecPlugin):
    """Flower's SuperExec plugin, limited to the task a SuperNode hands out: ClientApps."""

    supported_task_types = frozenset({TaskType.CLIENT_APP})


def serve(args: argparse.Namespace) -> None:
    """Poll the SuperNode's Runtime API for ClientApp tasks and start each in a warm process;
    right after a task starts, poll again at once (a round's messages arrive together)."""
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    certificates = validate_and_resolve_root_certificates(args.root_certificates, args.insecure)
    executor = ForkServerExecutor(certificates)
    multiprocessing.forkserver.ensure_running()  # imports PRELOAD now, before the first task
    plugin = ClientAppPlugin(args.runtime_api_address, args.insecure, args.root_certificates,
                             False, executor=executor)  # fmt: skip
    client = RuntimeHttpClient.from_server_address(
        server_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates=certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    print(f"fedper.engines.warm: starting the ClientApps of the SuperNode at "
          f"{args.runtime_api_address}, forked warm", file=sys.stderr, flush=True)  # fmt: skip
    try:
        while True:
            executor.reconcile()
            reply = client.AcquireTask(request)
            if reply.HasField("task") and reply.token:
                plugin.launch_task(token=reply.token, task=reply.task)
            else:
                time.sleep(args.poll_seconds)
    finally:
        client.close()


def host_port(value: str) -> str:
    """A host:port, as the SuperNode's Runtime API address is given."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not host:port, e.g. 127.0.0.1:9094")
    return value


def positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 60:
        raise argparse.ArgumentTypeError(f"{value} is not a number of seconds in (0, 60]")
    return seconds


def existing_file(value: str) -> str:
    if not Path(value).is_file():
        raise argparse.ArgumentTypeError(
            f"{value} is not a file (the Runtime API's CA certificate)"
        )
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fedper.engines.warm",
        description="Start a SuperNode's ClientApp processes warm (run the SuperNode with "
        "--isolation process and give this its Runtime API address, its --port).",
    )
    parser.add_argument("--runtime-api-address", required=True, type=host_port,
                        help="the SuperNode's Runtime API, host:port (its --port)")  # fmt: skip
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true",
                     help="the Runtime API speaks plain HTTP (the SuperNode's default)")  # fmt: skip
    tls.add_argument("--root-certificates", metavar="CA_CERT", type=existing_file,
                     help="CA certificate of a Runtime API started with --ssl-certfile")  # fmt: skip
    parser.add_argument("--poll-seconds", type=positive_seconds, default=POLL_SECONDS,
                        help=f"seconds between polls while idle (default {POLL_SECONDS})")  # fmt: skip
    parser.add_argument("--parent-pid", type=int,
                        help="stop when this process (the SuperNode) has ended")  # fmt: skip
    return parser.parse_args(argv)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted, or until the SuperNode given as --parent-pid has ended (then
    exit 0); either way one line on stderr says why it stopped."""
    args = parse_args(argv)
    try:
        serve(args)
    except KeyboardInterrupt:
        ended = args.parent_pid is not None and not alive(args.parent_pid)
        why = f"its SuperNode (process {args.parent_pid}) has ended" if ended else "interrupted"
        print(f"fedper.engines.warm: stopped: {why}", file=sys.stderr, flush=True)
        return 0 if ended else 130
    return 0

"""Where the clients run: a local simulation, a Ray cluster, or Flower's Deployment Engine.

Every engine runs the same ServerApp loop and the same ClientApp; only how they are started
differs. `engine=simulation` starts a Ray instance of its own for this run (its own temp
folder, removed afterwards) and never joins another; `engine=ray` joins the cluster at
`engine.address`; `engine=deployment` submits the run to a SuperLink with `flwr run`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedper import PROJECT_ROOT
from fedper.device import check_gpu_setup
from fedper.errors import ERROR_PREFIX, FedPerError
from fedper.interrupts import INTERRUPTS
from fedper.ray_local import quiet_ray_signals, ray_starting, ray_temp_dir
from fedper.spec import RunPlan

log = logging.getLogger("fedper")
FLOWER_CONNECTION = "fedper"  # the SuperLink connection's name in a run's own FLWR_HOME
SERVER_STOP_SECONDS = 30  # how long an interrupted run waits for the server loop to stop


def run_on_engine(plan: RunPlan) -> None:
    """Run the planned rounds on the configured engine; return when the run is complete."""
    if plan.spec.cfg.engine.name == "deployment":
        deploy(plan)
    else:
        simulate(plan)


def quiet_frameworks() -> None:
    """One line per round instead of Flower's and Ray's logs.

    Flower resets its logger's level when a simulation starts, so a filter does the job.
    Client failures are reported by the server, one line each, with the client's own message.
    """
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False
    if keep_critical not in flwr_logger.filters:
        flwr_logger.addFilter(keep_critical)
    warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # imported by Flower's link state


def keep_critical(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL


def check_reachable(address: str, key: str, hint: str, timeout: float = 10) -> None:
    """Something accepts connections at host:port, or one line saying so (Ray would retry
    for minutes before giving up on an address where nothing listens)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise FedPerError(
            f"nothing answers at {key}={address} ({error.strerror or error}): {hint}"
        ) from None


@contextmanager
def ray_for(plan: RunPlan) -> Iterator[None]:
    """A Ray instance for this run: a new local one, or the configured cluster; shut down after.

    Flower's Ray backend uses an instance that is already running, so starting it here
    decides where the actors go. A local instance gets its own temp folder (removed at the
    end, also after Ctrl-C) and no dashboard; RAY_ADDRESS is ignored while it starts.
    """
    quiet_ray_signals()
    import ray

    cfg = plan.spec.cfg
    common = {"logging_level": logging.ERROR, "log_to_driver": False}
    temp_dir = None
    saved_address = os.environ.pop("RAY_ADDRESS", None)
    try:
        if cfg.engine.name == "ray":
            check_reachable(
                cfg.engine.address, "engine.address", "start it with `ray start --head`"
            )
            runtime_env = {"env_vars": {"FLWR_TELEMETRY_ENABLED": "0"}}
            if cfg.engine.ship_code:
                runtime_env["py_modules"] = [str(PROJECT_ROOT / "fedper")]
            try:
                with ray_starting():
                    ray.init(address=cfg.engine.address, runtime_env=runtime_env, **common)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise FedPerError(
                    f"cannot join the Ray cluster at engine.address={cfg.engine.address} "
                    f"({type(error).__name__}): start it with `ray start --head` or fix the address"
                ) from None
        else:
            temp_dir, owner = ray_temp_dir()
            # workers import fedper from wherever this process does (a checkout, PYTHONPATH)
            pythonpath = os.pathsep.join(p for p in sys.path if p)
            with ray_starting():
                ray.init(
                    address="local",
                    num_cpus=cfg.engine.num_cpus or os.cpu_count(),
                    include_dashboard=False,
                    _temp_dir=str(temp_dir),
                    runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                    **common,
                )
            stop_unused_ray_helpers()
        INTERRUPTS.take()  # in case Ray took them after all
        yield
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
            os.close(owner)
        if saved_address is not None:
            os.environ["RAY_ADDRESS"] = saved_address


def stop_unused_ray_helpers() -> None:
    """Stop what `ray.init` always starts but a local simulation never uses (~0.3 GB RSS).

    Ray 2.55's `ray.init` has no switch for them: the autoscaler monitor (a fixed local
    instance never scales), the log monitor (it forwards worker output, and log_to_driver
    is off) and the API server (with include_dashboard=False it only reports usage stats;
    Flower uses none of its state or job APIs). The raylet's two agents stay: the raylet
    exits when either of them does. Best effort: a Ray without these hooks keeps them.
    """
    import ray

    try:
        node = ray._private.worker._global_node
        for kind in ("monitor", "log_monitor", "dashboard"):
            # SIGKILL and reap: they keep no state, and their logs go with the temp folder
            node._kill_process_type(kind, check_alive=False, wait=True)
    except Exception:
        pass


def simulate(plan: RunPlan) -> None:
    """Flower's Simulation Engine on Ray: the ServerApp in a thread, one actor per client slot."""
    quiet_frameworks()  # before Flower's imports, which log as they load
    quiet_ray_signals()  # before Flower imports Ray
    # Flower's simulation (with Ray) and the apps (with Flower) load here, when a simulation
    # starts: a bad override or a finished run is answered without them
    from flwr.simulation import run_simulation

    from fedper.client_app import app as client_app
    from fedper.server_app import server_app_for

    cfg = plan.spec.cfg
    check_gpu_setup(cfg)  # the GPUs Ray will see, before it starts (SuperNodes pick their own)
    warnings.filterwarnings("ignore", message=".*run_simulation.*deprecated")
    stop, serving = threading.Event(), threading.Lock()
    backend_config = {
        "client_resources": {
            "num_cpus": cfg.client_resources.num_cpus,
            "num_gpus": plan.spec.num_gpus,
        },
    }
    with ray_for(plan):
        try:
            run_simulation(
                server_app=server_app_for(plan, stop, serving),
                client_app=client_app,
                num_supernodes=cfg.num_clients,
                backend_config=backend_config,
            )
        except (FedPerError, KeyboardInterrupt):
            raise
        except Exception as error:
            cause = error.__cause__ or error
            raise FedPerError(
                f"the {cfg.engine.name} engine stopped: {type(cause).__name__}: {cause}"
            ) from None
        finally:
            stop.set()  # the server loop ends at its next exchange, whatever stopped the engine
            # a round being committed is finished first, so "interrupted after round k" is exact
            if serving.acquire(timeout=SERVER_STOP_SECONDS):
                serving.release()


# Flower's own lines in `flwr run --stream` output that say nothing about the run's progress
FLOWER_CHATTER = re.compile(
    r"^(INFO|DEBUG)\s*:|^Using SuperLink|^Successfully installed|^Flower App configuration"
    r"|^- Recommended property"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def flower_home(plan: RunPlan, home: Path) -> Path:
    """A FLWR_HOME of this run's own holding one SuperLink connection, and the run config."""
    import tomli_w

    engine = plan.spec.cfg.engine
    connection = {"address": engine.superlink, "insecure": bool(engine.insecure)}
    if engine.get("root_certificates"):
        connection["root-certificates"] = str(Path(engine.root_certificates).resolve())
    config = {"superlink": {"default": FLOWER_CONNECTION, FLOWER_CONNECTION: connection}}
    (home / "config.toml").write_text(tomli_w.dumps(config))
    run_config = home / "run_config.toml"
    run_config.write_text(tomli_w.dumps(plan.to_run_config()))
    return run_config


def flwr_command(*args: str) -> list[str]:
    """The `flwr` CLI of this Python environment."""
    script = Path(sys.executable).with_name("flwr")
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-c", "from flwr.cli.app import app; app()", *args]


def deploy(plan: RunPlan) -> None:
    """Submit the run to a SuperLink with `flwr run` (a FAB built from this checkout) and
    stream its log lines; the ServerApp writes the run directory where it runs."""
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise FedPerError(
            f"engine=deployment builds the Flower app from a fedper checkout, and {PROJECT_ROOT} "
            "has no pyproject.toml: run from a clone of the repository"
        )
    cfg = plan.spec.cfg
    with tempfile.TemporaryDirectory(prefix="fedper-flwr-") as home:
        run_config = flower_home(plan, Path(home))
        env = {**os.environ, "FLWR_HOME": home, "FLWR_TELEMETRY_ENABLED": "0"}
        command = flwr_command(
            "run", str(PROJECT_ROOT), FLOWER_CONNECTION, "--run-config", str(run_config), "--stream"
        )
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        stream = RunStream()
        try:
            for line in process.stdout:
                stream.take(line)
            process.wait()
        except KeyboardInterrupt:
            if (
                stream.flower_run_id is not None
            ):  # stop the run on the SuperLink, not the stream only
                subprocess.run(flwr_command("stop", stream.flower_run_id, FLOWER_CONNECTION),
                               env=env, capture_output=True, timeout=60)  # fmt: skip
            process.terminate()
            process.wait()
            raise
        status, details = (
            run_status(stream.flower_run_id, env) if stream.flower_run_id else ("", "")
        )
    if stream.flower_run_id is None:
        raise FedPerError(
            f"`flwr run` could not submit the run to the SuperLink at engine.superlink="
            f"{cfg.engine.superlink} (exit {process.returncode}): is it running and reachable?"
        )
    if stream.error is not None:
        raise FedPerError(stream.error)
    if status and not status.endswith("completed"):
        why = details or "see the lines above"
        raise FedPerError(
            f"Flower run {stream.flower_run_id} ended as {status} ({why}); "
            f"continue with: python -m fedper.main resume={plan.spec.run_dir}"
        )


class RunStream:
    """`flwr run --stream` output: the run's own lines are printed, Flower's chatter is not,
    and the ServerApp's one-line error is kept to be raised here (without the traceback
    Flower logs after it)."""

    def __init__(self) -> None:
        self.flower_run_id: str | None = None
        self.error: str | None = None

    def take(self, line: str) -> None:
        text = ANSI.sub("", line.rstrip())
        if match := re.match(r"Successfully started run (\d+)", text):
            self.flower_run_id = match.group(1)
        elif text.startswith(ERROR_PREFIX):
            self.error = text.removeprefix(ERROR_PREFIX)
        elif text and self.error is None and not FLOWER_CHATTER.match(text):
            print(text, flush=True)


def run_status(flower_run_id: str, env: dict) -> tuple[str, str]:
    """The run's final status on the SuperLink (e.g. `finished:completed`) and its details;
    empty when the SuperLink does not say."""
    import json

    done = subprocess.run(
        flwr_command("ls", FLOWER_CONNECTION, "--run-id", flower_run_id, "--format", "json"),
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        run = json.loads(done.stdout)["runs"][0]
        return str(run["status"]), str(run.get("status-details") or "")
    except (ValueError, KeyError, IndexError, TypeError):
        return "", ""

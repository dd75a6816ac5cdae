"""The simulation engines: Flower's Simulation Engine on a Ray instance of this run's own
(`engine=simulation`), or on an existing Ray cluster (`engine=ray`).

`engine=simulation` starts a Ray instance for this run (its own temp folder, removed
afterwards) and never joins another; `engine=ray` joins the cluster at `engine.address`.
Either way the ServerApp loop runs in a thread here and one actor per client slot runs the
ClientApp.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from omegaconf import DictConfig, OmegaConf

from fedper import PROJECT_ROOT
from fedper.checks import check, check_bool, check_folder, is_number, is_whole, show
from fedper.errors import FedPerError
from fedper.gpu import check_gpu_setup
from fedper.interrupts import INTERRUPTS
from fedper.ray_local import (
    quiet_ray_signals,
    ray_starting,
    ray_temp_dir,
    token_authentication,
)
from fedper.spec import RunPlan, shared_nodes

log = logging.getLogger("fedper")
LOOPBACK = "127.0.0.1"  # the address a local Ray instance gives its nodes and workers
SERVER_STOP_SECONDS = 30  # how long an interrupted run waits for the server loop to stop
RAY_MAX_RESOURCE = 10**14  # far beyond any machine's CPUs: a bigger count is a typo


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


def check_ray_answers(address: str, timeout: float) -> None:
    """Ray's GCS answers at `address` within `timeout` seconds, or one line: something else
    listening there would keep `ray.init` retrying for minutes."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = grpc.insecure_channel(address)
    try:
        nodes = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        nodes.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:  # Ray, with token authentication
            if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
                return  # ray.init presents the token (and says so if it is the wrong one)
            raise FedPerError(
                f"the Ray cluster at engine.address={address} asks for a token: export "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the cluster's token>, then run again"
            ) from None
        raise FedPerError(
            f"engine.address={address} does not answer as a Ray cluster's head node within "
            f"engine.join_timeout={timeout:g} s ({error.code().name}): give the address "
            "`ray start --head` printed, or raise engine.join_timeout"
        ) from None
    finally:
        channel.close()


def join_cluster(engine: DictConfig, common: dict) -> None:
    """Join the Ray cluster at `engine.address` (its head checked first), shipping fedper's code
    to its workers with `engine.ship_code`."""
    import ray

    check_reachable(engine.address, "engine.address", "start it with `ray start --head`")
    check_ray_answers(engine.address, engine.get("join_timeout", 10))
    runtime_env = {"env_vars": {"FLWR_TELEMETRY_ENABLED": "0"}}
    if engine.ship_code:
        runtime_env["py_modules"] = [str(PROJECT_ROOT / "fedper")]
    try:
        with ray_starting():
            ray.init(address=engine.address, runtime_env=runtime_env, **common)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise FedPerError(
            f"cannot join the Ray cluster at engine.address={engine.address} "
            f"({type(error).__name__}): start it with `ray start --head` or fix the address"
        ) from None


@contextmanager
def ray_for(plan: RunPlan) -> Iterator[None]:
    """A Ray instance for this run: a new local one, or the configured cluster; shut down after.

    Flower's Ray backend uses an instance that is already running, so starting it here
    decides where the actors go. A local instance gets its own temp folder (removed at the
    end, also after Ctrl-C), no dashboard, loopback as its address and Ray's token
    authentication with a token of its own (`fedper.ray_local`); RAY_ADDRESS is ignored while
    it starts.
    """
    quiet_ray_signals()
    import ray

    cfg = plan.spec.cfg
    common = {"logging_level": logging.ERROR, "log_to_driver": False}
    temp_dir = None
    saved_address = os.environ.pop("RAY_ADDRESS", None)
    authentication = ExitStack()  # closed after Ray is shut down
    try:
        if cfg.engine.name == "ray":
            join_cluster(cfg.engine, common)
        else:
            temp_dir, owner = ray_temp_dir()
            # workers import fedper from wherever this process does (a checkout, PYTHONPATH)
            pythonpath = os.pathsep.join(p for p in sys.path if p)
            authentication.enter_context(token_authentication())
            with ray_starting():
                ray.init(
                    address="local",
                    _node_ip_address=LOOPBACK,
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
        authentication.close()
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
                num_supernodes=shared_nodes(cfg) or cfg.num_clients,
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


def check_address(cfg: DictConfig, key: str, what: str) -> None:
    """`engine.<key>` is a host:port."""
    value = None if OmegaConf.is_missing(cfg.engine, key) else cfg.engine.get(key)
    check(
        isinstance(value, str) and value.rpartition(":")[2].isdigit(),
        f"engine={cfg.engine.name} needs engine.{key}=<host:port> of {what}"
        + (f", not {value}" if value is not None else ""),
    )


def check_simulation(cfg: DictConfig) -> None:
    """How many CPUs the run's own Ray may use; the head folder, which clients write here."""
    cpus = cfg.engine.get("num_cpus")
    check(
        cpus is None or (is_whole(cpus) and cpus > 0),
        f"engine.num_cpus={show(cpus)} is out of range: use null (all CPUs) or a whole number > 0",
    )
    check(
        cpus is None or cpus <= RAY_MAX_RESOURCE,
        f"engine.num_cpus={show(cpus)} is out of range: use null (all CPUs) or a whole number "
        f"in 1-{RAY_MAX_RESOURCE}",
    )
    per_client = cfg.client_resources.num_cpus
    check(
        cpus is None or per_client <= cpus,
        f"client_resources.num_cpus={show(per_client)} is more than engine.num_cpus={cpus} "
        f"gives the run's Ray: no client could start; use client_resources.num_cpus<={cpus} or "
        "raise engine.num_cpus",
    )
    check_max_nodes(cfg)
    check_folder("state_dir", cfg.state_dir, must_write=True)  # heads are written here


def check_max_nodes(cfg: DictConfig) -> None:
    """`engine.max_nodes`: null (one node per client) or a whole number > 0."""
    limit = cfg.engine.get("max_nodes")
    check(
        limit is None or (is_whole(limit) and 0 < limit <= RAY_MAX_RESOURCE),
        f"engine.max_nodes={show(limit)} is out of range: use a whole number > 0 (nodes the "
        "simulation starts; each serves clients in turn when there are more), or null for one "
        "node per client",
    )


def check_ray(cfg: DictConfig) -> None:
    """The cluster's address and whether to ship this checkout's code to it."""
    check_address(cfg, "address", "the Ray cluster's head node")
    if "ship_code" in cfg.engine:
        check_bool("engine.ship_code", cfg.engine.ship_code)
    join = cfg.engine.get("join_timeout", 10)
    check(
        is_number(join) and join > 0,
        f"engine.join_timeout={show(join)} is out of range: use a number of seconds > 0",
    )
    check_max_nodes(cfg)
    check_folder("state_dir", cfg.state_dir, must_write=True)  # heads are written here

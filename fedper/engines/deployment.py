"""The Deployment Engine: the run is submitted to a SuperLink with `flwr run`.

Real SuperNodes run the clients; the ServerApp writes the run directory where it runs, and
this process streams the run's lines until it ends.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from fedper import PROJECT_ROOT
from fedper.checks import check, check_bool, check_folder, show
from fedper.engines.simulation import check_address
from fedper.errors import ERROR_PREFIX, FedPerError
from fedper.spec import RunPlan

FLOWER_CONNECTION = "fedper"  # the SuperLink connection's name in a run's own FLWR_HOME

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
    done = subprocess.run(
        flwr_command("ls", FLOWER_CONNECTION, "--run-id", flower_run_id, "--format", "json"),
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        run = json.loads(done.stdout)["runs"][0]
        return str(run["status"]), str(run.get("status-details") or "")
    except (ValueError, KeyError, IndexError, TypeError):
        return "", ""


def check_deployment(cfg: DictConfig) -> None:
    """The SuperLink's address and how to reach it; heads live in each SuperNode's state-dir."""
    check_address(cfg, "superlink", "the SuperLink")
    if "insecure" in cfg.engine:
        check_bool("engine.insecure", cfg.engine.insecure)
    certificates = cfg.engine.get("root_certificates")
    if certificates is not None:
        check(
            isinstance(certificates, str) and Path(certificates).expanduser().is_file(),
            f"engine.root_certificates={show(certificates)} is not a file: name the CA "
            "certificate (PEM) that signed the SuperLink's, or null",
        )
    check_folder("state_dir", cfg.state_dir, must_create=False)

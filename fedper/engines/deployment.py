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
from fedper.commit import committed_round
from fedper.engines.simulation import check_address
from fedper.engines.tls import tls_mismatch
from fedper.errors import ERROR_PREFIX, FedPerError
from fedper.spec import RunPlan

FLOWER_CONNECTION = "fedper"  # the SuperLink connection's name in a run's own FLWR_HOME

# Flower's own lines in `flwr run --stream` output that say nothing about the run's progress
FLOWER_CHATTER = re.compile(
    r"^(INFO|DEBUG)\s*:|^Using SuperLink|^Successfully installed|^Flower App configuration"
    r"|^- Recommended property"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ROUND_LINE = re.compile(r"round (\d+)/\d+ ")  # the ServerApp's line once a round is committed
COMPLETED = "finished:completed"
UNFINISHED = ("pending", "starting", "running")  # Flower's run statuses before `finished:*`
FLWR_CALL_SECONDS = 60  # a `flwr ls` or `flwr stop` that takes longer gets no answer
REATTACH_LIMIT = 3  # log streams in a row that bring no new line before the stream is lost
LOG_START = "Starting logstream for run_id"  # Flower's line before a run's log, on each attach


def write_flower_config(
    home: Path, superlink: str, insecure: bool, root_certificates: str | Path | None = None
) -> None:
    """A Flower configuration in `home` (a FLWR_HOME) with one SuperLink connection: plain
    HTTP, or TLS checked against `root_certificates` (None: the system's CAs)."""
    import tomli_w

    connection: dict = {"address": superlink, "insecure": insecure}
    if root_certificates is not None and not insecure:
        connection["root-certificates"] = str(Path(root_certificates).expanduser().resolve())
    config = {"superlink": {"default": FLOWER_CONNECTION, FLOWER_CONNECTION: connection}}
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps(config))


def flower_home(plan: RunPlan, home: Path) -> Path:
    """A FLWR_HOME of this run's own holding one SuperLink connection, and the run config."""
    import tomli_w

    engine = plan.spec.cfg.engine
    insecure = bool(engine.insecure)
    write_flower_config(home, engine.superlink, insecure, engine.get("root_certificates"))
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
    stream its log lines; the ServerApp writes the run directory where it runs.

    Returns only when `flwr run` exited 0 and the SuperLink says the run completed; anything
    else (the SuperLink or the launcher's connection lost, `flwr run` killed, a status that is
    not `finished:completed`) is one line with the last committed round and the resume command.
    """
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise FedPerError(
            f"engine=deployment builds the Flower app from a fedper checkout, and {PROJECT_ROOT} "
            "has no pyproject.toml: run from a clone of the repository"
        )
    engine = plan.spec.cfg.engine
    with tempfile.TemporaryDirectory(prefix="fedper-flwr-") as home:
        run_config = flower_home(plan, Path(home))
        env = {**os.environ, "FLWR_HOME": home, "FLWR_TELEMETRY_ENABLED": "0"}
        stream = RunStream()
        submit = flwr_command("run", str(PROJECT_ROOT), FLOWER_CONNECTION, "--run-config",
                              str(run_config), "--stream")  # fmt: skip
        exit_code = follow(stream, submit, env)
        if stream.flower_run_id is None:
            raise FedPerError(not_submitted(engine, exit_code, stream.last_line))
        status, details = run_status(stream.flower_run_id, env)
        exit_code, status, details = reattach(stream, exit_code, status, details, env)
        if stream.error is None and exit_code == 0 and status == COMPLETED:
            return
        stopped = status in UNFINISHED and stop_run(stream.flower_run_id, env)
    if stream.error is not None:  # the ServerApp's own one-line error
        raise FedPerError(stream.error)
    lost = what_was_lost(engine, stream, exit_code, status, details, stopped)
    raise FedPerError(f"{lost}; {resume_hint(plan, stream.last_round)}")


def follow(stream: RunStream, command: list[str], env: dict) -> int:
    """Read `flwr run --stream` or `flwr log --stream` until its output ends; its exit code.
    Ctrl-C stops the run on the SuperLink too, not only the stream."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for line in process.stdout:
            stream.take(line)
        return process.wait()
    except KeyboardInterrupt:
        if stream.flower_run_id is not None:
            stop_run(stream.flower_run_id, env)
        process.terminate()
        process.wait()
        raise


def reattach(
    stream: RunStream, exit_code: int, status: str, details: str, env: dict
) -> tuple[int, str, str]:
    """Flower's log stream can end while the run goes on (`flwr run` then exits 0): follow it
    again with `flwr log --stream`, printing only what was not printed yet, until the run ends
    or REATTACH_LIMIT streams in a row bring nothing new. The last exit code and status."""
    idle = 0
    while exit_code == 0 and stream.error is None and status in UNFINISHED:
        if idle == REATTACH_LIMIT:
            break
        seen = stream.log_lines
        command = flwr_command("log", stream.flower_run_id, FLOWER_CONNECTION, "--stream")
        exit_code = follow(stream, command, env)
        idle = 0 if stream.log_lines > seen else idle + 1
        status, details = run_status(stream.flower_run_id, env)
    return exit_code, status, details


class RunStream:
    """`flwr run --stream` output: the run's own lines are printed, Flower's chatter is not,
    and the ServerApp's one-line error is kept to be raised here (without the traceback
    Flower logs after it). Round lines tell the last round the ServerApp committed; `flwr
    run`'s own error (a box of lines) is kept as one line."""

    def __init__(self) -> None:
        self.flower_run_id: str | None = None
        self.error: str | None = None
        self.last_round = 0
        self.last_line = ""  # the last thing said: `flwr run`'s own error, when it fails
        self.box: list[str] | None = None  # the lines of a box being read
        self.log_lines = 0  # lines of the run's log read so far, over every attach
        self.log_index: int | None = None  # the line of the log this attach is at

    def is_new(self, text: str) -> bool:
        """Whether a line is news: a log followed again starts from its beginning."""
        if LOG_START in text:
            self.log_index = 0
            return False
        if self.log_index is not None:
            self.log_index += 1
            if self.log_index <= self.log_lines:
                return False
            self.log_lines = self.log_index
        return True

    def take(self, line: str) -> None:
        text = ANSI.sub("", line.rstrip())
        if not self.is_new(text) or self.in_box(text):
            return
        if match := re.match(r"Successfully started run (\d+)", text):
            self.flower_run_id = match.group(1)
        elif text.startswith(ERROR_PREFIX):
            self.error = text.removeprefix(ERROR_PREFIX)
        elif text and self.error is None and not FLOWER_CHATTER.match(text):
            if match := ROUND_LINE.match(text):
                self.last_round = int(match.group(1))
            self.last_line = text
            print(text, flush=True)

    def in_box(self, text: str) -> bool:
        """Flower's framed messages (╭─ Error ─╮ ... ╰─╯) are kept as one line, said in the
        launcher's own error."""
        if text.startswith("╭"):
            self.box = [text.strip("╭─╮ ")]
        elif self.box is not None and text.startswith("│"):
            self.box.append(text.strip("│ "))
        elif self.box is not None and text.startswith("╰"):
            title, *body = self.box
            self.last_line = f"{title}: {' '.join(body)}" if title else " ".join(body)
            self.box = None
        else:
            return False
        return True


def run_status(flower_run_id: str, env: dict) -> tuple[str, str]:
    """The run's status on the SuperLink (e.g. `finished:completed`) and its details; empty
    when the SuperLink does not answer."""
    try:
        done = subprocess.run(
            flwr_command("ls", FLOWER_CONNECTION, "--run-id", flower_run_id, "--format", "json"),
            env=env, capture_output=True, text=True, timeout=FLWR_CALL_SECONDS,
        )  # fmt: skip
        run = json.loads(done.stdout)["runs"][0]
        return str(run["status"]), str(run.get("status-details") or "")
    except (subprocess.TimeoutExpired, ValueError, KeyError, IndexError, TypeError):
        return "", ""


def stop_run(flower_run_id: str, env: dict) -> bool:
    """`flwr stop`: a run the launcher no longer follows does not go on by itself."""
    try:
        done = subprocess.run(
            flwr_command("stop", flower_run_id, FLOWER_CONNECTION),
            env=env, capture_output=True, timeout=FLWR_CALL_SECONDS,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def what_was_lost(
    engine: DictConfig, stream: RunStream, exit_code: int, status: str, details: str, stopped: bool
) -> str:
    """What ended the run early, in a few words, from `flwr run`'s exit and the run's status."""
    run = f"Flower run {stream.flower_run_id}"
    said = f": {stream.last_line}" if stream.last_line else ""
    if exit_code < 0:
        flwr_run = f"`flwr run` was killed (signal {-exit_code})"
    else:
        flwr_run = f"`flwr run` exited {exit_code}{said}"
    if not status:
        return (
            f"lost the SuperLink at engine.superlink={engine.superlink}: {flwr_run}, and the "
            f"SuperLink does not answer `flwr ls` about {run}"
        )
    if status in UNFINISHED:
        what = "the launcher's stream" if exit_code >= 0 else "`flwr run`"
        fate = (
            "stopped with `flwr stop`" if stopped else f"still {status}: stop it with `flwr stop`"
        )
        return f"lost {what} while {run} was {status} ({flwr_run}); the run was {fate}"
    why = f" ({details})" if details else ""
    return f"{run} ended as {status}{why}" + (f", and {flwr_run}" if exit_code else "")


def resume_hint(plan: RunPlan, rounds_seen: int) -> str:
    """The last committed round (the run directory's, when this machine sees it; else the last
    round line streamed) and the command that continues after it."""
    run_dir = plan.spec.run_dir
    committed = max(committed_round(run_dir), rounds_seen)
    return (
        f"{committed} of {plan.spec.cfg.num_rounds} round(s) committed; continue with: "
        f"python -m fedper.main resume={run_dir}"
    )


def not_submitted(engine: DictConfig, exit_code: int, said: str) -> str:
    """Why `flwr run` could not start the run, with what to change when TLS is the reason."""
    where = f"`flwr run` could not submit the run to the SuperLink at {engine.superlink}"
    hint = tls_mismatch(engine)
    if hint is not None:
        return f"{where}: {hint}"
    flower = f": {said}" if said else ""
    return f"{where} (exit {exit_code}{flower}): is it running and reachable at engine.superlink?"


def check_deployment(cfg: DictConfig) -> None:
    """The SuperLink's address and how to reach it; heads live in each SuperNode's state-dir."""
    check_address(cfg, "superlink", "the SuperLink")
    check_bool("engine.insecure", cfg.engine.get("insecure"))
    certificates = cfg.engine.get("root_certificates")
    if certificates is not None:
        check(
            isinstance(certificates, str) and Path(certificates).expanduser().is_file(),
            f"engine.root_certificates={show(certificates)} is not a file: name the CA "
            "certificate (PEM) that signed the SuperLink's, or null",
        )
        check(
            not cfg.engine.insecure,
            f"engine.root_certificates={certificates} is for TLS, and engine.insecure=true "
            "turns TLS off: set engine.insecure=false, or drop engine.root_certificates",
        )
    check_folder("state_dir", cfg.state_dir, must_create=False)

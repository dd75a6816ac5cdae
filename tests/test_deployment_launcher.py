"""The Deployment Engine's launcher without a federation: what it prints and keeps of the
stream, how it names what was lost, how it tells a TLS mismatch, its config checks; and that
no engine's early return is taken for a finished run."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from helpers import SMALL, make_config
from omegaconf import OmegaConf

from fedper.certificates import make_certificates
from fedper.engines.deployment import RunStream, check_deployment, what_was_lost
from fedper.engines.tls import tls_mismatch
from fedper.errors import ConfigError, FedPerError
from fedper.experiment import run_experiment


def test_the_stream_prints_the_runs_lines_and_keeps_its_id_last_round_and_error(capsys):
    stream = RunStream()
    for line in [
        "\x1b[92mINFO \x1b[0m:      Starting logstream for run_id `7`",
        "Successfully started run 7",
        "round 1/3  accuracy 0.300 (min 0.200)  loss 1.000  2.0 s",
        "round 2/3  accuracy 0.400 (min 0.300)  loss 0.900  2.0 s",
        "fedper: error: client(s) [1] did not reply",
        "Traceback (most recent call last):",
    ]:
        stream.take(line + "\n")
    assert (stream.flower_run_id, stream.last_round) == ("7", 2)
    assert stream.error == "client(s) [1] did not reply"
    printed = capsys.readouterr().out.splitlines()
    assert printed == [line for line in printed if line.startswith("round ")] and len(printed) == 2


def test_a_log_followed_again_prints_only_what_is_new(capsys):
    stream = RunStream()
    start = "\x1b[92mINFO \x1b[0m:      Starting logstream for run_id `7`\n"
    first = ["round 1/3  accuracy 0.300", "round 2/3  accuracy 0.400"]
    for line in ["Successfully started run 7", start, *first]:
        stream.take(line + "\n")
    for line in [start, *first, "round 3/3  accuracy 0.500"]:  # `flwr log --stream` again
        stream.take(line + "\n")
    assert capsys.readouterr().out.splitlines() == [*first, "round 3/3  accuracy 0.500"]
    assert (stream.last_round, stream.log_lines) == (3, 3)


ENGINE = OmegaConf.create({"superlink": "127.0.0.1:9091", "insecure": False})


def lost(exit_code: int, status: str, details: str = "", stopped: bool = False) -> str:
    stream = RunStream()
    stream.take("Successfully started run 7\n")
    stream.take("Error: Connection to the SuperLink is unavailable.\n")
    return what_was_lost(ENGINE, stream, exit_code, status, details, stopped)


def test_what_was_lost_is_said_from_the_exit_code_and_the_runs_status():
    assert lost(1, "") == (
        "lost the SuperLink at engine.superlink=127.0.0.1:9091: `flwr run` exited 1: Error: "
        "Connection to the SuperLink is unavailable., and the SuperLink does not answer "
        "`flwr ls` about Flower run 7"
    )
    assert lost(-9, "running", stopped=True) == (
        "lost `flwr run` while Flower run 7 was running (`flwr run` was killed (signal 9)); "
        "the run was stopped with `flwr stop`"
    )
    assert lost(1, "running").endswith("the run was still running: stop it with `flwr stop`")
    assert lost(0, "finished:failed", "ServerApp failed") == (
        "Flower run 7 ended as finished:failed (ServerApp failed)"
    )
    # a status this launcher does not know is a failure too
    assert lost(0, "finished:paused") == "Flower run 7 ended as finished:paused"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    make_certificates(folder, ["127.0.0.1"], nodes=0)
    return folder


@pytest.fixture
def tls_server(certificates):
    """A TLS server on 127.0.0.1 with the SuperLink certificate: it completes handshakes."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates / "superlink.crt", certificates / "superlink.key")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()
    thread.join(timeout=10)


def engine(address: str, insecure: bool, certificates: Path | None = None):
    return OmegaConf.create({"superlink": address, "insecure": insecure,
                             "root_certificates": str(certificates) if certificates else None})  # fmt: skip


def test_a_tls_superlink_is_named_to_a_launcher_without_its_ca(tls_server, certificates, tmp_path):
    expected = "the SuperLink speaks TLS: set engine.root_certificates=<the CA certificate"
    assert tls_mismatch(engine(tls_server, insecure=True)).startswith(expected)
    assert "and engine.insecure=false" in tls_mismatch(engine(tls_server, insecure=True))
    assert tls_mismatch(engine(tls_server, insecure=False)).startswith(expected)
    assert tls_mismatch(engine(tls_server, False, certificates / "ca.crt")) is None
    make_certificates(tmp_path, ["127.0.0.1"], nodes=0)  # another lab's CA
    assert "is not signed by engine.root_certificates=" in tls_mismatch(
        engine(tls_server, False, tmp_path / "ca.crt")
    )


def test_a_plain_superlink_is_named_to_a_tls_launcher_and_silence_is_not_guessed():
    with socket.create_server(("127.0.0.1", 0)) as plain:  # accepts, then closes: no TLS
        address = f"127.0.0.1:{plain.getsockname()[1]}"
        threading.Thread(target=lambda: plain.accept()[0].close(), daemon=True).start()
        assert tls_mismatch(engine(address, insecure=False)) == (
            "the SuperLink speaks plain HTTP (it was started with --insecure): set "
            "engine.insecure=true, for local testing only"
        )
    assert tls_mismatch(engine(address, insecure=False)) is None  # nothing answers now


def test_root_certificates_need_tls_and_a_file(tmp_path):
    base = ["engine=deployment", "engine.superlink=127.0.0.1:9091", f"state_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="engine.insecure=true turns TLS off"):
        check_deployment(make_config([*base, "engine.insecure=true",
                                      f"engine.root_certificates={__file__}"]))  # fmt: skip
    with pytest.raises(ConfigError, match="is not a file: name the CA certificate"):
        check_deployment(make_config([*base, f"engine.root_certificates={tmp_path}/none.crt"]))
    check_deployment(make_config([*base, f"engine.root_certificates={__file__}"]))


def test_an_engine_that_returns_before_the_last_round_is_not_a_finished_run(tmp_path, caplog):
    cfg = make_config([*SMALL, f"data_dir={tmp_path / 'data'}", f"state_dir={tmp_path / 's'}"])
    with pytest.raises(FedPerError) as error:
        run_experiment(cfg, tmp_path / "run", engine=lambda plan: None)
    assert str(error.value) == (
        f"the simulation engine returned, but {tmp_path / 'run'} holds 0 of 2 round(s); "
        f"continue with: python -m fedper.main resume={tmp_path / 'run'}"
    )
    assert "finished" not in caplog.text

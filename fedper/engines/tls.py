"""Whether the launcher and the SuperLink agree about TLS: one handshake tells what to set."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from omegaconf import DictConfig

TLS_HINT = (
    "the SuperLink speaks TLS: set engine.root_certificates=<the CA certificate that signed "
    "its certificate, e.g. the lab's ca.crt from python -m fedper.certificates>"
)
TLS_ON = " and engine.insecure=false"
PLAIN_HINT = (
    "the SuperLink speaks plain HTTP (it was started with --insecure): set "
    "engine.insecure=true, for local testing only"
)


def tls_mismatch(engine: DictConfig) -> str | None:
    """What to set when the launcher and the SuperLink disagree about TLS, or when the
    SuperLink's certificate does not check out; None when they agree (or nothing answers)."""
    host, _, port = str(engine.superlink).rpartition(":")
    address = (host or "127.0.0.1", int(port))
    certificates = engine.get("root_certificates")
    speaks_tls = handshake(address, checked=False)
    if speaks_tls is None:
        return None
    if not speaks_tls:
        return None if engine.insecure else PLAIN_HINT
    if engine.insecure:
        return TLS_HINT + TLS_ON
    if handshake(address, checked=True, cafile=certificates):
        return None
    if certificates is None:
        return TLS_HINT
    return (
        f"the SuperLink's certificate is not signed by engine.root_certificates={certificates} "
        f"for the name {address[0]}: give the CA that signed it, or a certificate made for "
        "this address"
    )


def handshake(address: tuple[str, int], checked: bool, cafile: str | None = None) -> bool | None:
    """Whether a TLS handshake succeeds: the protocol only, or with the certificate checked
    against `cafile` (None: the system's CAs) and the host name; None when nothing answers."""
    context = ssl.create_default_context(cafile=str(Path(cafile).expanduser()) if cafile else None)
    if not checked:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        connection = socket.create_connection(address, timeout=10)
    except OSError:
        return None
    try:
        with context.wrap_socket(connection, server_hostname=address[0]):
            return True
    except (ssl.SSLError, OSError):
        return False
    finally:
        connection.close()

"""Certificates and keys for a lab's federation, made with the `cryptography` package: a CA,
the SuperLink's TLS certificate signed by it, and one authentication key pair per SuperNode.

    python -m fedper.certificates <folder> --superlink <host>[,<host>...] --nodes <n>

`<host>` is each name or IP address SuperNodes and the launcher use to reach the SuperLink;
localhost, 127.0.0.1 and ::1 are always added, because the SuperLink's own ServerApp reaches it
over loopback. Nothing is overwritten: a folder that already holds one of the files is refused.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
CA_FILES = ("ca.crt", "ca.key")
SUPERLINK_FILES = ("superlink.crt", "superlink.key")


def node_key_files(node: int) -> tuple[str, str]:
    """The private key a SuperNode starts with, and the public key the SuperLink registers."""
    return f"supernode-{node}.key", f"supernode-{node}.pub"


def new_key() -> ec.EllipticCurvePrivateKey:
    """A P-384 key: a NIST curve, as Flower requires of SuperNode keys."""
    return ec.generate_private_key(ec.SECP384R1())


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def subject_alternative_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, *LOOPBACK_NAMES]):  # in order, once each
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
    hosts: list[str] | None = None,
) -> x509.Certificate:
    """A CA certificate (no issuer: self-signed) or a server certificate for `hosts`."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if hosts is not None:
        builder = builder.add_extension(subject_alternative_names(hosts), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA384())


def write(folder: Path, name: str, data: bytes, private: bool = False) -> None:
    """A new file (never an existing one), readable by its owner only when it is a secret."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    with os.fdopen(os.open(folder / name, flags, 0o600 if private else 0o644), "wb") as out:
        out.write(data)


def make_certificates(folder: Path, hosts: list[str], nodes: int, days: int = 365) -> list[str]:
    """Write the CA, the SuperLink's certificate for `hosts` and `nodes` SuperNode key pairs
    into `folder`; returns the file names written. Refuses a folder holding any of them."""
    names = [*CA_FILES, *SUPERLINK_FILES, *(f for n in range(nodes) for f in node_key_files(n))]
    taken = [name for name in names if (folder / name).exists()]
    if taken:
        raise FileExistsError(
            f"{folder} already holds {', '.join(taken)}: choose a new folder (nothing was written)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = new_key(), new_key()
    ca = certificate("fedper lab CA", ca_key, None, ca_key, days)
    server = certificate(hosts[0], server_key, ca, ca_key, days, hosts)
    write(folder, "ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    write(folder, "ca.key", pem_key(ca_key), private=True)
    write(folder, "superlink.crt", server.public_bytes(serialization.Encoding.PEM))
    write(folder, "superlink.key", pem_key(server_key), private=True)
    for node in range(nodes):
        key = new_key()
        private_name, public_name = node_key_files(node)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,  # what flower-supernode reads
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        write(folder, private_name, private, private=True)
        write(folder, public_name, public + b"\n")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fedper.certificates",
        description="Make a CA, a SuperLink TLS certificate and SuperNode key pairs.",
    )
    parser.add_argument("folder", type=Path, help="where the files go (must not hold them yet)")
    parser.add_argument(
        "--superlink",
        required=True,
        help="comma-separated names or IP addresses of the SuperLink's machine",
    )
    parser.add_argument("--nodes", type=int, required=True, help="how many SuperNode key pairs")
    parser.add_argument("--days", type=int, default=365, help="how long the certificates last")
    args = parser.parse_args(argv)
    hosts = [host.strip() for host in args.superlink.split(",") if host.strip()]
    if not hosts or args.nodes < 0 or args.days < 1:
        parser.error("give --superlink <host>, --nodes >= 0 and --days >= 1")
    try:
        names = make_certificates(args.folder.expanduser(), hosts, args.nodes, args.days)
    except (FileExistsError, OSError) as error:
        print(f"fedper.certificates: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {', '.join(names)} to {args.folder}")
    print(
        "ca.crt goes to every SuperNode and launcher; superlink.crt/.key to the SuperLink; "
        "supernode-<i>.key to node i (register supernode-<i>.pub with `flwr supernode "
        "register`); keep ca.key offline."
    )


if __name__ == "__main__":
    main()

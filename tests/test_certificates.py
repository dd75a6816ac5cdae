"""`python -m fedper.certificates`: a CA, a SuperLink certificate for the lab's names and
loopback, and SuperNode keys in the formats Flower reads; nothing is overwritten."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)

from fedper.certificates import make_certificates


def test_the_superlink_certificate_is_signed_by_the_ca_for_the_lab_and_loopback(tmp_path):
    make_certificates(tmp_path, ["superlink.lab", "10.0.0.5"], nodes=2)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "superlink.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["superlink.lab", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ("10.0.0.5", "127.0.0.1", "::1")
    ]
    key = load_pem_private_key((tmp_path / "superlink.key").read_bytes(), None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()


def test_node_keys_are_p384_openssh_pairs_and_secrets_are_private(tmp_path):
    make_certificates(tmp_path, ["127.0.0.1"], nodes=2)
    for node in range(2):
        private = load_ssh_private_key((tmp_path / f"supernode-{node}.key").read_bytes(), None)
        public = load_ssh_public_key((tmp_path / f"supernode-{node}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
    for name in ("ca.key", "superlink.key", "supernode-0.key", "supernode-1.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "ca.crt").stat().st_mode) == 0o644


def test_a_folder_holding_any_of_the_files_is_refused_and_left_alone(tmp_path):
    (tmp_path / "superlink.key").write_text("mine")
    with pytest.raises(FileExistsError, match="already holds superlink.key"):
        make_certificates(tmp_path, ["127.0.0.1"], nodes=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["superlink.key"]
    assert (tmp_path / "superlink.key").read_text() == "mine"


def test_the_command_line_writes_the_files_or_says_why_not_in_one_line(tmp_path):
    command = [sys.executable, "-m", "fedper.certificates", str(tmp_path / "certs"),
               "--superlink", "127.0.0.1", "--nodes", "1"]  # fmt: skip
    made = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "certs" / "supernode-0.pub").is_file()
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"fedper.certificates: error: {tmp_path / 'certs'} already holds ca.crt, ca.key, "
        "superlink.crt, superlink.key, supernode-0.key, supernode-0.pub: choose a new folder "
        "(nothing was written)"
    ]

"""Throwaway credentials of run-local --secure: a CA-signed server certificate and node key pairs."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fl_server.credentials import make_node_key, make_tls


def test_server_certificate_is_signed_by_the_ca_for_the_loopback_address(tmp_path: Path) -> None:
    # Execute
    files = make_tls(tmp_path / "creds", "127.0.0.1")

    # Assert: the chain verifies and names the address the SuperNodes dial.
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    assert key.public_key() == server.public_key()
    assert files.server_key.stat().st_mode & 0o777 == 0o600
    assert {p.name for p in (tmp_path / "creds").iterdir()} == {"ca.crt", "server.pem", "server.key"}


def test_node_key_pair_is_openssh_ecdsa_and_private_half_is_owner_only(tmp_path: Path) -> None:
    # Execute
    files = make_node_key(tmp_path / "nodes", "tenant-0")

    # Assert
    public = serialization.load_ssh_public_key(files.public_key.read_bytes())
    private = serialization.load_ssh_private_key(files.private_key.read_bytes(), password=None)
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
    assert private.public_key() == public
    assert files.private_key.stat().st_mode & 0o777 == 0o600
    assert files.public_key.read_text().endswith(" tenant-0\n")

"""The development CA issues chains that an independent X.509 verifier accepts."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import DNSName, IPAddress, verification
from cryptography.x509.oid import NameOID

from fedmq.certificates import (
    create_ca,
    issue_device_certificate,
    issue_server_certificate,
    load_certified_key,
)
from serialization.errors import MalformedError


def _policy(ca: x509.Certificate) -> verification.PolicyBuilder:
    return verification.PolicyBuilder().store(verification.Store([ca]))


def _common_name(certificate: x509.Certificate) -> str:
    value = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


def test_certificates_server_chain_verifies_for_its_names() -> None:
    """The server certificate verifies for localhost and 127.0.0.1, not for another host."""
    ca = create_ca()
    server = issue_server_certificate(ca, ["localhost", "127.0.0.1"])
    policy = _policy(ca.certificate)
    chain = policy.build_server_verifier(DNSName("localhost")).verify(server.certificate, [])
    assert chain == [server.certificate, ca.certificate]
    address = IPAddress(ipaddress.ip_address("127.0.0.1"))
    policy.build_server_verifier(address).verify(server.certificate, [])
    with pytest.raises(verification.VerificationError):
        policy.build_server_verifier(DNSName("evil.example")).verify(server.certificate, [])


def test_certificates_device_chain_verifies_with_the_device_id_as_cn() -> None:
    """A device certificate is a client certificate whose CN is the device id."""
    ca = create_ca()
    device = issue_device_certificate(ca, "dev-a")
    verified = _policy(ca.certificate).build_client_verifier().verify(device.certificate, [])
    assert verified.chain == [device.certificate, ca.certificate]
    assert _common_name(device.certificate) == "dev-a"
    assert verified.subjects == [x509.UniformResourceIdentifier("urn:fedmq:device:dev-a")]


def test_certificates_roles_and_issuers_do_not_mix() -> None:
    """A server certificate is no client certificate, and another CA's chain fails."""
    ca, other = create_ca(), create_ca()
    server = issue_server_certificate(ca)
    device = issue_device_certificate(other, "dev-a")
    with pytest.raises(verification.VerificationError):
        _policy(ca.certificate).build_client_verifier().verify(server.certificate, [])
    with pytest.raises(verification.VerificationError):
        _policy(ca.certificate).build_client_verifier().verify(device.certificate, [])


def test_certificates_refuse_bad_device_ids() -> None:
    """A device id that is not one topic level never becomes a certificate's CN."""
    with pytest.raises(MalformedError):
        issue_device_certificate(create_ca(), "dev/+")


def test_certificates_write_and_load_round_trip(tmp_path: Path) -> None:
    """Written PEM files load back to the same certificate and key; both are 0600."""
    ca = create_ca()
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    loaded = load_certified_key(tmp_path / "ca.crt", tmp_path / "ca.key")
    assert loaded.certificate == ca.certificate
    assert loaded.key.private_numbers() == ca.key.private_numbers()
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")

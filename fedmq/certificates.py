"""A development certificate authority: broker server and device client certificates."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmq.password_file import write_private_file
from serialization.topics import validate_identifier

__all__ = [
    "DEFAULT_SERVER_NAMES",
    "CertifiedKey",
    "create_ca",
    "issue_device_certificate",
    "issue_server_certificate",
    "load_certified_key",
]

DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1", "mosquitto")
"""Names the development server certificate is valid for (``mosquitto`` = compose service)."""
_BACKDATE = datetime.timedelta(minutes=5)
"""Certificates start slightly in the past, so a device whose clock lags accepts them."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CertifiedKey:
    """A certificate and its private key (P-256)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, certificate_path: Path, key_path: Path) -> None:
        """Write both as PEM, atomically and readable only by their owner (0600)."""
        write_private_file(
            key_path,
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        )
        pem = self.certificate.public_bytes(serialization.Encoding.PEM).decode()
        write_private_file(certificate_path, pem)


def load_certified_key(certificate_path: Path, key_path: Path) -> CertifiedKey:
    """Read a PEM certificate and its unencrypted P-256 key."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} does not hold an EC private key")
    certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    return CertifiedKey(certificate=certificate, key=key)


def _builder(
    subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def create_ca(*, common_name: str = "fedmq development CA", days: int = 3650) -> CertifiedKey:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        _builder(common_name, name, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(certificate=certificate, key=key)


def _leaf(
    ca: CertifiedKey,
    common_name: str,
    names: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> CertifiedKey:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key_id = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    certificate = (
        _builder(common_name, ca.certificate.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id.value),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return CertifiedKey(certificate=certificate, key=key)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_server_certificate(
    ca: CertifiedKey, names: Sequence[str] = DEFAULT_SERVER_NAMES, *, days: int = 825
) -> CertifiedKey:
    """The broker's TLS certificate, valid for the DNS names and IP addresses in ``names``."""
    if not names:
        raise ValueError("a server certificate needs at least one host name or address")
    general_names = [_general_name(name) for name in names]
    return _leaf(ca, names[0], general_names, ExtendedKeyUsageOID.SERVER_AUTH, days)


def issue_device_certificate(ca: CertifiedKey, device_id: str, *, days: int = 365) -> CertifiedKey:
    """A device's client certificate: CN = ``device_id`` (the broker's username with
    ``use_identity_as_username``), also as a ``urn:fedmq:device:`` URI name."""
    validate_identifier(device_id, "device id")
    uri = x509.UniformResourceIdentifier(f"urn:fedmq:device:{device_id}")
    return _leaf(ca, device_id, [uri], ExtendedKeyUsageOID.CLIENT_AUTH, days)

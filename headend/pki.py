"""A small PKI for the broker's TLS: one CA, a server certificate, client certificates.

`headend pki init DIR` makes them (the `cryptography` library). Keys are ECDSA
P-256: every client here (OpenSSL in mosquitto and Python, mbedTLS in
MicroPython on the unix port and the ESP32) speaks it, and its handshake costs
a meter far less heap and time than RSA-2048. Private keys are written 0600;
certificates 0644 (they are public).

An existing CA in DIR is kept (a re-run issues only what is missing), so the
meters' pinned CA survives; `force=True` makes everything afresh.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from headend.errors import ConfigError
from headend.secretfile import write_private

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest leaf lifetime public clients still accept
CERT_MODE = 0o644
_CLOCK_SKEW = datetime.timedelta(hours=1)  # a board whose RTC is a little behind still accepts


class PkiError(ConfigError):
    """A PKI directory that cannot be used (unreadable key, bad name)."""


@dataclass(frozen=True)
class Pki:
    """The files of one PKI directory."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    def client_cert(self, name: str) -> Path:
        return self.dir / f"client-{_safe(name)}.pem"

    def client_key(self, name: str) -> Path:
        return self.dir / f"client-{_safe(name)}.key"


def _safe(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise PkiError(f"client name: expected letters, digits, '-', '_' or '.', got {name!r}")
    return name


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(CERT_MODE)
    os.replace(tmp, path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ami-stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _load(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
        key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise PkiError(f"{pki.dir}: cannot read the CA ({e}); --force makes a new one") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{pki.ca_key}: expected an EC key")
    return cert, key


def _make_ca(pki: Pki, now: datetime.datetime) -> None:
    key = _new_key()
    name = _name("ami-stack CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(pki.ca_key, _key_pem(key))
    _write_public(pki.ca, cert.public_bytes(serialization.Encoding.PEM))


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _issue(
    pki: Pki,
    cn: str,
    hosts: tuple[str, ...],
    usage: x509.ObjectIdentifier,
    cert_path: Path,
    key_path: Path,
    now: datetime.datetime,
) -> None:
    ca_cert, ca_key = _load(pki)
    key = _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def init(
    directory: Path,
    hosts: tuple[str, ...] = DEFAULT_HOSTS,
    clients: tuple[str, ...] = (),
    force: bool = False,
    now: datetime.datetime | None = None,
) -> tuple[Pki, list[Path]]:
    """Make (or complete) a PKI in ``directory``; return it and the files written.

    Args:
        hosts: the server certificate's names (DNS names or IP addresses);
            clients check the one they dial.
        clients: names to issue client certificates for (optional: the broker
            authenticates clients by password).
        force: make a new CA and certificates even if some exist.

    Raises:
        PkiError: an unusable directory or name.
    """
    when = now or datetime.datetime.now(datetime.UTC)
    if not hosts:
        raise PkiError("the server certificate needs at least one host name")
    for name in clients:
        _safe(name)
    pki = Pki(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise PkiError(f"{directory}: cannot create it: {e}") from e
    written: list[Path] = []
    if force or not (pki.ca.exists() and pki.ca_key.exists()):
        _make_ca(pki, when)
        written += [pki.ca, pki.ca_key]
        force = True  # a new CA: every certificate must be issued under it
    server_usage = ExtendedKeyUsageOID.SERVER_AUTH
    if force or not (pki.server_cert.exists() and pki.server_key.exists()):
        _issue(pki, hosts[0], hosts, server_usage, pki.server_cert, pki.server_key, when)
        written += [pki.server_cert, pki.server_key]
    client_usage = ExtendedKeyUsageOID.CLIENT_AUTH
    for name in clients:
        cert, key = pki.client_cert(name), pki.client_key(name)
        if force or not (cert.exists() and key.exists()):
            _issue(pki, name, (), client_usage, cert, key, when)
            written += [cert, key]
    return pki, written

"""The broker's certificate authority (docs/security.md 5.4): a CA the owner
of the gateway keeps, the broker's server certificate signed by it, and the
CA in DER for devices (MicroPython's ssl takes DER only).

The CA is the fleet's trust anchor: every device provisioned for mqtts://
trusts it alone, so a new one cuts the fleet off until each device is
provisioned again. create_ca therefore refuses to replace one unless forced.
Keys are EC P-256, which mbedTLS (the ESP32's and the unix port's ssl) and
Mosquitto's OpenSSL accept alike.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .broker import TlsListener
from .errors import ConfigError

CA_KEY = "ca.key"
CA_CERT = "ca.pem"
CA_DER = "ca.der"  # what devices are provisioned with
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS = 3650
SERVER_DAYS = 825  # what browsers accept of a server certificate's life; the broker's is renewed as often
_HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")


@dataclass(frozen=True)
class CaFiles:
    """A CA's files in its folder: the private key (0600), the certificate
    as PEM (Mosquitto, the gateway's --ca) and as DER (devices)."""

    key: Path
    cert: Path
    der: Path

    @classmethod
    def of(cls, directory: Path) -> CaFiles:
        return cls(directory / CA_KEY, directory / CA_CERT, directory / CA_DER)


def create_ca(directory: Path, force: bool = False, *, now: float | None = None) -> CaFiles:
    """A new CA in directory (made 0700 if new). Raises ConfigError if one
    is there already and not force: the devices that trust it would be cut off."""
    files = CaFiles.of(directory)
    if not force and (files.key.exists() or files.cert.exists()):
        raise ConfigError(
            f"{directory} already holds a CA ({files.cert.name}); every device provisioned for "
            "mqtts:// trusts it alone, so a new one cuts them off: use --force to replace it"
        )
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "permabeta"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"permabeta broker CA {socket.gethostname()}"),
        ]
    )
    start = _start(now)
    public = private.public_key()
    cert = (
        _builder(name, name, public, start, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(private, hashes.SHA256())
    )
    _save(
        directory,
        "a CA",
        (files.key, _pem(private), 0o600),
        (files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644),
        (files.der, cert.public_bytes(serialization.Encoding.DER), 0o644),
    )
    return files


def server_cert(
    ca_dir: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    out_dir: Path | None = None,
    *,
    now: float | None = None,
    client: bool = False,
    files: tuple[str, str] = (SERVER_CERT, SERVER_KEY),
) -> tuple[Path, Path]:
    """A server certificate for the broker, signed by the CA in ca_dir, naming
    hosts (names or IP addresses; a client checks the one it connects to),
    written with its key (0600) into out_dir (default ca_dir) as server.pem
    and server.key (or files), replacing any there. client: a client's
    certificate too (a NATS node's, which dials the others' routes with it).
    Returns (cert path, key path). Raises ConfigError."""
    names = check_hosts(hosts)
    ca_cert, ca_key = _load(ca_dir)
    out = out_dir or ca_dir
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    public = private.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    cert = (
        _builder(subject, ca_cert.subject, public, _start(now), SERVER_DAYS)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out / files[0], out / files[1]
    pem = cert.public_bytes(serialization.Encoding.PEM)
    _save(out, "the server certificate", (key_path, _pem(private), 0o600), (cert_path, pem, 0o644))
    return cert_path, key_path


def tls_listener(ca_dir: Path, port: int) -> TlsListener:
    """A Mosquitto TLS listener on port from what `broker ca` wrote into
    ca_dir (the CA, the server certificate and its key). Raises ConfigError
    naming what is missing."""
    files = (CaFiles.of(ca_dir).cert, ca_dir / SERVER_CERT, ca_dir / SERVER_KEY)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        hint = f"make them with `permabeta broker ca --out {ca_dir}`"
        raise ConfigError(f"{ca_dir} lacks {', '.join(missing)} for the TLS listener: {hint}")
    if not 0 < port < 65536:
        raise ConfigError(f"a TLS listener's port is 1-65535, not {port}")
    return TlsListener(port, *(f.resolve() for f in files))


def cert_hosts(path: Path) -> list[str]:
    """The names and addresses a certificate (PEM) is for, in its order; [] if it cannot be read."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return []
    return [str(n.value) for n in names if isinstance(n, x509.DNSName | x509.IPAddress)]


def ca_der(ca_dir: Path) -> bytes:
    """The CA certificate of ca_dir in DER, as a device is provisioned with it. Raises ConfigError."""
    return _load(ca_dir)[0].public_bytes(serialization.Encoding.DER)


def read_ca(path: Path) -> bytes:
    """The CA certificate in a file (PEM or DER) as DER. Raises ConfigError
    if it is not there, not a certificate, or not a CA's."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the CA certificate {path}: {exc.strerror or exc}") from exc
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data)
        )
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except ValueError as exc:
        raise ConfigError(f"{path} is not a certificate (PEM or DER): {exc}") from exc
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(
            f"{path} is not a CA certificate (no basic constraints CA:TRUE): give the CA's, not a server's"
        )
    return cert.public_bytes(serialization.Encoding.DER)


def write_private_key(path: Path, private: ec.EllipticCurvePrivateKey) -> None:
    """The key as unencrypted PKCS#8 PEM, mode 0600 from its creation, replacing path in one step."""
    _write(path, _pem(private), 0o600)


def _pem(private: ec.EllipticCurvePrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def san(host: str) -> x509.GeneralName:
    """A subject alternative name for host: an IP address as one, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def check_hosts(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """The subject alternative names of a server certificate for hosts.
    Raises ConfigError for none, or for one that is neither a host name nor an IP address."""
    if not hosts:
        raise ConfigError("a server certificate needs at least one host name or IP address")
    names = [san(h) for h in hosts]
    for host, name in zip(hosts, names, strict=True):
        if isinstance(name, x509.DNSName) and not _HOST_NAME.fullmatch(host):
            raise ConfigError(f"{host!r} is not a host name or IP address")
    return names


def _load(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    files = CaFiles.of(ca_dir)
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no CA in {ca_dir} (create one with `permabeta broker ca --out {ca_dir}`)"
        ) from exc
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the CA in {ca_dir}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(f"the key {files.key} is not the key of the CA certificate {files.cert}")
    return cert, key


def _start(now: float | None) -> datetime.datetime:
    # an hour back: a device or broker whose clock is a little behind still accepts it
    t = (
        datetime.datetime.now(datetime.UTC)
        if now is None
        else datetime.datetime.fromtimestamp(now, datetime.UTC)
    )
    return t - datetime.timedelta(hours=1)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    start: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
    )


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _save(directory: Path, what: str, *files: tuple[Path, bytes, int]) -> None:
    """Write (path, content, mode) into directory, made 0700 if new. Raises ConfigError."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path, data, mode in files:
            _write(path, data, mode)
    except OSError as exc:
        raise ConfigError(f"cannot write {what} into {directory}: {exc.strerror or exc}") from exc


def _write(path: Path, data: bytes, mode: int) -> None:
    # each file whole or not at all, with its mode from its creation (a key is never readable by others)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)

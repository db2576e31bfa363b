"""The API's TLS (docs/security.md 5.3): a certificate given, or one the
gateway makes itself at first start and keeps beside its database.

A made certificate is self-signed, EC P-256, for localhost, 127.0.0.1, ::1,
the machine's host name and the listen address; it is made again when it
has expired (or will within a day) or does not name the listen address. A
client trusts it by its SHA-256 fingerprint (`permabeta login --fingerprint`)
or as a CA file, and checks the host name as for any certificate: nothing
here turns verification off.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .ca import san, write_private_key
from .errors import ConfigError

VALID_DAYS = 825  # what browsers accept of a certificate's life
RENEW_BEFORE_S = 86400.0
_WILDCARDS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class ApiTls:
    """How the API is served. on: True HTTPS, False plain HTTP (loopback
    only), None HTTPS unless the address is loopback. cert and key: a
    certificate given (PEM files); without them the gateway makes one."""

    on: bool | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class ServerCert:
    """The certificate the API presents, and what a client needs to trust it."""

    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the DER, lowercase hex
    context: ssl.SSLContext


def is_loopback(host: str) -> bool:
    """Whether host is a loopback address or `localhost` (a wildcard is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def uses_tls(tls: ApiTls, host: str) -> bool:
    """Whether the API on host is served over HTTPS. Raises ConfigError for
    plain HTTP asked on an address that is not loopback."""
    if tls.cert is not None or tls.key is not None:
        if tls.on is False:
            raise ConfigError("a certificate was given, and plain HTTP asked for: choose one")
        return True
    if tls.on is False and not is_loopback(host):
        raise ConfigError(
            f"the API serves plain HTTP on loopback only, not on {host or '*'}: "
            "serve it over HTTPS (the default there) or listen on 127.0.0.1"
        )
    return tls.on if tls.on is not None else not is_loopback(host)


def url_host(host: str) -> str:
    """host as the API's URL names it: a wildcard as 127.0.0.1 (the command
    line on the machine reaches it there), an IPv6 address in brackets."""
    if host in _WILDCARDS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def reach_url(host: str, port: int, hostname: str) -> str | None:
    """The HTTPS URL another machine reaches an API listening on host at:
    a wildcard's is this machine's name (hostname, which the API's own
    certificate names); None if host is a loopback address."""
    if host in _WILDCARDS:
        return f"https://{url_host(hostname)}:{port}"
    return None if is_loopback(host) else f"https://{url_host(host)}:{port}"


def fingerprint(pem: bytes) -> str:
    """The SHA-256 of a PEM certificate's DER, lowercase hex. Raises ConfigError."""
    try:
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate: {exc}") from exc
    return hashlib.sha256(der).hexdigest()


def normal_fingerprint(text: str) -> str | None:
    """A SHA-256 fingerprint as typed (any case, colons, a `sha256:` prefix)
    as 64 lowercase hex digits, or None if it is not one."""
    t = text.strip().lower().removeprefix("sha256:").replace(":", "")
    return t if len(t) == 64 and all(c in "0123456789abcdef" for c in t) else None


def server_cert(tls: ApiTls, host: str, folder: Path, now: float) -> ServerCert:
    """The API's certificate: the one given, else the one kept in folder
    (made or made again as needed). Raises ConfigError."""
    if tls.cert is not None or tls.key is not None:
        if tls.cert is None or tls.key is None:
            raise ConfigError("give both --tls-cert and --tls-key")
        cert, key = tls.cert, tls.key
    else:
        cert, key = folder / "cert.pem", folder / "key.pem"
        if not _usable(cert, key, _hosts(host), now):
            _make(cert, key, _hosts(host), now)
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        pem = cert.read_bytes()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the certificate {cert} with the key {key}: {exc}") from exc
    return ServerCert(cert, key, fingerprint(pem), ctx)


def _hosts(listen: str) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    if listen not in _WILDCARDS and listen not in names:
        names.append(listen)
    return names


def _usable(cert: Path, key: Path, hosts: list[str], now: float) -> bool:
    """Whether the kept certificate can serve: there, readable, not (nearly) expired, naming hosts."""
    try:
        c = x509.load_pem_x509_certificate(cert.read_bytes())
        if not key.is_file():
            return False
        names = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    if c.not_valid_after_utc.timestamp() < now + RENEW_BEFORE_S or c.not_valid_before_utc.timestamp() > now:
        return False
    return all(san(h) in names for h in hosts)


def _make(cert: Path, key: Path, hosts: list[str], now: float) -> None:
    """A new self-signed certificate and its key (mode 0600) in cert's folder (mode 0700)."""
    cert.parent.mkdir(parents=True, exist_ok=True)
    cert.parent.chmod(0o700)
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"permabeta gateway {socket.gethostname()}")])
    start = datetime.datetime.fromtimestamp(now - 3600, datetime.UTC)
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private, hashes.SHA256())
    )
    write_private_key(key, private)
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))


def trusting(pem: str) -> ssl.SSLContext:
    """A client's context that trusts the certificate pem itself (a pool
    worker's own, as it publishes it: self-signed or a CA's), and checks the
    name it is reached by."""
    context = ssl.create_default_context(cadata=pem)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def client_context(cadata: str | None = None, cafile: Path | None = None) -> ssl.SSLContext:
    """A client's context: the system's CAs, or only the certificate (or CA
    file) given; host names checked either way. Raises ConfigError."""
    try:
        if cadata is None and cafile is None:
            return ssl.create_default_context()
        return ssl.create_default_context(cafile=cafile, cadata=cadata)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot read the certificate to trust {cafile or ''}: {exc}") from exc

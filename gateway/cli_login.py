"""`permabeta login` and `permabeta logout` (docs/protocol.md 10.1): a token
of one's account, kept with the gateway's URL and what to trust its
certificate by (gateway/credentials.py), for the commands that follow.

A gateway's certificate that the system's CAs do not vouch for (the one it
made itself) is trusted only when named: by `--cafile`, by `--fingerprint`
(checked against what the gateway presents, then pinned), or, for the
gateway running on this machine's database, by what it wrote there.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import socket
import ssl
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from . import credentials
from .client import ApiClient, local_api, local_context
from .db import redacted
from .errors import ApiCertificateError, ApiError, ApiRequestError, ConfigError
from .paths import db_exists, db_of
from .tls import client_context, fingerprint, is_loopback, normal_fingerprint


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise ApiError("--password-stdin: standard input gave no password")
        return line
    return getpass.getpass(f"password of {args.name}: ")


def presented_cert(url: str) -> str:
    """The certificate (PEM) the server at url presents, not yet trusted:
    to compare with a fingerprint. Raises ApiError."""
    u = urllib.parse.urlsplit(url)
    try:
        return ssl.get_server_certificate((u.hostname or "", u.port or 443), timeout=10)
    except (OSError, ValueError) as exc:
        raise ApiError(f"cannot reach the gateway at {url}: {exc}") from exc


def _trust(args: argparse.Namespace, url: str) -> tuple[ssl.SSLContext | None, dict[str, Any]]:
    """The context to reach url with, and what the credentials keep of it. Raises GatewayError."""
    if not url.startswith("https:"):
        return None, {}
    if args.cafile:
        cafile = str(Path(args.cafile).resolve())
        return client_context(cafile=Path(cafile)), {"cafile": cafile}
    if args.fingerprint:
        want = normal_fingerprint(args.fingerprint)
        if want is None:
            raise ConfigError(f"--fingerprint: {args.fingerprint!r} is not a SHA-256 (64 hex digits)")
        pem = presented_cert(url)
        got = fingerprint(pem.encode())
        if got != want:
            raise ApiCertificateError(
                f"the gateway at {url} presents a certificate of SHA-256 {got}, not the {want} given: "
                "it is not the gateway you meant, or its certificate has changed"
            )
        return client_context(cadata=pem), {"cert": pem, "fingerprint": got}
    local = local_api(db_of(args)) if db_exists(db_of(args)) else None
    if local is not None and local["url"] == url:
        return local_context(local), {
            "cert": Path(local["cert"]).read_text(),
            "fingerprint": local["fingerprint"],
        }
    return client_context(), {}


def cmd_login(args: argparse.Namespace) -> int:
    url = args.url
    if url is None:
        local = local_api(db_of(args))
        if local is None:
            where = redacted(str(db_of(args)))
            raise ApiError(f"no gateway is running on {where}: name its URL (permabeta login URL)")
        url = local["url"]
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{url!r}: a gateway's URL starts with https:// (or http:// on loopback)")
    if url.startswith("http://") and not is_loopback(urllib.parse.urlsplit(url).hostname or ""):
        raise ConfigError(f"{url}: a password goes to a gateway off this machine over https:// only")
    context, trust = _trust(args, url)
    body = {"name": args.name, "password": _password(args), "label": f"cli@{socket.gethostname()}"[:64]}
    try:
        answer = ApiClient(url, None, context).request("POST", "/api/v1/login", body)
    except ApiCertificateError:
        if not trust:
            got = fingerprint(presented_cert(url).encode())
            raise ApiCertificateError(
                f"the gateway at {url} has a certificate this machine does not trust (one it made itself?); "
                f"its SHA-256 fingerprint is {got}. If the gateway shows the same (gateway run prints it), "
                f"log in with --fingerprint {got}, or give --cafile FILE"
            ) from None
        raise
    saved = credentials.save(credentials.Credentials(url, answer["token"], answer["account"], **trust))
    print(f"logged in to {url} as {answer['account']} ({answer['role']}); credentials in {saved}")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    kept = credentials.load()
    if kept is None:
        print("not logged in")
        return 0
    tid = hashlib.sha256(kept.token.encode()).hexdigest()[:12]
    try:
        ApiClient.from_credentials(kept).request("DELETE", f"/api/v1/accounts/{kept.account}/tokens/{tid}")
        done = "token revoked"
    except ApiRequestError as exc:
        if exc.status != 401:
            raise
        done = "the token was revoked already"
    credentials.remove()
    print(f"logged out of {kept.url} ({done}); {credentials.credentials_path()} removed")
    return 0


def register(sub: Any) -> None:
    """Add `login` and `logout` to the commands."""
    li = sub.add_parser("login", help="log in to a gateway: keep a token for the commands that follow")
    li.add_argument("url", nargs="?", help="the gateway's URL (default: the one running on --db)")
    li.add_argument("--name", required=True, help="the account's name")
    li.add_argument("--password-stdin", action="store_true", help="the password from standard input")
    li.add_argument("--cafile", help="trust the gateway's certificate by this CA file")
    li.add_argument(
        "--fingerprint", metavar="SHA256", help="trust the gateway's own certificate of this SHA-256"
    )
    li.add_argument("--db", help="the database of a gateway on this machine (its URL and certificate)")
    li.set_defaults(func=cmd_login)
    lo = sub.add_parser("logout", help="revoke the kept token and forget it")
    lo.set_defaults(func=cmd_logout)

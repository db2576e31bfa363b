"""A small synchronous client of the gateway's API, for the CLI.

Which gateway and which token (docs/protocol.md 10.1): `--db DB` names the
gateway running on that database, and its own token (an admin's) is used;
otherwise the credentials `permabeta login` kept (`--gateway URL` asks for
those, and they must be for that URL); with neither, the gateway of the
default database. Over HTTPS the client trusts only what it was told to:
the certificate the local gateway wrote to its database, the one pinned at
login, a CA file, or the system's CAs.
"""

from __future__ import annotations

import json
import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from . import credentials
from .db import redacted
from .errors import ApiCertificateError, ApiError, ApiRequestError, ConfigError
from .paths import db_of, default_db
from .store import Store
from .tls import client_context, fingerprint, trusting


class ApiClient:
    def __init__(self, url: str, token: str | None, context: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.context = context
        # where else the same API answers (a pool's other workers), asked when this one refuses
        self.others: Callable[[], list[tuple[str, ssl.SSLContext | None]]] | None = None

    @classmethod
    def from_db(cls, db: Path | str) -> ApiClient:
        """Find the running gateway that owns db. Raises ApiError if none."""
        info = local_api(db)
        if info is None:
            shown = redacted(str(db))
            raise ApiError(
                f"no gateway is running on {shown} (start one: permabeta gateway run --db {shown})"
            )
        client = cls(info["url"], info["token"], local_context(info))
        client.others = lambda: pool_apis(db)
        return client

    @classmethod
    def from_credentials(cls, c: credentials.Credentials) -> ApiClient:
        """The client `permabeta login` left. Raises ConfigError."""
        cafile = Path(c.cafile) if c.cafile else None
        context = client_context(c.cert, cafile) if c.url.startswith("https:") else None
        return cls(c.url, c.token, context)

    @classmethod
    def for_args(cls, args: object) -> ApiClient:
        """The client a command's --db and --gateway name (see above). Raises GatewayError."""
        gateway: str | None = getattr(args, "gateway", None)
        db: str | None = getattr(args, "db", None)
        if gateway is None and db:
            return cls.from_db(db_of(args))
        kept = credentials.load()
        if kept is not None and (gateway is None or gateway.rstrip("/") == kept.url):
            return cls.from_credentials(kept)
        if gateway is not None:
            raise ApiError(f"not logged in to {gateway}: permabeta login {gateway} --name NAME")
        return cls.from_db(default_db())

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """The decoded JSON answer. Raises ApiError (ApiRequestError, with
        the API's code, when it answered with an error)."""
        data = None if body is None else json.dumps(body).encode()
        return self._send(method, path, data, "application/json", timeout)

    def upload(self, path: str, data: bytes, content_type: str, timeout: float = 120) -> Any:
        """POST raw bytes; the decoded JSON answer. Raises ApiError."""
        return self._send("POST", path, data, content_type, timeout)

    def download(self, path: str, out: IO[bytes], timeout: float = 120) -> None:
        """GET an answer that is not JSON (an export) into out, as it comes. Raises ApiError."""
        with self._open("GET", path, None, "application/json", timeout) as resp:
            shutil.copyfileobj(resp, out)

    def _send(self, method: str, path: str, data: bytes | None, content_type: str, timeout: float) -> Any:
        with self._open(method, path, data, content_type, timeout) as resp:
            return json.loads(resp.read())

    @contextmanager
    def _open(
        self, method: str, path: str, data: bytes | None, content_type: str, timeout: float
    ) -> Iterator[IO[bytes]]:
        """The answer of a request that succeeded, to read. Raises ApiError
        (ApiRequestError, with the API's code, when it answered with an error).
        A gateway that refuses the connection (the worker of a pool that
        meta.api names was killed, and the others have not said so yet) is
        replaced by another worker of the pool, if one answers: the request
        never reached the first."""
        try:
            with self._open_at(method, path, data, content_type, timeout) as resp:
                yield resp
                return
        except _Refused as exc:
            refused = exc.error
        for url, context in self.others() if self.others is not None else []:
            if url.rstrip("/") == self.url:
                continue
            self.url, self.context = url.rstrip("/"), context
            try:
                with self._open_at(method, path, data, content_type, timeout) as resp:
                    yield resp
                    return
            except _Refused:
                continue
        raise refused

    @contextmanager
    def _open_at(
        self, method: str, path: str, data: bytes | None, content_type: str, timeout: float
    ) -> Iterator[IO[bytes]]:
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": content_type},
        )
        if self.token is not None:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            https = urllib.request.HTTPSHandler(context=self.context)
            with urllib.request.build_opener(https, _NoRedirect()).open(req, timeout=timeout) as resp:
                yield resp
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())["error"]
                message, code = str(err["message"]), str(err["code"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(f"gateway answered HTTP {exc.code}") from None
            raise ApiRequestError(message, code, exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise ApiCertificateError(
                    f"the gateway at {self.url} presented a certificate this client does not trust "
                    f"({reason.verify_message}): log in again with its --fingerprint or --cafile"
                ) from exc
            error = ApiError(f"cannot reach the gateway at {self.url}: {reason}")
            if isinstance(reason, ConnectionRefusedError):
                raise _Refused(error) from exc
            raise error from exc

    def send(
        self, dev: str, op: str, args: dict[str, Any], timeout: float = 10, force: bool = False
    ) -> dict[str, Any]:
        """The device's reply message."""
        body = {"op": op, "args": args, "timeout": timeout, "force": force}
        answer = self.request("POST", f"/api/v1/devices/{dev}/commands", body, timeout=timeout + 5)
        reply: dict[str, Any] = answer["reply"]
        return reply


def local_api(db: Path | str) -> dict[str, Any] | None:
    """What the gateway running on db wrote of its API (meta 'api'), or None."""
    with Store(db, readonly=True) as store:
        raw = store.get_meta("api")
    return None if raw is None else dict(json.loads(raw))


class _Refused(Exception):
    """The gateway refused the connection: the request never reached it."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(str(error))
        self.error = error


def pool_apis(db: Path | str) -> list[tuple[str, ssl.SSLContext | None]]:
    """The APIs of the live workers of the pool on db (heard from within
    TTL_S by the database's clock), most recently heard first, as this
    machine reaches them: a worker here at its own address, one on another
    machine at the address it publishes; over HTTPS trusting the
    certificate it publishes. Empty for a gateway alone."""
    from .pool import Pool

    with Store(db, readonly=True) as store:
        pool = Pool(store)
        workers = pool.live_apis(time.time())
    out: list[tuple[str, ssl.SSLContext | None]] = []
    for api, machine, reach, cert in workers:
        url = api if machine == pool.machine else reach
        if url is None:
            continue  # (another machine's worker with its API on its loopback)
        https = url.startswith("https:")
        if (https and not cert) or (machine != pool.machine and not https):
            continue  # (none to trust it by; the pool's token goes to another machine over TLS alone)
        try:
            out.append((url, trusting(cert) if https and cert else None))
        except ssl.SSLError:
            continue  # (a published certificate that does not read)
    return out


def local_context(info: dict[str, Any]) -> ssl.SSLContext | None:
    """A context trusting exactly the certificate the local gateway serves
    (None: it serves plain HTTP). Raises ApiError if the file is not that
    certificate any more."""
    if not str(info["url"]).startswith("https:"):
        return None
    try:
        pem = Path(info["cert"]).read_bytes()
        if fingerprint(pem) != info["fingerprint"]:
            raise ApiError(
                f"{info['cert']} is not the certificate the gateway serves (its fingerprint differs)"
            )
        return client_context(cadata=pem.decode())
    except (OSError, ConfigError) as exc:
        raise ApiError(f"cannot read the gateway's certificate {info['cert']}: {exc}") from exc


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: the token goes to the gateway's address
    alone, never to wherever an answer points (another host, plain HTTP)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None

"""The gateway's HTTP API (JSON over HTTPS, or HTTP on loopback; bearer
tokens or a browser's session: gateway/api_accounts.py, api_sessions.py).

The address and token are written to the gateway's database (meta 'api'),
with the certificate's path and fingerprint over HTTPS, so the CLI on the
same machine finds a running gateway from its --db and trusts it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from firmware.pb.errors import ProtocolError

from .archive import MAX_ARCHIVE, TAR_TYPE, unpack_release
from .errors import (
    CommandTimeoutError,
    DeviceNotFoundError,
    DeviceOfflineError,
    DeviceRevokedError,
    GatewayError,
    OtaDisabledError,
    OtaServiceError,
    ReleaseNotFoundError,
    ReleaseRefusedError,
    SettingsError,
    UpdateNotFoundError,
    UpdateRefusedError,
)

if TYPE_CHECKING:
    from .service import Gateway
    from .tls import ServerCert

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
MAX_TIMEOUT_S = 120.0
MAX_BODY = 64 * 1024  # bytes of a request body, but a release archive
log = logging.getLogger("permabeta.gateway.api")

# The codes of the errors aiohttp raises itself (no route, a body too large, ...).
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _utf8(text: str) -> bytes | None:
    """text as UTF-8, or None if it cannot be (a lone surrogate from a bad escape)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is a JSON error (docs/protocol.md 10): aiohttp's own too,
    and a failure of the gateway's (500 internal, logged)."""
    if any(_utf8(v) is None for v in request.match_info.values()):
        return error_response(400, "bad_request", "the path is not UTF-8")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.status == 413 and exc.text else exc.reason
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "bad_request"), message)
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path[:120])
        return error_response(500, "internal", f"the gateway failed: {type(exc).__name__}")


async def json_body(request: web.Request) -> Any:
    """The request's JSON body. Raises web.HTTPBadRequest (not JSON: also
    NaN, nesting deeper than the parser goes, an integer of more than 4300
    digits) or web.HTTPRequestEntityTooLarge."""
    raw = await request.read()
    try:
        return json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise web.HTTPBadRequest(reason="body must be JSON") from exc


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def make_app(gw: Gateway, token: str, cert: Path | None = None) -> web.Application:
    """The API of gw; token: the gateway's own (gateway/api_accounts.py);
    cert: its certificate, which the workers of a pool share."""
    from .api_accounts import auth_middleware

    middlewares: list[Any] = [_errors]
    cleanup = None
    if gw is not None and gw.pool.pooled:  # (None: the routes alone, as the API's description reads them)
        from .api_pool import pool_middleware

        passing, cleanup = pool_middleware(gw, cert)
        middlewares.append(passing)
    middlewares.append(auth_middleware(gw, token))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    if cleanup is not None:
        app.on_cleanup.append(cleanup)
    app[GATEWAY] = gw
    app.add_routes(
        [
            web.get("/api/v1/health", _health),
            web.get("/api/v1/stats", _stats),
            web.get("/api/v1/devices", _devices),
            web.get("/api/v1/devices/{id}", _device),
            web.get("/api/v1/devices/{id}/telemetry", _telemetry),
            web.post("/api/v1/devices/{id}/commands", _command),
            web.post("/api/v1/devices/{id}/update", _start_update),
            web.get("/api/v1/devices/{id}/updates", _device_updates),
            web.get("/api/v1/devices/{id}/settings", _device_settings),
            web.patch("/api/v1/devices/{id}/settings", _set_device_settings),
            web.get("/api/v1/updates/{uid}", _update),
            web.post("/api/v1/releases", _add_release),
            web.get("/api/v1/releases", _releases),
            web.get("/api/v1/releases/{ref}", _release),
        ]
    )
    from . import (
        api_accounts,
        api_footprint,
        api_gains,
        api_homeassistant,
        api_owners,
        api_registry,
        api_rollouts,
        api_sessions,
        api_streams,
        api_twin,
        openapi,
        webapp,
    )

    app.add_routes(api_rollouts.routes())
    app.add_routes(api_owners.routes())
    app.add_routes(api_gains.routes())
    app.add_routes(api_footprint.routes())
    app.add_routes(api_registry.routes())
    app.add_routes(api_streams.routes())
    app.add_routes(api_homeassistant.routes())
    app.add_routes(api_twin.routes())
    webapp.setup(app)
    api_accounts.setup(app)
    app.add_routes(api_sessions.routes())
    app.add_routes(openapi.routes())
    app.on_response_prepare.append(api_sessions.secure_headers)
    return app


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[GATEWAY].stats())


async def _devices(request: web.Request) -> web.Response:
    """Every device (an owner: its own)."""
    from .api_accounts import accounts_of, principal

    gw = request.app[GATEWAY]
    who = principal(request)
    devices = gw.store.devices()
    if not who.may("maker"):
        own = set(accounts_of(request).devices_of(who))
        devices = [d for d in devices if d.id in own]
    return web.json_response([d.summary() for d in devices])


async def _device(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    d = gw.store.device(request.match_info["id"])
    if d is None:
        return error_response(404, "unknown_device", f"no device {request.match_info['id']!r}")
    return web.json_response(d.to_dict())


async def _device_settings(request: web.Request) -> web.Response:
    from .settings import SettingsTable

    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    if gw.store.device(dev) is None:
        return error_response(404, "unknown_device", f"no device {dev!r}")
    return web.json_response(SettingsTable(gw.store).get(dev).to_dict())


_SETTINGS = {"channel": str, "tag": list, "untag": list, "policy": str, "window": str}
_OWNERS_SETTINGS = ("policy", "window")  # the rest are the maker's (cohorts)


async def _set_device_settings(request: web.Request) -> web.Response:
    """Body: any of channel, tag (tags to add), untag (tags to remove),
    policy, window (docs/rollouts.md 2)."""
    from .settings import SettingsTable, changed

    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    body = await json_body(request)
    if not isinstance(body, dict) or not body:
        return error_response(400, "bad_request", "body must be a JSON object of " + ", ".join(_SETTINGS))
    from .api_accounts import principal

    for key, value in body.items():
        if key not in _SETTINGS:
            return error_response(
                400, "bad_request", f"unknown setting {key[:40]!r} (known: {', '.join(_SETTINGS)})"
            )
        if not isinstance(value, _SETTINGS[key]):
            return error_response(400, "bad_request", f"{key!r} must be a {_SETTINGS[key].__name__}")
        if key not in _OWNERS_SETTINGS and not principal(request).may("maker"):
            return error_response(
                403, "forbidden", f"an owner sets {' and '.join(_OWNERS_SETTINGS)}; {key!r} is the maker's"
            )
    if gw.store.device(dev) is None:
        return error_response(404, "unknown_device", f"no device {dev!r}")
    table = SettingsTable(gw.store)
    try:
        new = changed(table.get(dev), **body)
    except SettingsError as exc:
        return error_response(422, exc.code, str(exc))
    return web.json_response(table.save(new, gw.clock.now()).to_dict())


async def _telemetry(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    try:
        limit = max(1, min(int(request.query.get("limit", "100")), 10000))
    except ValueError:
        return error_response(400, "bad_request", "limit must be an integer")
    if gw.store.device(dev) is None:
        return error_response(404, "unknown_device", f"no device {dev!r}")
    rows = gw.store.telemetry(dev, limit, owners_since(request, dev))
    # the gateway's fields last: a device's field of the same name cannot stand in for them
    return web.json_response([{**r.data, "received": r.received, "ts": r.ts, "seq": r.seq} for r in rows])


async def _command(request: web.Request) -> web.Response:
    from .api_accounts import principal

    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    body = await json_body(request)
    if not isinstance(body, dict):
        return error_response(400, "bad_request", "body must be a JSON object")
    op, args = body.get("op"), body.get("args", {})
    timeout, force = body.get("timeout", 10), bool(body.get("force", False))
    if not isinstance(op, str) or not op:
        return error_response(400, "bad_request", "'op' must be a string")
    if not isinstance(args, dict):
        return error_response(400, "bad_request", "'args' must be an object")
    if op == "streams.set":
        return error_response(
            403, "forbidden", "the owner's data choices change through PUT /api/v1/devices/{id}/streams"
        )
    if op == "repl.open" and not principal(request).may("maker"):
        return error_response(403, "forbidden", "only a maker opens a board's REPL (docs/makers.md)")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT_S:
        return error_response(
            400, "bad_request", f"'timeout' must be a number of seconds in (0, {MAX_TIMEOUT_S:g}]"
        )
    try:
        reply = await gw.send_command(dev, op, args, timeout=float(timeout), force=force)
    except DeviceNotFoundError as exc:
        return error_response(404, "unknown_device", str(exc))
    except DeviceRevokedError as exc:
        return error_response(409, "revoked", str(exc))
    except DeviceOfflineError as exc:
        return error_response(409, "offline", str(exc))
    except CommandTimeoutError as exc:
        return error_response(504, "timeout", str(exc))
    except ProtocolError as exc:
        return error_response(400, exc.code, exc.message)
    except GatewayError as exc:
        return error_response(503, "unavailable", str(exc))
    return web.json_response({"reply": reply})


# ---- releases and updates (docs/ota.md 5) -----------------------------------------


def ota_error(exc: GatewayError) -> web.Response:
    """The answer to an error of the update endpoints."""
    if isinstance(exc, OtaDisabledError):
        return error_response(503, exc.code, str(exc))
    if isinstance(exc, ReleaseNotFoundError):
        return error_response(409 if exc.code == "ambiguous" else 404, exc.code, str(exc))
    if isinstance(exc, ReleaseRefusedError):
        return error_response(500 if exc.code == "storage" else 422, exc.code, str(exc))
    if isinstance(exc, UpdateNotFoundError):
        return error_response(404, exc.code, str(exc))
    if isinstance(exc, UpdateRefusedError):
        return error_response(409, exc.code, str(exc))
    if isinstance(exc, DeviceNotFoundError):
        return error_response(404, "unknown_device", str(exc))
    if isinstance(exc, DeviceRevokedError):
        return error_response(409, "revoked", str(exc))
    if isinstance(exc, DeviceOfflineError):
        return error_response(409, "offline", str(exc))
    if isinstance(exc, OtaServiceError):
        return error_response(500, exc.code, str(exc))
    return error_response(503, "unavailable", str(exc))


def _ota(request: web.Request) -> Gateway:
    """The gateway, if it can do updates. Raises OtaDisabledError."""
    gw = request.app[GATEWAY]
    gw.ota.require_keys()
    return gw


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None if it is longer than limit (read no further)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    parts, size = [], 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


async def _add_release(request: web.Request) -> web.Response:
    try:
        gw = _ota(request)
    except GatewayError as exc:
        return ota_error(exc)
    if request.content_type != TAR_TYPE:
        return error_response(415, "bad_request", f"send the release folder as a tar archive ({TAR_TYPE})")
    data = await _read_limited(request, MAX_ARCHIVE)
    if data is None:
        return error_response(413, "too_large", f"a release archive may have at most {MAX_ARCHIVE} bytes")
    releases = gw.ota.releases

    def unpack_and_prepare() -> Any:
        with tempfile.TemporaryDirectory(prefix="pb-release-") as tmp:
            folder = Path(tmp) / "release"
            unpack_release(data, folder)
            return releases.prepare(folder)

    try:
        # signatures and blob hashes take a while: not on the event loop
        prepared = await asyncio.to_thread(unpack_and_prepare)
        stored, new = releases.insert(prepared, gw.clock.now())
    except GatewayError as exc:
        return ota_error(exc)
    return web.json_response(stored.summary() | {"new": new}, status=201 if new else 200)


async def _releases(request: web.Request) -> web.Response:
    try:
        gw = _ota(request)
    except GatewayError as exc:
        return ota_error(exc)
    model = request.query.get("model")
    return web.json_response([r.summary() for r in gw.ota.releases.list(model)])


async def _release(request: web.Request) -> web.Response:
    try:
        gw = _ota(request)
        rel = gw.ota.releases.find(request.match_info["ref"])
    except GatewayError as exc:
        return ota_error(exc)
    try:
        notes = gw.ota.releases.notes(rel)
    except GatewayError as exc:
        return ota_error(exc)
    return web.json_response(
        rel.summary() | {"notes": notes, "files_list": [e.to_dict() for e in rel.entries]}
    )


async def _start_update(request: web.Request) -> web.Response:
    try:
        gw = _ota(request)
    except GatewayError as exc:
        return ota_error(exc)
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("release"), str) or not body["release"]:
        return error_response(
            400, "bad_request", "body must be {'release': a release id, MODEL@COUNTER or version}"
        )
    force = body.get("force", False)
    if not isinstance(force, bool):
        return error_response(400, "bad_request", "'force' must be true or false")
    dev = request.match_info["id"]
    found = gw.rollouts.table.rollout_of(dev)
    if found is not None and not force:
        r, row = found
        return error_response(
            409,
            "in_rollout",
            f"{dev} is in rollout {r.id} of {r.ref} (stage {row.stage + 1}): an update by hand "
            'takes it out of the rollout: force it ("force": true; devices update --force)',
        )
    try:
        with gw.rollouts.leaving(dev):
            u = await gw.ota.start(dev, body["release"], force=force)
    except GatewayError as exc:
        return ota_error(exc)
    return web.json_response(u.to_dict(), status=201)


async def _update(request: web.Request) -> web.Response:
    from .api_accounts import may_see

    try:
        gw = _ota(request)
        u = gw.ota.get(request.match_info["uid"])
    except GatewayError as exc:
        return ota_error(exc)
    if not may_see(request, u.device):  # (as one that does not exist)
        return ota_error(UpdateNotFoundError(f"no update {request.match_info['uid'][:40]!r}"))
    return web.json_response({**u.to_dict(), "steps": gw.ota.table.steps(u.id)})


async def _device_updates(request: web.Request) -> web.Response:
    try:
        gw = _ota(request)
    except GatewayError as exc:
        return ota_error(exc)
    dev = request.match_info["id"]
    try:
        limit = max(1, min(int(request.query.get("limit", "20")), 1000))
    except ValueError:
        return error_response(400, "bad_request", "limit must be an integer")
    if gw.store.device(dev) is None:
        return error_response(404, "unknown_device", f"no device {dev!r}")
    since = owners_since(request, dev)
    updates = [u for u in gw.ota.of_device(dev, limit) if since is None or u.started >= since]
    return web.json_response([u.to_dict() for u in updates])


def owners_since(request: web.Request, dev: str) -> float | None:
    """For an owner, when it claimed the device: it sees nothing of the
    device from before (a previous owner's); None for a maker, who sees all."""
    from .api_accounts import accounts_of, principal

    return None if principal(request).may("maker") else accounts_of(request).owner_since(dev)


def _reached_as(cert: Path) -> str:
    """The name another machine reaches this one's API by: the first its
    certificate gives that is not a loopback one (a certificate made for
    another name than the host's, given with --tls-cert), else the host's."""
    from .ca import cert_hosts
    from .tls import is_loopback

    names = [n for n in cert_hosts(cert) if not is_loopback(n)]
    return names[0] if names else socket.gethostname()


async def serve_api(gw: Gateway, host: str, port: int, cert: ServerCert | None = None) -> None:
    """Serve until cancelled (over HTTPS with cert); publishes the address,
    a fresh token and, with cert, what the CLI needs to trust it."""
    from .tls import reach_url, url_host

    # (the workers of a pool answer to one token: a request passed on to the leader keeps its own)
    token = gw.pool.token(time.time()) if gw.pool.pooled else secrets.token_urlsafe(24)
    runner = web.AppRunner(make_app(gw, token, cert.cert if cert else None), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=cert.context if cert else None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise GatewayError(f"API cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound: Any = runner.addresses[0]
    gw.api_url = gw.pool.api = f"{'https' if cert else 'http'}://{url_host(host)}:{bound[1]}"
    if cert is not None:
        # (what another machine's worker of the pool passes requests on to, and trusts it by)
        gw.pool.reach = reach_url(host, bound[1], _reached_as(cert.cert))
        gw.pool.api_cert = cert.cert.read_text()
    info: dict[str, Any] = {"url": gw.api_url, "token": token, "pid": os.getpid()}
    if cert is not None:
        info |= {"cert": str(cert.cert.resolve()), "fingerprint": cert.fingerprint}
    gw.store.set_meta("api", json.dumps(info))
    gw.pool.api_info = json.dumps(info)
    try:
        await asyncio.Event().wait()
    finally:
        if not gw.pool.pooled or gw.pool.api_is_mine():
            gw.store.delete_meta("api")
        await runner.cleanup()

"""The gateway's HTTP API (JSON over HTTP, bearer token).

The address and token are written to the gateway's database (meta 'api'),
so the CLI on the same machine finds a running gateway from its --db.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from firmware.pb.errors import ProtocolError

from .errors import CommandTimeoutError, DeviceNotFoundError, DeviceOfflineError, GatewayError

if TYPE_CHECKING:
    from .service import Gateway

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
MAX_TIMEOUT_S = 120.0


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def make_app(gw: Gateway, token: str) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/api/v1/health":
            given = request.headers.get("Authorization", "")
            if not secrets.compare_digest(given, f"Bearer {token}"):
                return _error(401, "unauthorized", "missing or wrong bearer token")
        return await handler(request)

    app = web.Application(middlewares=[auth], client_max_size=64 * 1024)
    app[_GATEWAY] = gw
    app.add_routes(
        [
            web.get("/api/v1/health", _health),
            web.get("/api/v1/stats", _stats),
            web.get("/api/v1/devices", _devices),
            web.get("/api/v1/devices/{id}", _device),
            web.get("/api/v1/devices/{id}/telemetry", _telemetry),
            web.post("/api/v1/devices/{id}/commands", _command),
        ]
    )
    return app


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[_GATEWAY].stats())


async def _devices(request: web.Request) -> web.Response:
    gw = request.app[_GATEWAY]
    return web.json_response([d.summary() for d in gw.store.devices()])


async def _device(request: web.Request) -> web.Response:
    gw = request.app[_GATEWAY]
    d = gw.store.device(request.match_info["id"])
    if d is None:
        return _error(404, "unknown_device", f"no device {request.match_info['id']!r}")
    return web.json_response(d.to_dict())


async def _telemetry(request: web.Request) -> web.Response:
    gw = request.app[_GATEWAY]
    dev = request.match_info["id"]
    try:
        limit = max(1, min(int(request.query.get("limit", "100")), 10000))
    except ValueError:
        return _error(400, "bad_request", "limit must be an integer")
    if gw.store.device(dev) is None:
        return _error(404, "unknown_device", f"no device {dev!r}")
    rows = gw.store.telemetry(dev, limit)
    return web.json_response([{"received": r.received, "ts": r.ts, "seq": r.seq, **r.data} for r in rows])


async def _command(request: web.Request) -> web.Response:
    gw = request.app[_GATEWAY]
    dev = request.match_info["id"]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "bad_request", "body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "bad_request", "body must be a JSON object")
    op, args = body.get("op"), body.get("args", {})
    timeout, force = body.get("timeout", 10), bool(body.get("force", False))
    if not isinstance(op, str) or not op:
        return _error(400, "bad_request", "'op' must be a string")
    if not isinstance(args, dict):
        return _error(400, "bad_request", "'args' must be an object")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT_S:
        return _error(400, "bad_request", f"'timeout' must be a number of seconds in (0, {MAX_TIMEOUT_S:g}]")
    try:
        reply = await gw.send_command(dev, op, args, timeout=float(timeout), force=force)
    except DeviceNotFoundError as exc:
        return _error(404, "unknown_device", str(exc))
    except DeviceOfflineError as exc:
        return _error(409, "offline", str(exc))
    except CommandTimeoutError as exc:
        return _error(504, "timeout", str(exc))
    except ProtocolError as exc:
        return _error(400, exc.code, exc.message)
    except GatewayError as exc:
        return _error(503, "unavailable", str(exc))
    return web.json_response({"reply": reply})


async def serve_api(gw: Gateway, host: str, port: int) -> None:
    """Serve until cancelled; publishes the address and a fresh token."""
    token = secrets.token_urlsafe(24)
    runner = web.AppRunner(make_app(gw, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise GatewayError(f"API cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound: Any = runner.addresses[0]
    gw.api_url = f"http://{host}:{bound[1]}"
    gw.store.set_meta("api", json.dumps({"url": gw.api_url, "token": token, "pid": os.getpid()}))
    try:
        await asyncio.Event().wait()
    finally:
        gw.store.delete_meta("api")
        await runner.cleanup()

"""The devices a maker provisioned, through the API (gateway/registry.py,
docs/security.md 11): a device registered at provisioning (`PUT
/devices/{id}/registration`, body {"model", "board", "password_hash",
"link_key", "cluster_hash"}: the hash a Mosquitto password file holds, never
the password, and, optional, the key a device on a serial or Bluetooth line
proves itself with and the bcrypt hash a NATS cluster checks its password
with), what is recorded
of it (`GET`), and its revocation and restoration (`POST
/devices/{id}/revoke`, `/restore`), which the gateway applies at once and
`permabeta broker run` within seconds."""

from __future__ import annotations

from aiohttp import web

from .api import GATEWAY, error_response
from .api_accounts import json_object
from .registry import Registry, RegistryError


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/devices/{id}/registration", _get),
        web.put("/api/v1/devices/{id}/registration", _put),
        web.post("/api/v1/devices/{id}/revoke", _revoke),
        web.post("/api/v1/devices/{id}/restore", _restore),
    ]


def _refused(exc: RegistryError) -> web.Response:
    return error_response(404 if exc.code == "unknown_device" else 400, exc.code, str(exc))


async def _get(request: web.Request) -> web.Response:
    dev = request.match_info["id"]
    got = Registry(request.app[GATEWAY].store).get(dev)
    if got is None:
        return error_response(404, "unknown_device", f"{dev[:64]!r} was never registered")
    return web.json_response(got.as_dict())


async def _put(request: web.Request) -> web.Response:
    body = await json_object(
        request, {"model": str, "board": str, "password_hash": str, "link_key": str, "cluster_hash": str}
    )
    if isinstance(body, web.Response):
        return body
    missing = [k for k in ("model", "board", "password_hash") if k not in body]
    if missing:
        return error_response(400, "bad_request", f"missing {', '.join(missing)}")
    gw = request.app[GATEWAY]
    try:
        dev, model, board = request.match_info["id"], body["model"][:64], body["board"][:64]
        got = Registry(gw.store).register(
            dev,
            model,
            board,
            body["password_hash"],
            gw.clock.now(),
            body.get("link_key"),
            body.get("cluster_hash"),
        )
    except RegistryError as exc:
        return _refused(exc)
    return web.json_response(got.as_dict())


async def _revoke(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    try:
        got = Registry(gw.store).revoke(dev, gw.clock.now())
    except RegistryError as exc:
        return _refused(exc)
    gw.revoked(dev, True)
    return web.json_response(got.as_dict())


async def _restore(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    try:
        got = Registry(gw.store).restore(dev)
    except RegistryError as exc:
        return _refused(exc)
    gw.revoked(dev, False)
    return web.json_response(got.as_dict())

"""The twin previews' part of the HTTP API (docs/protocol.md 10, docs/twin.md 2):
ask for a preview of a release on a device, read it, list a device's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .api import GATEWAY, error_response, json_body, ota_error
from .api_accounts import principal
from .errors import GatewayError
from .numbers import finite_number
from .offers import revert_for, waiting
from .twin.service import MAX_HEATER_W

if TYPE_CHECKING:
    from .service import Gateway
    from .store import DeviceRecord

_FIELDS: dict[str, type | tuple[type, ...]] = {"release": str, "heater_w": (int, float), "refresh": bool}


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/devices/{id}/preview", _request),
        web.get("/api/v1/devices/{id}/preview/{ref}", _show),
        web.get("/api/v1/devices/{id}/previews", _list),
    ]


def _body(body: Any) -> dict[str, Any] | web.Response:
    if not isinstance(body, dict) or not isinstance(body.get("release"), str) or not body["release"]:
        return error_response(
            400,
            "bad_request",
            "body must be {'release': a release id, MODEL@COUNTER or version, 'heater_w'?, 'refresh'?}",
        )
    for key, value in body.items():
        if key not in _FIELDS:
            return error_response(
                400, "bad_request", f"unknown field {key[:40]!r} (known: {', '.join(_FIELDS)})"
            )
        kind = _FIELDS[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            return error_response(400, "bad_request", f"{key!r} is of the wrong type")
    watts = body.get("heater_w")
    if watts is not None and not (finite_number(watts) and 0 < watts <= MAX_HEATER_W):
        return error_response(
            422,
            "bad_setting",
            f"'heater_w' is the heater's rated power in W: above 0, at most {MAX_HEATER_W:g}",
        )
    return body


def _offered(gw: Gateway, d: DeviceRecord) -> set[str]:
    """The ids of the releases waiting for d, and of its rollback's release."""
    out = {rel.id for rel, *_ in waiting(gw, d)}
    revert = revert_for(gw, d)
    return out | {revert.id} if revert is not None else out


async def _request(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    body = _body(await json_body(request))
    if isinstance(body, web.Response):
        return body
    d = gw.store.device(dev)
    if d is None:
        return error_response(404, "unknown_device", f"no device {dev!r}")
    try:
        gw.ota.require_keys()
        release = gw.ota.releases.find(body["release"])
    except GatewayError as exc:
        return ota_error(exc)
    if release.model != d.model:
        return error_response(
            422, "wrong_model", f"{release.ref} is for {release.model}, {dev} is a {d.model}"
        )
    if not principal(request).may("maker") and release.id not in _offered(gw, d):
        # an owner previews what waits for its device, or its rollback: not
        # every release a maker stored (nor their code run at its asking)
        return error_response(404, "unknown_release", f"no release {body['release'][:64]!r} waits for {dev}")
    heater_w = body.get("heater_w")
    row, _ = gw.twin.request(
        dev,
        release,
        float(heater_w) if heater_w is not None else None,
        bool(body.get("refresh")),
        gw.clock.now(),
    )
    status = 202 if row.state == "computing" else 200
    return web.json_response(gw.twin.answer(row, release), status=status)


async def _show(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    if gw.store.device(dev) is None:
        return error_response(404, "unknown_device", f"no device {dev!r}")
    try:
        gw.ota.require_keys()
        release = gw.ota.releases.find(request.match_info["ref"])
    except GatewayError as exc:
        return ota_error(exc)
    row = gw.twin.row(dev, release.id)
    if row is None:
        return error_response(
            404,
            "no_preview",
            f"no preview of {release.ref} on {dev}: ask for one (POST /api/v1/devices/{dev}/preview)",
        )
    return web.json_response(gw.twin.answer(row, release))


async def _list(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    if gw.store.device(dev) is None:
        return error_response(404, "unknown_device", f"no device {dev!r}")
    out = []
    for row in gw.twin.rows(dev):
        release = gw.ota.releases.get(row.release)
        out.append(
            {
                "release": {"id": row.release, "ref": release.ref if release else None},
                "state": row.state,
                "reason": row.reason,
                "requested": row.requested,
                "finished": row.finished,
            }
        )
    return web.json_response(out)

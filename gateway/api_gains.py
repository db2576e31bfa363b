"""What a device could gain, through the API (docs/protocol.md 13): the
features its hardware can run now (an add-on plugged in), those waiting for
hardware, and the owner's ask for one, which goes out as any update: a
signed release, the owner's yes (`now`, gateway/decisions.py)."""

from __future__ import annotations

from aiohttp import web

from .api import GATEWAY, error_response, json_body, ota_error
from .api_owners import device_of
from .decisions import DecisionTable, decided
from .errors import GatewayError
from .gains import GainError, gain_of, gains
from .offers import waiting


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/devices/{id}/gains", _get),
        web.post("/api/v1/devices/{id}/gains", _ask),
    ]


async def _get(request: web.Request) -> web.Response:
    d = device_of(request)
    if isinstance(d, web.Response):
        return d
    return web.json_response(gains(request.app[GATEWAY].ota.releases, d))


async def _ask(request: web.Request) -> web.Response:
    """Body {"feature"}: the owner asks for a feature the device could gain.
    The newest stored release with it goes to the device: through the
    rollout the device is in, if it is one of that release, else at once
    (the owner's yes). 202 with the decision, or 201 with the update."""
    gw = request.app[GATEWAY]
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) != {"feature"} or not isinstance(body["feature"], str):
        return error_response(400, "bad_request", "body must be {'feature': a feature the device could gain}")
    d = device_of(request)
    if isinstance(d, web.Response):
        return d
    try:
        gain = gain_of(gw.ota.releases, d, body["feature"])
    except GainError as exc:
        return error_response(409, exc.code, str(exc))
    rel = gw.ota.releases.get(gain["release"]["id"])
    if rel is None:  # (forgotten meanwhile)
        return error_response(409, "no_gain", f"release {gain['release']['ref']} is no longer stored")
    yes = decided(d.id, rel.id, "now", None, gw.clock.now())
    DecisionTable(gw.store).save(yes)
    await gw.rollouts.decided(d.id, rel.id, "now")
    shown = {"feature": gain["feature"], "ref": rel.ref}
    for r, state, rollout, _ in waiting(gw, d):
        if r.id == rel.id and rollout is not None:
            return web.json_response(yes.to_dict() | shown | {"rollout": rollout, "state": state}, status=202)
    try:
        gw.ota.require_keys()
        with gw.rollouts.leaving(d.id):
            u = await gw.ota.start(d.id, rel.id)
    except GatewayError as exc:
        return ota_error(exc)
    return web.json_response(u.to_dict() | shown, status=201)

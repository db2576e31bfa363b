"""The owner's say on a device's updates, through the API (docs/protocol.md
10, docs/rollouts.md 8.1): what waits for it (`offers`), the owner's
decision on a release (`decision`, and `approve`, the decision `now`), and a
rollback to the set the device ran before, where its maker signed one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .api import GATEWAY, error_response, json_body, ota_error
from .decisions import DecisionTable, decided
from .errors import DecisionError, GatewayError
from .offers import counter_of, offers, revert_for
from .rollout_service import NOT_INSTALLED
from .store import DeviceRecord

if TYPE_CHECKING:
    from .service import Gateway

_DECISION_FIELDS = ("release", "decision", "until")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/devices/{id}/offers", _offers),
        web.post("/api/v1/devices/{id}/decision", _decision),
        web.post("/api/v1/devices/{id}/approve", _approve),
        web.post("/api/v1/devices/{id}/rollback", _rollback),
    ]


def device_of(request: web.Request) -> DeviceRecord | web.Response:
    dev = request.match_info["id"]
    d = request.app[GATEWAY].store.device(dev)
    return d if d is not None else error_response(404, "unknown_device", f"no device {dev[:64]!r}")


async def _offers(request: web.Request) -> web.Response:
    d = device_of(request)
    if isinstance(d, web.Response):
        return d
    try:
        return web.json_response(offers(request.app[GATEWAY], d))
    except GatewayError as exc:
        return ota_error(exc)


async def _decision(request: web.Request) -> web.Response:
    """Body {"release", "decision": now|later|never, "until"? (later)}."""
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("release"), str) or not body["release"]:
        return error_response(
            400,
            "bad_request",
            "body must be {'release': a release, 'decision': now, later or never, 'until'?}",
        )
    unknown = [k for k in body if k not in _DECISION_FIELDS]
    if unknown:
        return error_response(
            400,
            "bad_request",
            f"unknown field {str(unknown[0])[:40]!r} (known: {', '.join(_DECISION_FIELDS)})",
        )
    return await _decide(request, body["release"], body.get("decision"), body.get("until"))


async def _approve(request: web.Request) -> web.Response:
    """The owner's yes to a release (body: {"release": ref}): the decision `now`."""
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("release"), str) or not body["release"]:
        return error_response(
            400, "bad_request", "body must be {'release': a release id, MODEL@COUNTER or version}"
        )
    return await _decide(request, body["release"], "now", None)


# the status of each refusal of a decision
_DECISION_STATUS = {"wrong_model": 422, "not_an_update": 409, "too_late": 409}


async def decide(gw: Gateway, d: DeviceRecord, ref: str, decision: Any, until: Any) -> dict[str, Any]:
    """Record the owner's decision on release ref for device d, and let the
    rollouts act on it (the API's `decision` and `approve`, and Home
    Assistant's install, gateway/ha_bridge.py): the decision as recorded.
    Nothing changes when it is refused. Raises DecisionError (its code:
    bad_decision, wrong_model, not_an_update, too_late), GatewayError (the
    release: ReleaseNotFoundError)."""
    rel = gw.ota.releases.find(ref)
    if rel.model != d.model:
        raise DecisionError(f"{rel.ref} is for {rel.model}, {d.id} is a {d.model}", "wrong_model")
    if rel.counter <= counter_of(d):
        raise DecisionError(
            f"{d.id} runs release counter {counter_of(d)}: {rel.ref} is no update for it", "not_an_update"
        )
    new = decided(d.id, rel.id, decision, until, gw.clock.now())
    u = gw.ota.active(d.id)
    if new.decision != "now" and u is not None and u.release == rel.id and u.state not in NOT_INSTALLED:
        raise DecisionError(
            f"{d.id} is installing {rel.ref} already ({u.state}): once it has, roll it back instead",
            "too_late",
        )
    DecisionTable(gw.store).save(new)
    await gw.rollouts.decided(d.id, rel.id, new.decision)
    return new.to_dict() | {"ref": rel.ref}


async def _decide(request: web.Request, ref: str, decision: Any, until: Any) -> web.Response:
    """The owner's decision on release ref for the route's device."""
    d = device_of(request)
    if isinstance(d, web.Response):
        return d
    try:
        return web.json_response(await decide(request.app[GATEWAY], d, ref, decision, until))
    except DecisionError as exc:
        return error_response(_DECISION_STATUS.get(exc.code, 422), exc.code, str(exc))
    except GatewayError as exc:
        return ota_error(exc)


async def _rollback(request: web.Request) -> web.Response:
    """Update the device to the revert release its maker signed for the set
    it ran before (offers.revert_for): 201 with the update."""
    gw = request.app[GATEWAY]
    d = device_of(request)
    if isinstance(d, web.Response):
        return d
    revert = revert_for(gw, d)
    if revert is None:
        return error_response(
            409,
            "no_revert",
            f"no release signed to take {d.id} back to the set it ran before (its maker has signed none)",
        )
    try:
        gw.ota.require_keys()
        with gw.rollouts.leaving(d.id):
            u = await gw.ota.start(d.id, revert.id)
    except GatewayError as exc:
        return ota_error(exc)
    return web.json_response(u.to_dict() | {"ref": revert.ref}, status=201)

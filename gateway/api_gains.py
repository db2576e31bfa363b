"""What a device could gain, through the API (docs/protocol.md 13): the
features its hardware can run now (an add-on plugged in), those waiting for
hardware, and the owner's ask for one, which goes out as any update: a
signed release, the owner's yes (`now`, gateway/decisions.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .api import GATEWAY, error_response, json_body, ota_error
from .api_owners import device_of
from .decisions import DecisionTable, decided
from .errors import GatewayError
from .gains import GainError, gain_of, gains, rolled_out
from .offers import waiting
from .store import DeviceRecord

if TYPE_CHECKING:
    from .service import Gateway


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/devices/{id}/gains", _get),
        web.post("/api/v1/devices/{id}/gains", _ask),
    ]


async def _get(request: web.Request) -> web.Response:
    d = device_of(request)
    if isinstance(d, web.Response):
        return d
    gw = request.app[GATEWAY]
    return web.json_response(gains(gw.ota.releases, d, rolled_out(gw.rollouts.table)))


async def _ask(request: web.Request) -> web.Response:
    """Body {"feature"}: the owner asks for a feature the device could gain."""
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) != {"feature"} or not isinstance(body["feature"], str):
        return error_response(400, "bad_request", "body must be {'feature': a feature the device could gain}")
    d = device_of(request)
    if isinstance(d, web.Response):
        return d
    try:
        status, answer = await ask(request.app[GATEWAY], d, body["feature"])
    except GainError as exc:
        return error_response(409, exc.code, str(exc))
    except GatewayError as exc:
        return ota_error(exc)
    return web.json_response(answer, status=status)


async def ask(gw: Gateway, d: DeviceRecord, feature: str) -> tuple[int, dict[str, Any]]:
    """The owner of d asks for feature: the newest release rolled out with
    it gets the owner's yes (`now`). Where d is a member of that release's
    rollout, the rollout offers it by its own rules (202, the decision);
    where the rollout is completed and d was not in it, nor is in another
    that may still act on it, it goes out at once (201, the update).
    Raises GainError (none to gain, or not offered to d), GatewayError (the
    update could not start)."""
    gain = gain_of(gw.ota.releases, d, feature, rolled_out(gw.rollouts.table))
    rel = gw.ota.releases.get(gain["release"]["id"])
    if rel is None:  # (forgotten meanwhile)
        raise GainError(f"release {gain['release']['ref']} is no longer stored", "no_gain")
    shown = {"feature": gain["feature"], "ref": rel.ref}
    for r, state, rollout, _ in waiting(gw, d):
        if r.id == rel.id and rollout is not None:
            yes = DecisionTable(gw.store).save(decided(d.id, rel.id, "now", None, gw.clock.now()))
            await gw.rollouts.decided(d.id, rel.id, "now")
            return 202, yes.to_dict() | shown | {"rollout": rollout, "state": state}
    done = [r for r in gw.rollouts.table.all() if r.release == rel.id and r.state == "completed"]
    other = gw.rollouts.table.rollout_of(d.id, ("running", "paused", "halted"))
    if not done or other is not None:
        why = (
            f"it is in rollout {other[0].id} of another release"
            if other is not None
            else "its rollout is not done"
        )
        raise GainError(
            f"{rel.ref} is not offered to {d.id} ({why}): its maker's rollout decides", "not_offered"
        )
    DecisionTable(gw.store).save(decided(d.id, rel.id, "now", None, gw.clock.now()))
    gw.ota.require_keys()
    u = await gw.ota.start(d.id, rel.id)
    return 201, u.to_dict() | shown

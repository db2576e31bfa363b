"""A device's link to Home Assistant through the API (docs/protocol.md 14):
whether it is linked and the entities Home Assistant is shown of it
(`GET /devices/{id}/homeassistant`), and its owner's link or unlink
(`PUT`, body {"linked": true|false}).

Only the device's owner links it: what Home Assistant shows and does is
the owner's home's, not the maker's."""

from __future__ import annotations

import math
import time
from typing import Any

from aiohttp import web

from . import ha_bridge as hab
from . import homeassistant as ha
from .api import GATEWAY, error_response, json_body
from .api_accounts import accounts_of, principal
from .service import Gateway
from .store import DeviceRecord
from .streams import withheld


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/devices/{id}/homeassistant", _get),
        web.put("/api/v1/devices/{id}/homeassistant", _put),
    ]


def linked(gw: Gateway, d: DeviceRecord) -> dict[str, Any]:
    """The device's link as its owner is shown it: linked or not, since
    when, and the entities Home Assistant is shown (or would be)."""
    link = gw.homeassistant.links.valid(d.id)
    entities = ha.entities(d.model, d.hello, withheld(d.hello))
    return {
        "device": d.id,
        "linked": link is not None,
        "since": link.since if link is not None else None,
        "entities": [
            {
                "component": e.component,
                "key": e.key,
                "name": e.name,
                "unique_id": f"permabeta_{d.id}_{e.key}",
                "streams": list(e.streams),
            }
            for e in entities
        ],
    }


async def _get(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    d = gw.store.device(request.match_info["id"])
    if d is None:
        return error_response(404, "unknown_device", f"no device {request.match_info['id'][:64]!r}")
    return web.json_response(linked(gw, d))


async def _put(request: web.Request) -> web.Response:
    """Body {"linked": true|false}: the owner links the device, or unlinks it
    (its entities and values are cleared at the broker)."""
    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    d = gw.store.device(dev)
    if d is None:
        return error_response(404, "unknown_device", f"no device {dev[:64]!r}")
    who = principal(request)
    if accounts_of(request).owner_of(dev) != who.id:
        return error_response(403, "forbidden", "only the device's owner links it to Home Assistant")
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) != {"linked"} or not isinstance(body["linked"], bool):
        return error_response(400, "bad_request", "body must be {'linked': true or false}")
    wait = gw.homeassistant.changes.wait(who.id, time.monotonic())
    if wait:
        refused = error_response(
            429,
            "rate_limited",
            f"{hab.LINK_BURST} link changes at once, then one each {hab.LINK_EVERY_S:g} s:"
            f" try again in {math.ceil(wait)} s",
        )
        refused.headers["Retry-After"] = str(math.ceil(wait))
        return refused
    if body["linked"]:
        gw.homeassistant.link(dev, who.id)
    elif not await gw.homeassistant.unlink(dev):
        return error_response(
            503,
            "unavailable",
            "unlinked, but its topics were not all cleared: the broker is away; they go once it is back",
        )
    return web.json_response(linked(gw, d))

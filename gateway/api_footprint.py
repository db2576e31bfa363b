"""Everything stored about a device, through the API (docs/protocol.md
10.3): its export, as JSON or a zip of CSV files, and forgetting it
(gateway/footprint.py). An owner exports what was stored since its claim;
an owner or an admin forgets a device, a maker only one without an owner.
Forgetting says its device id again in the body, so that no stray call
wipes a device."""

from __future__ import annotations

from aiohttp import web

from .api import GATEWAY, error_response, owners_since
from .api_accounts import accounts_of, json_object, principal
from .errors import GatewayError
from .footprint import FORMATS, MEDIA_TYPES, csv_export, json_export, snapshot, stored

_WRITERS = {"json": json_export, "csv": csv_export}
_SUFFIX = {"json": "json", "csv": "zip"}


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/devices/{id}/export", _export),
        web.post("/api/v1/devices/{id}/forget", _forget),
    ]


def _unknown(dev: str) -> web.Response:
    return error_response(404, "unknown_device", f"no device {dev[:64]!r}")


async def _export(request: web.Request) -> web.StreamResponse:
    """`?format=json` (the default) or `csv`, written as it is read."""
    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    fmt = request.query.get("format", "json")
    if fmt not in FORMATS:
        return error_response(400, "bad_request", f"format is one of {', '.join(FORMATS)}, not {fmt[:20]!r}")
    if not stored(gw.store, dev):
        return _unknown(dev)
    since = owners_since(request, dev)
    resp = web.StreamResponse(
        headers={
            "Content-Type": MEDIA_TYPES[fmt],
            "Content-Disposition": f'attachment; filename="{dev}.{_SUFFIX[fmt]}"',
        }
    )
    await resp.prepare(request)
    with snapshot(gw.store.where) as store:
        for chunk in _WRITERS[fmt](store, dev, gw.clock.now(), since):
            if chunk:
                await resp.write(chunk)
    await resp.write_eof()
    return resp


async def _forget(request: web.Request) -> web.Response:
    """Body {"confirm": the device id}."""
    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    body = await json_object(request, {"confirm": str})
    if isinstance(body, web.Response):
        return body
    if not stored(gw.store, dev):
        return _unknown(dev)
    if body.get("confirm") != dev:
        return error_response(
            400,
            "unconfirmed",
            f"forgetting deletes everything stored about {dev}: confirm it with the body "
            f'{{"confirm": "{dev}"}}',
        )
    who = principal(request)
    if not who.may("admin") and who.may("maker") and accounts_of(request).owner_of(dev) is not None:
        return error_response(403, "forbidden", f"{dev} has an owner: the owner forgets it, or an admin")
    try:
        removed, cleared = await gw.forget(dev)
    except GatewayError as exc:
        return error_response(503, "unavailable", str(exc))
    return web.json_response({"device": dev, "removed": removed, "retained_cleared": cleared})

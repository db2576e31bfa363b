"""A device's data footprint through the API (docs/protocol.md 12 and 10):
its streams, what each tells, the owner's choice and what keeping it back
costs, how long the gateway keeps each and how much it holds
(`GET /devices/{id}/streams`), and the owner's change of choices (`PUT`),
carried out by the device itself (`streams.set`) before it is shown as
made, and of periods (gateway/retention.py), the gateway's own.

Only the device's owner changes its choices; a device nobody has claimed
is its maker's to set up."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import retention
from . import streams as st
from .api import GATEWAY, error_response, json_body, owners_since
from .api_accounts import accounts_of, principal
from .errors import CommandTimeoutError, DeviceNotFoundError, DeviceOfflineError, GatewayError
from .offers import factory_manifests, running_release
from .provision import board_for
from .service import Gateway
from .store import DeviceRecord

TIMEOUT_S = 10.0


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/devices/{id}/streams", _get),
        web.put("/api/v1/devices/{id}/streams", _put),
    ]


def manifests_of(gw: Gateway, d: DeviceRecord) -> dict[str, dict[str, Any]]:
    """The manifests of the features the device runs: its release's, signed,
    or the firmware's own for its factory set (those of the same version)."""
    r = running_release(gw, d)
    if r is not None:
        try:
            return gw.ota.releases.feature_manifests(r)
        except GatewayError:
            pass
    shipped = factory_manifests()
    return {
        n: shipped[n]
        for n, f in d.features.items()
        if n in shipped and isinstance(f, dict) and f.get("version") == shipped[n].get("version")
    }


def device_streams(gw: Gateway, d: DeviceRecord) -> list[st.Stream]:
    try:
        board = board_for(d.model or "", d.board)
    except Exception:  # noqa: BLE001 - a board this gateway does not know: its features' streams only
        board = {}
    return st.catalogue(board, manifests_of(gw, d))


def footprint(gw: Gateway, d: DeviceRecord, since: float | None = None) -> dict[str, Any]:
    """The device's streams as its owner is shown them, with how long the
    gateway keeps each and how much of it it holds (with since, of what it
    received from then on: an owner sees nothing from before its claim)."""
    manifests = manifests_of(gw, d)
    catalogue = device_streams(gw, d)
    held = st.withheld(d.hello)
    fields, reads = st.metric_fields(manifests), st.readers(manifests)
    known = "streams" in d.hello  # a device from before choices shares every stream
    paths = [s.path for s in catalogue if not s.needed and '"' not in s.path]
    stored = gw.store.stream_counts(d.id, paths, since)
    periods = gw.store.periods(d.id)
    return {
        "device": d.id,
        "choices_known": known,
        "retention_days": periods.device,
        "streams": [
            s.to_dict()
            | {
                "choice": "share" if s.needed else held.get(s.path, "share"),
                "costs": st.costs(s, d.model or "", fields, reads),
                "stored": stored.get(s.path, (0, None))[0],
                "oldest": stored.get(s.path, (0, None))[1],
                # (the runtime's own messages are not telemetry: no period applies)
                "retention_days": None if s.needed else periods.of(s.path),
                "retention_own": None if s.needed else periods.own(s.path),
            }
            for s in catalogue
        ],
    }


async def _get(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    d = gw.store.device(request.match_info["id"])
    if d is None:
        return error_response(404, "unknown_device", f"no device {request.match_info['id'][:64]!r}")
    return web.json_response(footprint(gw, d, owners_since(request, d.id)))


_BODY = (
    "body must be {'streams': {stream: share, local or off}}, {'retention_days': days or null} "
    "and/or {'retention': {stream: days, 'forever' or null}}"
)


async def _put(request: web.Request) -> web.Response:
    """Body {"streams": {path: share|local|off}}: sent to the device, which
    applies them; {"retention_days"} and {"retention": {path: days}}: the
    gateway's own. All checked before anything changes; answered with the
    footprint as it then stands."""
    gw = request.app[GATEWAY]
    dev = request.match_info["id"]
    d = gw.store.device(dev)
    if d is None:
        return error_response(404, "unknown_device", f"no device {dev[:64]!r}")
    owner = accounts_of(request).owner_of(dev)
    who = principal(request)
    if owner is not None and owner != who.id:
        return error_response(403, "forbidden", "only the device's owner chooses what data leaves it")
    body = await json_body(request)
    if not isinstance(body, dict) or not body or not set(body) <= {"streams", "retention_days", "retention"}:
        return error_response(400, "bad_request", _BODY)
    try:
        days = retention.check_device(body.get("retention_days"))
        own = retention.check_streams(device_streams(gw, d), body["retention"]) if "retention" in body else {}
    except retention.RetentionError as exc:
        return error_response(422, "bad_retention", str(exc))
    if "streams" in body:
        refused = await _choose(gw, d, body["streams"])
        if refused is not None:
            return refused
    # the gateway's own: nothing for the device to do
    with gw.store.transaction():
        if "retention_days" in body:
            gw.store.set_retention(dev, days, gw.clock.now())
        gw.store.set_stream_retention(dev, own, gw.clock.now())
    d = gw.store.device(dev) or d
    return web.json_response(footprint(gw, d, owners_since(request, dev)))


async def _choose(gw: Gateway, d: DeviceRecord, streams: Any) -> web.Response | None:
    """The owner's choices, checked, then applied by the device; None once
    it has, else the answer that says why not."""
    try:
        asked = st.check_choices(device_streams(gw, d), streams)
    except st.ChoiceError as exc:
        return error_response(422, "bad_choice", str(exc))
    try:
        reply = await gw.send_command(d.id, "streams.set", {"streams": asked}, timeout=TIMEOUT_S)
    except DeviceNotFoundError as exc:
        return error_response(404, "unknown_device", str(exc))
    except DeviceOfflineError:
        return error_response(409, "offline", f"{d.id} is offline: its choices change when it is online")
    except CommandTimeoutError as exc:
        return error_response(504, "timeout", str(exc))
    except GatewayError as exc:
        return error_response(503, "unavailable", str(exc))
    if not reply.get("ok"):
        err = reply.get("error") or {}
        return error_response(422, "refused", f"the device refused: {err.get('message', 'no reason given')}")
    # the device's answer is what it now withholds: the gateway's view at once
    result = reply.get("result")
    now = result.get("streams") if isinstance(result, dict) else None
    if isinstance(now, dict):
        gw.store.set_withheld(d.id, {str(p): c for p, c in now.items() if c in ("local", "off")})
    return None

"""The web app the gateway serves (docs/app.md): its static files, the chart
and UI packages the build installed from the npm registry (gateway/web,
`make web`), and the live events the pages follow.

The app is static: pages of HTML, JavaScript modules and CSS under
gateway/web/app, which call the same API as the command line. Nothing is
fetched from elsewhere at run time: the packages' files are served from
gateway/web/node_modules, named one by one in VENDOR, and the page's
Content-Security-Policy allows only the gateway's own address.

`GET /api/v1/events` is a stream of server-sent events: what the gateway
takes in from the devices the caller may see (telemetry, hellos, update
statuses, online and offline), pushed as it happens so that the pages need
no reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from .api import GATEWAY, error_response

log = logging.getLogger("permabeta.gateway.webapp")

WEB = Path(__file__).parent / "web"
APP = WEB / "app"
PACKAGES = WEB / "node_modules"
# what /app/vendor/NAME serves: a file of an installed package (gateway/web/package.json)
VENDOR = {
    "chart.umd.min.js": "chart.js/dist/chart.umd.min.js",
    "preact-htm.js": "htm/preact/standalone.module.js",
}
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
EVENT_KINDS = ("telemetry", "hello", "status", "online", "offline")
STREAMS_PER_ACCOUNT = 4  # event streams one account may hold open (tabs, a phone)
MAX_STREAMS = 256  # ... and the gateway in all
QUEUE = 256  # events waiting for a slow page; more are dropped, and the page told so
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies and the page's connection awake
OWNERS_TTL_S = 5.0  # how long the list of an owner's devices is trusted before it is read again


_Queue = asyncio.Queue[tuple[str, str, dict[str, Any]] | None]
# each open stream's queue -> the id of the account it is for
STREAMS: web.AppKey[dict[_Queue, int]] = web.AppKey("event streams", dict)


def setup(app: web.Application) -> None:
    """Adds the app's routes; the event streams end when the gateway stops."""
    app[STREAMS] = {}
    app.add_routes(_routes())

    async def close_streams(app: web.Application) -> None:
        for q in app[STREAMS]:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
            if q.full():  # a stream behind: make room for its end
                q.get_nowait()
                q.put_nowait(None)

    app.on_shutdown.append(close_streams)


def _routes() -> list[web.RouteDef]:
    return [
        web.get("/", _root),
        web.get("/app", _root),
        web.get("/app/", _index),
        web.get("/app/vendor/{name}", _vendor),
        web.get("/app/{name}", _file),
        web.get("/api/v1/events", _events),
    ]


async def _root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/app/")


def _send(path: Path) -> web.StreamResponse:
    kind = _TYPES.get(path.suffix)
    if kind is None or not path.is_file():
        return error_response(404, "not_found", f"no file {path.name!r} in the app")
    return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "no-cache"})


async def _index(request: web.Request) -> web.StreamResponse:
    return _send(APP / "index.html")


async def _file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    # one level, no hidden files: a name cannot climb out of the app's folder
    if "/" in name or "\\" in name or name.startswith(".") or name not in _app_files():
        return error_response(404, "not_found", f"no file {name[:64]!r} in the app")
    return _send(APP / name)


def _app_files() -> set[str]:
    return {p.name for p in APP.iterdir() if p.is_file()}


async def _vendor(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    rel = VENDOR.get(name)
    if rel is None:
        return error_response(404, "not_found", f"no package file {name[:64]!r}")
    path = PACKAGES / rel
    if not path.is_file():
        return error_response(
            503, "not_built", f"the app's packages are not installed ({rel} is missing): run `make web`"
        )
    return _send(path)


class _Owners:
    """Which devices a principal may see, read again every OWNERS_TTL_S: a
    device claimed or released while the page is open is followed within it."""

    def __init__(self, request: web.Request) -> None:
        from .api_accounts import accounts_of, principal

        self.request = request
        self.who = principal(request)
        self.accounts = accounts_of(request)
        self.all = self.who.may("maker")
        self.own: set[str] = set()
        self.read = -OWNERS_TTL_S

    def still_valid(self) -> bool:
        """Whether what opened the stream still names its account: the token
        not revoked, the session not ended or expired, the account not disabled."""
        from .api_accounts import GATEWAY_ACCOUNT
        from .api_sessions import session_of

        if self.who is GATEWAY_ACCOUNT:
            return True  # (the gateway's own token, for as long as the gateway runs)
        gw = self.request.app[GATEWAY]
        given = self.request.headers.get("Authorization")
        if given is not None:
            who = self.accounts.by_token(given.removeprefix("Bearer "), gw.clock.now())
        else:
            session = session_of(self.request)
            who = session.account if session is not None else None
        return who is not None and who.id == self.who.id

    def sees(self, dev: str) -> bool:
        if self.all:
            return True
        now = time.monotonic()
        if now - self.read >= OWNERS_TTL_S:
            self.own = set(self.accounts.devices_of(self.who))
            self.read = now
        return dev in self.own


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of the devices the caller may see: `event: KIND`,
    `data: {"device", "at", "message"}` (docs/app.md)."""
    gw = request.app[GATEWAY]
    owners = _Owners(request)
    open_streams = request.app[STREAMS]
    mine = sum(1 for who in open_streams.values() if who == owners.who.id)
    if len(open_streams) >= MAX_STREAMS or mine >= STREAMS_PER_ACCOUNT:
        return error_response(
            429,
            "too_many_streams",
            f"at most {STREAMS_PER_ACCOUNT} event streams an account ({MAX_STREAMS} in all) are open at once",
        )
    queue: _Queue = asyncio.Queue(QUEUE)
    dropped = 0

    def listener(kind: str, dev: str, msg: dict[str, Any]) -> None:
        nonlocal dropped
        if kind == "ota/status":
            kind = "status"  # (an update's progress: its message kind is the topic's)
        if kind not in EVENT_KINDS or not owners.sees(dev):
            return
        try:
            queue.put_nowait((kind, dev, msg))
        except asyncio.QueueFull:
            dropped += 1

    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    gw.listeners.append(listener)
    if gw.pool_events is not None:  # (what the pool's other workers alone hear)
        gw.pool_events.listeners.append(listener)
    open_streams[queue] = owners.who.id
    try:
        await resp.write(b"retry: 2000\n: permabeta events\n\n")
        checked = time.monotonic()
        while True:
            item: tuple[str, str, dict[str, Any]] | None = None
            try:
                item = await asyncio.wait_for(queue.get(), min(KEEPALIVE_S, OWNERS_TTL_S))
                quiet = False
            except TimeoutError:
                quiet = True  # nothing came: the stream says it is alive
            if time.monotonic() - checked >= OWNERS_TTL_S:
                checked = time.monotonic()
                if not owners.still_valid():
                    await resp.write(_event("ended", {"reason": "what opened the stream is gone"}))
                    break
            if quiet:
                await resp.write(b": keepalive\n\n")
                continue
            if dropped:
                await resp.write(_event("dropped", {"count": dropped}))
                dropped = 0
            if item is None:
                break
            kind, dev, msg = item
            await resp.write(_event(kind, {"device": dev, "at": gw.clock.now(), "message": msg}))
    except ConnectionResetError:
        pass  # the page went away
    finally:
        open_streams.pop(queue, None)
        with contextlib.suppress(ValueError):
            gw.listeners.remove(listener)
        if gw.pool_events is not None:
            with contextlib.suppress(ValueError):
                gw.pool_events.listeners.remove(listener)
    return resp


def _event(kind: str, data: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:  # a value JSON cannot carry: the event says so rather than break the stream
        text = json.dumps({"device": data.get("device"), "at": data.get("at"), "message": None})
    return f"event: {kind}\ndata: {text}\n\n".encode()

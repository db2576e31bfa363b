"""The API of a worker of a pool (gateway/pool.py): every worker answers
what only reads; a request that changes something is passed on, as it came
(its credentials included), to the worker that leads the pool, which runs
the updates, the rollouts and the commands' side of them, and its answer
comes back as it went. The command line and the app may so reach any worker."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger("permabeta.gateway.api")

PASSED = "X-Permabeta-Passed-By"  # a request passed on names the worker it came through
_READS = ("GET", "HEAD", "OPTIONS")
# what is not passed on, either way (the connection's own, and what the body's length decides);
# Host is: the leader checks a page's Origin against the host the page was asked of
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer"}
_TIMEOUT_S = 150.0  # above the longest a request may wait (a command's 120 s)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
Cleanup = Callable[[web.Application], Awaitable[Any]]


def _unavailable(message: str) -> web.Response:
    from .api import error_response

    return error_response(503, "unavailable", message)


def leader_api(gw: Gateway, now: float) -> tuple[str, str] | None:
    """The API's URL of the worker that leads the pool now, and its host, if any."""
    from .service import LEADER

    row = gw.store.db.execute(
        """SELECT w.api, w.host FROM pool_leases l JOIN pool_workers w ON w.name = l.holder
           WHERE l.name = ? AND l.expires > ?""",
        (LEADER, now),
    ).fetchone()
    return None if row is None or row[0] is None else (str(row[0]), str(row[1]))


def pool_middleware(gw: Gateway, cert: Path | None) -> tuple[Middleware, Cleanup]:
    """Pass every request that changes something on to the pool's leader,
    unless this worker leads it. cert: the API's certificate (the pool's
    workers share it), to trust the leader's API by. With what closes its
    client when the app stops."""
    context = ssl.create_default_context(cafile=str(cert)) if cert is not None else None
    session: list[aiohttp.ClientSession] = []

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in _READS or gw.leading:
            return await handler(request)
        if request.headers.get(PASSED):
            # (passed on to a worker that has just stopped leading: not passed on again)
            return _unavailable("the pool's leader changed while the request was passed on: try it again")
        leader = leader_api(gw, time.time())
        if leader is None or leader[0] == gw.api_url:
            return _unavailable("no worker leads the pool now: one takes over within seconds, try it again")
        url, host = leader
        if host != socket.gethostname():
            # (its API's address is its own machine's loopback, and the releases' files are this
            # machine's: a pool runs on one machine, docs/makers.md)
            return _unavailable(f"the pool's leader runs on {host}, not here: a pool shares one machine")
        if not session:
            session.append(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S)))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers[PASSED] = gw.pool.name
        body = await request.read()
        try:
            async with session[0].request(
                request.method,
                url + request.rel_url.path_qs,
                headers=headers,
                data=body,
                ssl=context if context is not None else True,
                allow_redirects=False,
            ) as answer:
                out = web.Response(status=answer.status, body=await answer.read())
                for k, v in answer.headers.items():
                    if k.lower() not in _HOP and k.lower() != "content-encoding":
                        out.headers.add(k, v)
                return out
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not pass %s %s to the leader %s: %s", request.method, request.path, url, exc)
            return _unavailable(f"the pool's leader did not answer: {type(exc).__name__} {exc}")

    async def close(_: web.Application) -> None:
        if session:
            await session[0].close()

    return middleware, close

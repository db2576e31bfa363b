"""The API of a worker of a pool (gateway/pool.py): every worker answers
what only reads; a request that changes something is passed on, as it came
(its credentials included), to the worker that leads the pool, which runs
the updates, the rollouts and the commands' side of them, and its answer
comes back as it went. The command line and the app may so reach any worker."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from .tls import trusting

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


@dataclass(frozen=True)
class LeaderApi:
    """Where the pool's leader serves its API: name (the worker's), url on
    its own machine, host (that machine's name) and machine (its id), reach
    from other machines (None: its loopback only) and the certificate it
    serves (PEM; None: plain HTTP)."""

    name: str
    url: str
    host: str
    machine: str
    reach: str | None
    cert: str | None


def leader_api(gw: Gateway, now: float) -> LeaderApi | None:
    """The API of the worker that leads the pool now (now: this machine's
    time; the lease's is the database's), if any."""
    from .service import LEADER

    row = gw.store.db.execute(
        """SELECT w.name, w.api, w.host, coalesce(w.machine, w.host), w.api_reach, w.api_cert
           FROM pool_leases l JOIN pool_workers w ON w.name = l.holder
           WHERE l.name = ? AND l.expires > ?""",
        (LEADER, gw.pool.at(now)),
    ).fetchone()
    if row is None or row[1] is None:
        return None
    return LeaderApi(str(row[0]), str(row[1]), str(row[2]), str(row[3]), row[4], row[5])


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
        if leader is None or leader.name == gw.pool.name:
            return _unavailable("no worker leads the pool now: one takes over within seconds, try it again")
        url, trust = leader.url, context
        if leader.machine != gw.pool.machine:
            # (on another machine: at the address it is reached at from others, trusted by the
            # certificate it published in the database, docs/makers.md)
            if leader.reach is None or leader.cert is None:
                return _unavailable(
                    f"the pool's leader runs on {leader.host} with its API on its loopback: run each "
                    "worker's API where the others reach it (--api HOST:PORT, over HTTPS)"
                )
            url, trust = leader.reach, trusting(leader.cert)
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
                ssl=trust if trust is not None else True,
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

"""What the API does for browsers (docs/protocol.md 10.1, docs/security.md
5.3): sessions in a cookie, the CSRF and Origin checks a cookie's request
must pass, and the headers every answer carries.

A session's cookie is `HttpOnly; SameSite=Strict; Path=/`, and over HTTPS
`Secure` with the `__Host-` prefix (so no other site or subdomain can set
it). A request that a cookie authenticates and that may change something
(any method but GET, HEAD, OPTIONS) must carry `X-CSRF-Token` equal to its
session's token, and an `Origin`, where it has one, must be the gateway's
own: a page of another site can neither read the token nor send the header.
A bearer token needs neither: a browser never adds one on its own.
"""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from .api import GATEWAY, error_response
from .sessions import IDLE_S, MAX_AGE_S, Session, Sessions

COOKIE = "pb_session"
COOKIE_TLS = "__Host-pb_session"  # over HTTPS: Secure, Path=/, no Domain
CSRF_HEADER = "X-CSRF-Token"
SESSION: web.RequestKey[Session] = web.RequestKey("session", Session)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HSTS = "max-age=31536000"
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
}


def cookie_name(request: web.Request) -> str:
    return COOKIE_TLS if request.secure else COOKIE


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer's headers for browsers (on_response_prepare: aiohttp's own answers too)."""
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    if request.secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)


def session_of(request: web.Request) -> Session | None:
    """The live session of the request's cookie, if it has one."""
    cookie = request.cookies.get(cookie_name(request))
    if cookie is None:
        return None
    gw = request.app[GATEWAY]
    return Sessions(gw.store).get(cookie, gw.clock.now())


def foreign_origin(request: web.Request) -> web.Response | None:
    """403 `csrf` for a request whose Origin is another site's (None: none given, or ours)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return error_response(403, "csrf", f"a request from another origin ({origin[:80]!r}) is refused")
    return None


def csrf_refusal(request: web.Request, session: Session) -> web.Response | None:
    """403 `csrf` for a cookie's request that may change something without its
    session's X-CSRF-Token, or from another origin (None: it passes)."""
    if request.method in SAFE_METHODS:
        return None
    refused = foreign_origin(request)
    if refused is not None:
        return refused
    given = request.headers.get(CSRF_HEADER, "").encode("utf-8", "surrogateescape")
    if not secrets.compare_digest(given, session.csrf.encode()):
        return error_response(403, "csrf", f"a session's {request.method} needs its {CSRF_HEADER} header")
    return None


# ---- the endpoints ------------------------------------------------------------------


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/session", _login),
        web.get("/api/v1/session", _show),
        web.delete("/api/v1/session", _logout),
    ]


def _shown(session: Session) -> dict[str, Any]:
    return {"account": session.account.name, "role": session.account.role, "csrf": session.csrf}


async def _login(request: web.Request) -> web.Response:
    """A session for a name and password, limited as POST /api/v1/login is."""
    from .api_accounts import checked_login, json_object

    refused = foreign_origin(request)
    if refused is not None:
        return refused
    body = await json_object(request, {"name": str, "password": str})
    if isinstance(body, web.Response):
        return body
    account = checked_login(request, body)
    if isinstance(account, web.Response):
        return account
    gw = request.app[GATEWAY]
    cookie, session = Sessions(gw.store).create(account, gw.clock.now())
    response = web.json_response(_shown(session), status=201)
    response.set_cookie(
        cookie_name(request),
        cookie,
        max_age=int(MAX_AGE_S),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure or None,
    )
    return response


def _session(request: web.Request) -> Session | web.Response:
    session: Session | None = request.get(SESSION)
    if session is None:
        return error_response(401, "unauthorized", "no session: log in with POST /api/v1/session")
    return session


async def _show(request: web.Request) -> web.Response:
    session = _session(request)
    if isinstance(session, web.Response):
        return session
    return web.json_response(_shown(session) | {"idle_s": IDLE_S, "expires": session.created + MAX_AGE_S})


async def _logout(request: web.Request) -> web.Response:
    session = _session(request)
    if isinstance(session, web.Response):
        return session
    Sessions(request.app[GATEWAY].store).delete(request.cookies[cookie_name(request)])
    response = web.json_response({"account": session.account.name, "ended": True})
    response.del_cookie(
        cookie_name(request), path="/", httponly=True, samesite="Strict", secure=request.secure or None
    )
    return response
